"""``safety-monitor calibrate``: discover, fit, threshold and evaluate the detectors of a concept.

A concept gets up to two detectors, one per *kind*: ``reply`` reads the model's reply (what the model
writes: the product's primary monitors), ``request`` reads the user's turn (what is asked or pasted). The
kind fixes the span (``detectors.spec.KIND_SPAN``); calibration never picks it. Before, chosen by
cross-validation, scam and deception read only the user's turn, and the model writing a scam was invisible.

Per detector, on the pair-aware splits of ``detectors.calibration.data`` (examples rendered in the role the
kind reads: a plain SMS is a user turn for the request detector and the assistant's reply for the reply
detector, so the span and the content decide, not the format):

* train split (the concept's examples plus benign train rows as extra negatives, multi-turn dialogues
  capped): for each aggregation (max, mean, window), latents that separate the concept the same way in
  every source and are not formatting latents (``admissible_latents``) are selected and the linear
  detector fit (``discover``), every source counting once in the ranking and the CV judgement
  (``CalibrationConfig.balance_sources``); the dense probe baseline on the same examples and span (``probe``);
* the aggregation is chosen by the mean of: grouped CV AUROC on the train split; where the concept has
  several sources, the AUROC of a fit without each source on that source's train rows; and recall on the
  calibration positives at the per-slice threshold of the calibration benign traffic, so an aggregation
  that lifts long benign conversations toward the positives pays for it;
* calibration split: the threshold from benign traffic (the ``benign/`` files, long corpus documents and
  the concept's own negatives), per traffic slice (single turn, multi-turn, long: ``sliced_threshold``),
  the largest binding; severity cut-offs from the benign maximum and the positives (``severity_cutoffs``);
* test split: AUROC with a bootstrap interval, recall and FPR at the threshold with exact intervals, per
  source; FPR per slice on benign test traffic the calibration never saw;
* leave-one-source-out: the fits made without each source, scored on that source's calibration and test
  rows; check sets (``data.CHECK_FILES``) are only scored, never fitted on;
* a detector is marked ``no_signal`` (shipped for the record, never enabled by default) when its test
  AUROC interval reaches 0.5, when its recall interval overlaps its FPR interval, or when it does not
  generalise: for every held-out source the leave-one-source-out AUROC interval reaches 0.5, or for some
  held-out source it lies entirely below 0.5.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from detectors.calibration.activation_cache import ActivationCache
from detectors.calibration.data import Example, by_split
from detectors.calibration.discover import DiscoveryConfig, LinearDetector, fit_detector, rank_latents
from detectors.calibration.probe import fit_probe
from detectors.calibration.span_features import AGGREGATIONS, dense_features, latent_features
from detectors.calibration.stats import auroc, auroc_columns, bootstrap_auroc, threshold_metrics
from detectors.calibration.thresholds import sliced_threshold
from detectors.spec import DEFAULT_WINDOW, KIND_SPAN, CalibrationRecord, DetectorSpec
from detectors.traffic_slices import MULTI_TURN_MESSAGES, TRAFFIC_SLICES, traffic_slices


@dataclass(frozen=True)
class CalibrationConfig:
    """What a calibration run targets."""

    target_fpr: float = 0.01
    """False-positive rate the threshold is chosen for."""
    delta: float = 0.05
    """1 - confidence of the FPR guarantee."""
    spans: tuple[str, ...] = ("all", "prompt", "response", "final_turn")
    """Spans tried."""
    aggregations: tuple[str, ...] = AGGREGATIONS
    """Aggregations tried."""
    window: int = DEFAULT_WINDOW
    """Tokens per block of the ``window`` aggregation."""
    leave_one_source_out: bool = True
    """Also fit without each source and score that source; the span choice then weighs those scores too
    (off: the span is chosen by grouped CV alone, and no per-source fits are made)."""
    n_boot: int = 500
    """Bootstrap resamples for intervals."""
    max_multi_turn_train: int | None = 400
    """Multi-turn benign conversations among the training rows (all of them calibrate and test): enough to
    teach the detectors what everyday chats look like, without their thousands of tokens dominating."""
    benign_weight: float = 0.5
    """Share of the negative class's training weight carried by the benign train rows (all of them
    join); the concept's own negatives carry the rest, the positives as much as all negatives. Equal
    say for near misses and everyday traffic: with all 3,942 benign rows at their natural weight
    (0.87 of it), fit without the multiple-choice power-seeking source the detector ranked that source
    backwards (0.39); with the benign rows weighted like the concept's negatives but only a sixth as
    many of them, the scam detector's recall at 1 % FPR was 0.82 instead of 0.89."""
    balance_sources: bool = True
    """Rank candidate latents and judge latent sets with every source of the concept counting once (the
    pooled AUROC and each source's own, averaged: ``fit_detector(sources=...)``) instead of by the pooled
    AUROC alone, in which a large, easy source (SMS spam) chose the latents and the hard one that matters
    most (the model's own e-mails) got what was left."""
    balance_benign_slices: bool = False
    """Share the benign rows' training weight equally among their traffic slices (single turn, multi-turn,
    long; a row of several counts in the longest) instead of equally among rows. Each slice sets its own
    threshold, and the largest binds; with ~150 long documents among ~4,000 benign training rows the fit
    barely saw the long slice, whose threshold then bound far above the others."""


