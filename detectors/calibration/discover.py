"""Feature discovery: which SAE latents track a concept, and a small linear detector over them.

1. Rank every latent on the train split by the AUROC of its span-aggregated activation (and the
   difference of class means), over the *judged* rows: calibration passes the concept's own
   examples, while benign traffic in the train split only trains (see below).
2. Take the strongest ``candidates`` latents, standardise them, and fit L1-regularised logistic
   regressions over a grid of strengths. Each model that keeps at most ``max_latents`` latents is a
   candidate set; so is each model that keeps more (up to ``prune_from`` times as many), cut down
   to ``max_latents`` by recursive elimination (refit an L2 model, drop the latents with the smallest
   standardised weights, repeat). Grouped cross-validation (pairs never straddle folds) picks the set
   with the best AUROC.
3. Refit an L2 logistic model on the kept latents and fold the standardisation into its weights, so
   the detector is ``bias + sum_j w_j * f_j`` on raw aggregated latent values.

Standardising divides by each latent's spread, floored at a tenth of its mean magnitude
(``_feature_scale``): a latent that fires on every example with almost the same value (one that fires
on the chat template's system prompt, say) has a tiny spread on the train split, and plain
standardisation turned its noise into weights in the thousands, which then exploded on traffic where
that value moved a little (a detector with a 1 % FPR threshold above every positive).

Why prune: the L1 path adds latents in large jumps (25, then 40 for power-seeking), and the strength
that keeps at most 32 is often far from the best 32. Pruning a wider model back to 32 raised the
power-seeking detector's test AUROC from 0.946 to 0.959 (the dense probe: 0.972).

Why judge on the concept's rows: a detector must separate the concept from its own near-misses *and*
stay below its threshold on everyday traffic, so every benign train row joins the negatives (with a
share of the training weight, ``sample_weight``, set by calibration). Ranked and judged over all rows,
though, the few thousand benign rows decide the candidates (the latents that tell a persona statement
from an Alpaca instruction), and the 32 latents went to rejecting benign text instead of to the
concept's contrast: power-seeking fell to 0.930 test AUROC. Ranked and judged on the concept's rows,
it reached 0.961.

Why every source counts once (``sources``): pooled over the concept's rows, a large source that is easy
to rank decides both the candidates and the CV judgement. The reply scam detector has SMS spam rendered
as replies (single latents reach 0.98 on it) beside the model's own e-mails (no latent above 0.8);
pooled, the candidates were SMS latents and the e-mails got what was left. With ``sources``, a latent's
strength is the mean of its pooled and per-source separations and a latent set's CV AUROC is the mean of
the pooled and per-source AUROCs (``detectors.calibration.stats.source_balanced_auroc``).

The span (which tokens) and aggregation (max or mean) are chosen the same way, by grouped CV AUROC.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from detectors.calibration.stats import (
    auroc,
    auroc_columns,
    source_balanced_auroc,
    source_balanced_separation,
)
from detectors.spec import linear_score


@dataclass(frozen=True)
class DiscoveryConfig:
    """Knobs of latent selection."""

    max_latents: int = 32
    """Most latents a detector may use."""
    candidates: int = 1024
    """Latents (strongest by single-latent AUROC) offered to the L1 model. Many weak latents can
    together beat a few strong ones: on the starter SAE, 1024 candidates instead of 256 raised the
    test AUROC of the scam detector (mean over the prompt) from 0.954 to 0.990."""
    c_grid: tuple[float, ...] = (0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 1.0, 3.0)
    """Inverse L1 strengths tried (about two per factor of 3 where the latent count crosses 32)."""
    folds: int = 5
    """Grouped cross-validation folds."""
    prune_from: float = 3.0
    """Largest L1 model (as a multiple of ``max_latents``) that is pruned back to ``max_latents``."""


@dataclass
class LatentRank:
    """One latent's standalone signal on the train split."""

    latent: int
    auroc: float
    mean_pos: float
    mean_neg: float


@dataclass
class LinearDetector:
    """``bias + weights . f`` over ``latents`` (raw aggregated values)."""

    latents: list[int]
    weights: list[float]
    bias: float
    cv_auroc: float
    """Grouped CV AUROC on the train split when it was chosen."""

    def score(self, features: np.ndarray, columns: list[int] | None = None) -> np.ndarray:
        """Scores of ``features [n, d]``; ``columns``: where each of ``latents`` sits (default: latent ids)."""
        cols = self.latents if columns is None else columns
        return linear_score(self.bias, np.asarray(self.weights), features[:, cols])


def rank_latents(features: np.ndarray, labels: np.ndarray, top: int | None = None,
                 sources: np.ndarray | None = None) -> list[LatentRank]:
    """Latents sorted by how far their AUROC is from 0.5 (either direction); with ``sources``, by that
    distance averaged over the pooled rows and each source (``source_balanced_separation``)."""
    a = auroc_columns(features, labels)
    a = np.nan_to_num(a, nan=0.5)
    pos, neg = features[labels == 1].mean(0), features[labels == 0].mean(0)
    strength = np.abs(a - 0.5) if sources is None else source_balanced_separation(features, labels, sources,
                                                                                   pooled=a)
    order = np.argsort(-strength, kind="stable")[:top]
    return [LatentRank(int(j), float(a[j]), float(pos[j]), float(neg[j])) for j in order]