@dataclass
class DetectorReport:
    """Everything calibration measured for one concept (written as JSON beside the spec)."""

    concept: str
    status: str
    status_reason: str
    span: str
    aggregation: str
    cv_auroc_by_choice: dict[str, float]
    unseen_source_auroc_by_choice: dict[str, dict[str, float]]
    """Per choice: AUROC on each source's train rows of the fit made without that source."""
    threshold: float
    n_benign_calibration: int
    test: dict
    test_by_source: dict[str, dict]
    benign_unseen: dict
    probe: dict
    probe_test_by_source: dict[str, dict]
    loso: dict[str, dict]
    checks: dict[str, dict]
    top_latents: list[dict]
    kind: str | None = None
    """``reply`` or ``request``; None for a detector whose span calibration chose."""
    threshold_slice: str = "pooled"
    """The traffic slice whose threshold binds (the others' FPR is then lower)."""
    calibration_by_slice: dict[str, dict] = field(default_factory=dict)
    """Per traffic slice: benign calibration samples, the slice's own threshold and FPR bound."""
    benign_unseen_by_slice: dict[str, dict] = field(default_factory=dict)
    """Per traffic slice: FPR (and interval) on benign test traffic calibration never saw."""
    rejected_latents: list[dict] = field(default_factory=list)
    """Strong latents kept out of the detector, with the reason."""
    latents: list[dict] = field(default_factory=list)
    """Every latent of the detector: id, weight, label."""
    calibration_recall_by_choice: dict[str, float] = field(default_factory=dict)
    scores: dict[str, list] = field(default_factory=dict)
    """Test and benign scores with labels, for plots."""


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _labels(ex: list[Example]) -> np.ndarray:
    return np.array([e.label for e in ex], dtype=int)


def _groups(ex: list[Example]) -> np.ndarray:
    return np.array([e.group for e in ex])


def training_weights(labels: np.ndarray, own: np.ndarray, benign_weight: float,
                     benign_groups: np.ndarray | None = None) -> np.ndarray:
    """Row weights summing to the row count: positives half, the concept's own negatives
    ``(1 - benign_weight) / 2``, the benign rows (``~own``) ``benign_weight / 2``, each group shared equally.
    ``benign_groups`` (one label per row, read for benign rows): the benign share is split equally among
    these groups first (traffic slices), then among each group's rows."""
    labels, benign = np.asarray(labels), ~np.asarray(own, dtype=bool)
    benign_share = 0.5 * benign_weight if benign.any() else 0.0  # none: the concept's negatives carry it all
    parts = [(labels == 1, 0.5), (~benign & (labels == 0), 0.5 - benign_share)]
    if benign_groups is None:
        parts.append((benign, benign_share))
    else:
        slices = np.asarray(benign_groups)
        names = np.unique(slices[benign])
        parts += [(benign & (slices == g), benign_share / len(names)) for g in names]
    w = np.zeros(len(labels))
    for mask, share in parts:
        if mask.any():
            w[mask] = share * len(labels) / mask.sum()
    return w


def weight_slice(examples: list[Example], cache: ActivationCache) -> np.ndarray:
    """Each example's traffic slice for training weights: ``long``, else ``multi_turn``, else ``single_turn``
    (a short request of 3 to 7 messages, in no slice, counts as single turn)."""
    masks = slice_masks(examples, cache)
    return np.where(masks["long"], "long", np.where(masks["multi_turn"], "multi_turn", "single_turn"))


@dataclass
class SpanChoice:
    """One span and aggregation tried: its detector, and how its recipe generalises across sources."""

    detector: LinearDetector
    without: dict[str, LinearDetector]
    """Per source: the detector fit on the train split without that source (leave-one-source-out)."""
    unseen_source_auroc: dict[str, float]
    """Per source: AUROC of ``without[source]`` on that source's train rows, which it never saw."""
    calibration_recall: float = float("nan")
    """Recall on the calibration split's positives at the per-slice threshold of its benign traffic."""

    @property
    def cv_auroc(self) -> float:
        return self.detector.cv_auroc

    @property
    def selection_score(self) -> float:
        """The mean of: grouped CV AUROC; the mean unseen-source AUROC when there are several sources; and
        the calibration recall at the per-slice threshold (where measured), so an aggregation that lifts
        long benign conversations toward the positives pays for it."""
        parts = [self.cv_auroc]
        if self.unseen_source_auroc:
            parts.append(float(np.mean(list(self.unseen_source_auroc.values()))))
        if not np.isnan(self.calibration_recall):
            parts.append(self.calibration_recall)
        return float(np.mean(parts))


def _loso_sources(examples: list[Example], src_tr: np.ndarray, own: np.ndarray, y_tr: np.ndarray) -> list[str]:
    """Sources a leave-one-source-out fit can be made without and judged on: the concept has several, and
    the source's train rows, its other rows and the train rows left without it all hold both labels."""
    sources = sorted({e.source for e in examples})
    if len(sources) < 2:
        return []

    def both(labels) -> bool:
        return len(set(np.asarray(labels).tolist())) == 2

    return [src for src in sources
            if both([e.label for e in examples if e.source == src and e.split != "train"])
            and both(y_tr[own & (src_tr == src)]) and both(y_tr[src_tr != src])]


def severity_cutoffs(threshold: float, benign: np.ndarray, positives: np.ndarray) -> dict[str, float]:
    """Scores at or above which an alert is at least this severe, each at or above the one before:

    ``low``       the threshold: benign traffic alerts at most at the target FPR, on every slice;
    ``medium``    above every benign calibration score: no everyday text of any slice scored this high;
    ``high``      at least the median score of the concept's calibration positives that reach ``medium``:
                  as strong as a typical caught example;
    ``critical``  at least their 90th percentile: as strong as the clearest examples.

    Every level is reachable by real positives (the old cut-offs at a third, a tenth and a thirtieth of the
    FPR needed 900 to 9,000 benign samples and left scam at 10.8 times its threshold "medium")."""
    medium = max(threshold, float(np.nextafter(np.max(benign), np.inf))) if len(benign) else threshold
    out = {"medium": medium}
    caught = np.sort(np.asarray(positives, dtype=float)[np.asarray(positives) >= medium])
    if len(caught) >= 2:
        out["high"] = max(medium, float(np.quantile(caught, 0.5)))
        out["critical"] = max(out["high"], float(np.quantile(caught, 0.9)))
    return out


def _score(cache: ActivationCache, sae, det: LinearDetector, ex: list[Example], span: str, agg: str) -> np.ndarray:
    """Scores of ``ex`` under ``det`` (only its latents are encoded)."""
    if not ex:
        return np.zeros(0)
    f = latent_features(cache, sae, ex, span=span, aggregations=(agg,), latents=det.latents, progress=False)[agg]
    return det.score(f, columns=list(range(len(det.latents))))