def _fit(x: np.ndarray, y: np.ndarray, c: float, penalty: str, w: np.ndarray | None = None) -> LogisticRegression:
    """Logistic regression; without row weights ``w`` the two classes weigh the same (``balanced``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(l1_ratio=1.0 if penalty == "l1" else 0.0, C=c, solver="liblinear", max_iter=2000,
                                  class_weight="balanced" if w is None else None).fit(x, y, sample_weight=w)


def _cv_auroc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float, penalty: str, folds: int,
              judged: np.ndarray | None = None, w: np.ndarray | None = None,
              sources: np.ndarray | None = None) -> float:
    """Grouped cross-validated AUROC, over the rows in ``judged`` (default: all); with ``sources`` (per row),
    source-balanced (``source_balanced_auroc``)."""
    scores = np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=folds).split(x, y, groups):
        if len(np.unique(y[tr])) < 2:
            return float("nan")
        scores[te] = _fit(x[tr], y[tr], c, penalty, None if w is None else w[tr]).decision_function(x[te])
    rows = slice(None) if judged is None else judged
    if sources is None:
        return auroc(scores[rows], y[rows])
    return source_balanced_auroc(scores[rows], y[rows], np.asarray(sources)[rows])


def _feature_scale(x: np.ndarray) -> np.ndarray:
    """Per-column divisor for standardisation: the standard deviation, floored at a tenth of the mean
    magnitude (see the module docstring) and at 1e-6."""
    return np.maximum(x.std(0), np.maximum(0.1 * np.abs(x).mean(0), 1e-6))


def _prune(xs: np.ndarray, y: np.ndarray, kept: np.ndarray, target: int, w: np.ndarray | None = None) -> np.ndarray:
    """Recursive elimination: refit an L2 model on ``kept`` and drop the smallest standardised weights,
    at most half of the surplus at a time, until ``target`` columns remain."""
    kept = np.asarray(kept)
    while len(kept) > target:
        coef = np.abs(_fit(xs[:, kept], y, 1.0, "l2", w).coef_[0])
        drop = max(1, (len(kept) - target + 1) // 2)
        kept = kept[np.sort(np.argsort(-coef, kind="stable")[: len(kept) - drop])]
    return kept


def fit_detector(features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                 cfg: DiscoveryConfig = DiscoveryConfig(), *, judged: np.ndarray | None = None,
                 sample_weight: np.ndarray | None = None, allowed: np.ndarray | None = None,
                 sources: np.ndarray | None = None) -> LinearDetector:
    """Select at most ``cfg.max_latents`` latents and fit the linear detector (see module docstring).

    ``judged``: the rows that rank the candidate latents and whose cross-validated AUROC chooses among
    latent sets (default: all); the other rows only train. ``allowed``: the latent ids that may be used
    (default: all; calibration passes ``admissible_latents``). ``sources``: each row's source; given, the
    candidates are ranked and the latent sets judged with every source counting once
    (``source_balanced_separation``, ``source_balanced_auroc``), so a large easy source does not choose the
    latents of a small hard one.
    """
    labels = np.asarray(labels).astype(int)
    ranked_on = slice(None) if judged is None else judged
    pool = np.arange(features.shape[1]) if allowed is None else np.asarray(allowed, dtype=int)
    src_judged = None if sources is None else np.asarray(sources)[ranked_on]
    cand = [int(pool[r.latent]) for r in rank_latents(features[ranked_on][:, pool], labels[ranked_on], cfg.candidates,
                                                      src_judged)]
    x = features[:, cand]
    mu, sd = x.mean(0), _feature_scale(x)
    xs = (x - mu) / sd
    sets: list[np.ndarray] = []
    for c in sorted(cfg.c_grid):
        kept = np.flatnonzero(_fit(xs, labels, c, "l1", sample_weight).coef_[0])
        if len(kept) == 0:
            continue
        if len(kept) <= cfg.max_latents:
            sets.append(kept)
        elif len(kept) <= cfg.prune_from * cfg.max_latents:
            sets.append(_prune(xs, labels, kept, cfg.max_latents, sample_weight))
        else:
            break  # weaker penalties only keep more
    if not sets:  # even the strongest L1 keeps too many: take the top-ranked latents
        sets.append(np.arange(min(cfg.max_latents, len(cand))))
    best: tuple[float, list[int]] | None = None
    for kept in sets:
        score = _cv_auroc(xs[:, kept], labels, groups, 1.0, "l2", cfg.folds, judged, sample_weight, sources)
        if best is None or score > best[0] + 1e-9:
            best = (score, kept.tolist())
    cv, kept = best
    model = _fit(xs[:, kept], labels, 1.0, "l2", sample_weight)
    w = model.coef_[0] / sd[kept]
    b = float(model.intercept_[0] - (model.coef_[0] * mu[kept] / sd[kept]).sum())
    return LinearDetector(latents=[int(cand[k]) for k in kept], weights=[float(v) for v in w], bias=b, cv_auroc=cv)