def slice_masks(examples: list[Example], cache: ActivationCache) -> dict[str, np.ndarray]:
    """Per traffic slice (``detectors.traffic_slices``), which of ``examples`` belong to it (token counts
    as cached: at most the cache's context)."""
    member = [traffic_slices(e.n_turns, len(cache.get(e.key).positions)) for e in examples]
    return {name: np.array([name in m for m in member], dtype=bool) for name in TRAFFIC_SLICES}


def _cap_multi_turn(examples: list[Example], n: int | None) -> list[Example]:
    """At most ``n`` multi-turn conversations (deterministically, by key) among ``examples``; the rest kept."""
    multi = sorted((e for e in examples if e.n_turns >= MULTI_TURN_MESSAGES), key=lambda e: e.key)
    if n is None or len(multi) <= n:
        return examples
    keep = {e.key for e in multi[:n]}
    return [e for e in examples if e.n_turns < MULTI_TURN_MESSAGES or e.key in keep]


def admissible_latents(features: np.ndarray, labels: np.ndarray, sources: np.ndarray,
                       excluded: set[int] = frozenset(), margin: float = 0.1,
                       min_per_label: int = 10) -> tuple[np.ndarray, list[dict]]:
    """Latents a detector may use, and the strongest rejected ones with the reason.

    A latent is rejected when, within some source with at least ``min_per_label`` rows of each label, it
    separates the concept the other way round from its overall direction by more than ``margin`` (its
    per-source AUROC beyond 0.5 -/+ ``margin``), or when it is ``excluded`` (a formatting latent,
    ``monitor.toolkit.latent_labels``). A latent that marks positives in one source and negatives in
    another tracks how that source was made (answer letters, list markers, phone numbers), not the
    concept. The margin and the minimum keep sampling noise of small sources from rejecting good latents:
    required to agree exactly in every source, the scam request detector lost 0.09 AUROC against the
    dense probe. ``features [n, d_sae]`` of the concept's own rows."""
    d = features.shape[1]
    overall = np.nan_to_num(auroc_columns(features, labels), nan=0.5)
    up = overall >= 0.5
    ok = np.ones(d, dtype=bool)
    per_source = {}
    for src in sorted(set(sources.tolist())):
        m = sources == src
        if min(int((labels[m] == 1).sum()), int((labels[m] == 0).sum())) < min_per_label:
            continue
        a = np.nan_to_num(auroc_columns(features[m], labels[m]), nan=0.5)
        per_source[src] = a
        ok &= np.where(up, a >= 0.5 - margin, a <= 0.5 + margin)
    excluded_mask = np.zeros(d, dtype=bool)
    excluded_mask[[i for i in excluded if i < d]] = True
    rejected = []
    for j in np.argsort(-np.abs(overall - 0.5))[:200]:
        if not ok[j] or excluded_mask[j]:
            rejected.append({"latent": int(j), "auroc": round(float(overall[j]), 4),
                             "reason": "formatting latent" if excluded_mask[j] else "opposite directions: "
                             + ", ".join(f"{s}: {v[j]:.2f}" for s, v in per_source.items())})
    return np.flatnonzero(ok & ~excluded_mask), rejected[:20]


def calibrate_concept(concept: str, examples: list[Example], benign: list[Example], cache: ActivationCache, sae, *,
                      checks: list[Example] = (), kind: str | None = None, excluded: set[int] = frozenset(),
                      latent_labels: dict[int, str] | None = None,
                      model_id: str, hook: str, dataset_paths: list[Path], cfg: CalibrationConfig = CalibrationConfig(),
                      disc: DiscoveryConfig = DiscoveryConfig(), progress: bool = True) -> tuple[DetectorSpec, DetectorReport]:  # noqa: B008 -- frozen
    """Fit, threshold and evaluate the detector for ``concept`` (see module docstring)."""
    split = by_split(examples)
    benign_split = by_split([e for e in benign if not e.meta.get("long_document")])
    # Long documents: half of their train split trains (a detector that never saw literature scored novels
    # above its positives), the other half joins calibration, so the long slice has enough samples for its
    # own threshold.
    long_docs = by_split([e for e in benign if e.meta.get("long_document")])
    benign_split["train"] += long_docs["train"][::2]
    benign_split["calibration"] += long_docs["train"][1::2] + long_docs["calibration"]
    benign_split["test"] += long_docs["test"]
    benign_split["train"] = _cap_multi_turn(benign_split["train"], cfg.max_multi_turn_train)
    spans = (KIND_SPAN[kind],) if kind else cfg.spans
    # Benign traffic of the train split joins the negatives: the detector must reject normal traffic
    # (long chats, instructions), not only the concept's own negatives, or its threshold, set on that
    # traffic, ends up above every positive.
    train, test = split["train"] + benign_split["train"], split["test"]
    own = np.arange(len(train)) < len(split["train"])  # the concept's rows: they rank and judge, benign only trains
    cal_neg = [e for e in split["calibration"] if e.label == 0] + benign_split["calibration"]
    benign_unseen = benign_split["test"]
    y_tr, g_tr = _labels(train), _groups(train)
    slice_tr = weight_slice(train, cache) if cfg.balance_benign_slices else None
    w_tr = training_weights(y_tr, own, cfg.benign_weight, slice_tr)

    # --- choose span and aggregation: grouped CV on the train split and, with several sources, how well a
    # fit without each source ranks that source's train rows
    src_tr = np.array([e.source for e in train])
    loso_sources = _loso_sources(examples, src_tr, own, y_tr) if cfg.leave_one_source_out else []
    w_without = {src: training_weights(y_tr[src_tr != src], own[src_tr != src], cfg.benign_weight,
                                       None if slice_tr is None else slice_tr[src_tr != src])
                 for src in loso_sources}  # training weights of each fit made without a source
    choices: dict[str, SpanChoice] = {}
    feats_by_span: dict[str, dict[str, np.ndarray]] = {}
    rejected: dict[str, list[dict]] = {}
    cal_pos = [e for e in split["calibration"] if e.label == 1]
    cal_slices = slice_masks(cal_neg, cache)

    def _calibration_recall(d: LinearDetector, sp: str, ag: str) -> float:
        """Recall on calibration positives at the per-slice threshold set on calibration benign traffic:
        how a choice does once long conversations have had their say on the threshold."""
        neg = _score(cache, sae, d, cal_neg, sp, ag)
        try:
            thr = sliced_threshold(neg, cal_slices, cfg.target_fpr, cfg.delta).threshold
        except ValueError:
            return float("nan")
        pos = _score(cache, sae, d, cal_pos, sp, ag)
        return float((pos >= thr).mean()) if len(pos) else float("nan")

    for span in spans:
        feats_by_span[span] = latent_features(cache, sae, train, span=span, aggregations=cfg.aggregations,
                                              window=cfg.window, progress=progress)
        for agg in cfg.aggregations:
            f = feats_by_span[span][agg]
            allowed, rejected[f"{span}/{agg}"] = admissible_latents(f[own], y_tr[own], src_tr[own], excluded)
            by_source = src_tr if cfg.balance_sources else None
            det = fit_detector(f, y_tr, g_tr, disc, judged=own, sample_weight=w_tr, allowed=allowed,
                               sources=by_source)
            without, unseen = {}, {}
            for src in loso_sources:
                rest, held = src_tr != src, own & (src_tr == src)
                without[src] = fit_detector(f[rest], y_tr[rest], g_tr[rest], disc, judged=own[rest],
                                            sample_weight=w_without[src], allowed=allowed,
                                            sources=None if by_source is None else by_source[rest])
                unseen[src] = auroc(without[src].score(f[held]), y_tr[held])
            choice = SpanChoice(det, without, unseen)
            choice.calibration_recall = _calibration_recall(det, span, agg)
            choices[f"{span}/{agg}"] = choice
    best_key = max(choices, key=lambda k: np.nan_to_num(choices[k].selection_score, nan=-1))
    span, agg = best_key.split("/")
    det = choices[best_key].detector
    ranking = rank_latents(feats_by_span[span][agg][own], y_tr[own], top=10)

    def scores_of(ex: list[Example]) -> np.ndarray:
        return _score(cache, sae, det, ex, span, agg)

    # --- threshold on benign calibration traffic, holding on every traffic slice
    cal_scores = scores_of(cal_neg)
    sliced = sliced_threshold(cal_scores, cal_slices, cfg.target_fpr, cfg.delta)
    choice = sliced.by_slice.get(sliced.binding) or sliced.pooled
    threshold = sliced.threshold
    severity = severity_cutoffs(threshold, cal_scores, _score(cache, sae, det, cal_pos, span, agg))

    # --- test split, per source, unseen benign
    s_test, y_test = scores_of(test), _labels(test)
    m_test = threshold_metrics(s_test, y_test, threshold, _groups(test), n_boot=cfg.n_boot)
    by_source = {}
    for src in sorted({e.source for e in test}):
        idx = [i for i, e in enumerate(test) if e.source == src]
        by_source[src] = threshold_metrics(s_test[idx], y_test[idx], threshold, _groups(test)[idx],
                                           n_boot=cfg.n_boot).to_dict()
    s_unseen = scores_of(benign_unseen)
    m_unseen = threshold_metrics(s_unseen, np.zeros(len(s_unseen)), threshold, n_boot=0)
    unseen_by_slice = {}
    for name, mask in slice_masks(benign_unseen, cache).items():
        m = threshold_metrics(s_unseen[mask], np.zeros(int(mask.sum())), threshold, n_boot=0) if mask.any() else None
        unseen_by_slice[name] = {"n": int(mask.sum()), "fpr": None if m is None else m.fpr,
                                 "fpr_ci": None if m is None else list(m.fpr_ci)}
    cal_by_slice = {name: {"n": sliced.n_by_slice[name],
                           "threshold": None if c is None else c.threshold,
                           "fpr_upper_bound": None if c is None else c.fpr_upper_bound}
                    for name, c in sliced.by_slice.items()}

    # --- dense probe on the same examples and span
    probe = fit_probe(dense_features(cache, train, span=span), y_tr, g_tr, judged=own, sample_weight=w_tr)
    p_test = probe.score(dense_features(cache, test, span=span))
    probe_by_source = {}
    for src in sorted({e.source for e in test}):
        idx = [i for i, e in enumerate(test) if e.source == src]
        probe_by_source[src] = {"auroc": auroc(p_test[idx], y_test[idx]), "n": len(idx)}

    # --- leave one source out: the fits made while choosing, scored on the source's calibration and test rows
    loso = {}
    for src, d_src in choices[best_key].without.items():
        held = [e for e in examples if e.source == src and e.split != "train"]
        rest_idx = np.flatnonzero(src_tr != src)
        f_held = latent_features(cache, sae, held, span=span, aggregations=(agg,), latents=d_src.latents,
                                 progress=False)[agg]
        s_held = d_src.score(f_held, columns=list(range(len(d_src.latents))))
        pr = fit_probe(dense_features(cache, [train[i] for i in rest_idx], span=span), y_tr[rest_idx],
                       g_tr[rest_idx], judged=own[rest_idx], sample_weight=w_without[src])
        y_held = _labels(held)
        loso[src] = {"auroc": auroc(s_held, y_held),
                     "auroc_ci": list(bootstrap_auroc(s_held, y_held, _groups(held), n_boot=cfg.n_boot)),
                     "probe_auroc": auroc(pr.score(dense_features(cache, held, span=span)), y_held),
                     "n": len(held)}

    # --- check sets: scored, never fitted on
    check_results = {}
    for src in sorted({e.source for e in checks}):
        ex = [e for e in checks if e.source == src]
        m = threshold_metrics(scores_of(ex), _labels(ex), threshold, _groups(ex), n_boot=cfg.n_boot)
        check_results[src] = m.to_dict()

    # --- no placebo detectors
    reasons = []
    if np.isnan(m_test.auroc) or m_test.auroc_ci[0] <= 0.5:
        reasons.append(f"test AUROC {m_test.auroc:.3f} has a 95% interval {tuple(round(v, 3) for v in m_test.auroc_ci)}"
                       " that reaches 0.5")
    if m_test.recall_ci[0] <= m_test.fpr_ci[1]:
        reasons.append(f"recall at the threshold ({m_test.recall:.3f}) is not distinguishable from the FPR "
                       f"({m_test.fpr:.3f})")
    failing = [src for src, m in loso.items() if np.isnan(m["auroc"]) or m["auroc_ci"][0] <= 0.5]
    if loso and len(failing) == len(loso):
        reasons.append(f"it does not generalise to any source it was not fit on: the leave-one-source-out AUROC "
                       f"interval reaches 0.5 for all {len(loso)} sources")
    inverted = [src for src, m in loso.items() if not np.isnan(m["auroc"]) and m["auroc_ci"][1] < 0.5]
    if inverted:
        reasons.append(f"fit without them, it ranks {len(inverted)} source(s) backwards (AUROC interval below 0.5: "
                       f"{', '.join(inverted)}): it learned source artefacts, not the concept")
    status = "no_signal" if reasons else "enabled"
    record = CalibrationRecord(
        target_fpr=cfg.target_fpr, achieved_fpr=m_unseen.fpr, achieved_fpr_ci=m_unseen.fpr_ci,
        n_benign=choice.n_benign, auroc=m_test.auroc, auroc_ci=m_test.auroc_ci, recall=m_test.recall,
        recall_ci=m_test.recall_ci, datasets={p.name if p.parent.name in ("", ".") else f"{p.parent.name}/{p.name}": file_sha256(p)
                  for p in dataset_paths},
        date=datetime.now(UTC).date().isoformat(), delta=cfg.delta, fpr_upper_bound=choice.fpr_upper_bound,
        threshold_rank=choice.rank, probe_auroc=auroc(p_test, y_test), span_choice_cv=
        {k: round(float(v.cv_auroc), 4) for k, v in choices.items()}, span_choice_score=
        {k: round(float(v.selection_score), 4) for k, v in choices.items()}, activations_compute_dtype=cache.compute_dtype,
        threshold_slice=sliced.binding, fpr_by_slice=unseen_by_slice,
        latent_selection="source_balanced" if cfg.balance_sources else "pooled",
    )
    labels = latent_labels or {}
    what = {"reply": "the model's reply", "request": "the user's turn"}.get(kind or "", f"{span} tokens")
    spec = DetectorSpec(
        name=f"{concept}_{kind}" if kind else concept, concept=concept, model=model_id, hook=hook,
        sae_sha256=sae.sha256, latents=det.latents, weights=det.weights, bias=det.bias, aggregation=agg,
        window=cfg.window, kind=kind, span=span,
        threshold=threshold, severity_thresholds=severity, status=status, status_reason="; ".join(reasons),
        calibration=record, latent_labels={i: labels[i] for i in det.latents if i in labels},
        description=f"{concept} in {what}: {len(det.latents)} SAE latents, {agg} over {span} tokens",
    )
    report = DetectorReport(
        concept=concept, status=status, status_reason="; ".join(reasons), span=span, aggregation=agg,
        cv_auroc_by_choice={k: float(v.cv_auroc) for k, v in choices.items()},
        unseen_source_auroc_by_choice={k: v.unseen_source_auroc for k, v in choices.items()}, threshold=threshold,
        n_benign_calibration=choice.n_benign, test=m_test.to_dict(), test_by_source=by_source,
        benign_unseen=m_unseen.to_dict(), probe={"auroc": auroc(p_test, y_test), "cv_auroc": probe.cv_auroc,
                                                 "c": probe.c}, probe_test_by_source=probe_by_source, loso=loso, checks=check_results,
        top_latents=[asdict(r) for r in ranking], kind=kind, threshold_slice=sliced.binding,
        calibration_by_slice=cal_by_slice, benign_unseen_by_slice=unseen_by_slice,
        rejected_latents=rejected.get(best_key, []),
        latents=[{"latent": i, "weight": w, "label": labels.get(i)} for i, w in
                 sorted(zip(det.latents, det.weights), key=lambda t: -abs(t[1]))],
        calibration_recall_by_choice={k: float(v.calibration_recall) for k, v in choices.items()},
        scores={"test": s_test.tolist(), "test_labels": y_test.tolist(), "test_sources": [e.source for e in test],
                "benign_unseen": s_unseen.tolist(), "calibration_benign": cal_scores.tolist(),
                "probe_test": p_test.tolist()},
    )
    return spec, report


def write_report_json(report: DetectorReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=1, default=float) + "\n")
