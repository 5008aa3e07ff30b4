"""``safety-monitor calibrate --thresholds-from SAMPLES``: new thresholds from the deployment's own traffic.

A detector keeps its latents, weights, bias, aggregation and span; only its threshold and severity
cut-offs are set again, on the traffic samples the sidecar recorded (``traffic_samples``):

* benign: every sample of the detector except those whose alert a person confirmed
  (``safety-monitor samples label``); the confirmed ones are the positives;
* scores: recomputed from the recorded features with the spec's weights (the features are only used
  when they were recorded for the same SAE, latents, aggregation, span and window);
* threshold: ``sliced_threshold`` on the benign scores, per traffic slice (single turn, multi-turn,
  long: ``detectors.traffic_slices`` from each sample's turn and token counts), the same order-statistic
  guarantee as offline calibration: on each slice with enough samples, and pooled, the true FPR on
  traffic like the samples is at most the target with probability >= 1 - delta;
* severity: ``severity_cutoffs`` (medium above every benign sample; high and critical from the confirmed
  positives when at least two reach medium, else the spec's old cut-offs, raised to medium if needed).

The guarantee assumes the samples are exchangeable with the traffic to come, and that the unconfirmed
samples are benign: an alert nobody reviewed counts as a false positive, which can only raise the
threshold (conservative for the FPR, at the cost of recall). Refused, with the reason, when there are
fewer benign samples than ``min_benign_samples`` needs (299 for 1 % at 95 %).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from detectors.calibration.calibrate import severity_cutoffs
from detectors.calibration.stats import clopper_pearson
from detectors.calibration.thresholds import CalibrationError, min_benign_samples, sliced_threshold
from detectors.calibration.traffic_samples import SampleSet
from detectors.spec import CalibrationRecord, DetectorSpec
from detectors.traffic_slices import TRAFFIC_SLICES, traffic_slices

SAMPLES_DATASET = "traffic-samples"
"""Name of the samples in the new calibration record's ``datasets`` (value: their sha256)."""


@dataclass
class Recalibration:
    """The outcome for one detector: a new spec, or the reason there is none."""

    detector: str
    old_version: str
    old_threshold: float
    spec: DetectorSpec | None = None
    refused: str | None = None
    n_samples: int = 0
    n_benign: int = 0
    n_confirmed: int = 0
    benign_fpr_at_old: float | None = None
    """Share of the benign samples at or above the old threshold: what the deployment saw."""
    by_slice: dict[str, dict] = field(default_factory=dict)
    benign_scores: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("spec", "benign_scores")}
        if self.spec is not None:
            out.update(new_version=self.spec.version, new_threshold=self.spec.threshold,
                       severity_thresholds=self.spec.severity_thresholds,
                       calibration=self.spec.calibration.model_dump(mode="json") if self.spec.calibration else None)
        return out


def next_version(version: str) -> str:
    """``"3"`` -> ``"4"``; anything else gets ``-r1``, ``-r2``, ...."""
    if version.isdigit():
        return str(int(version) + 1)
    head, sep, tail = version.rpartition("-r")
    if sep and tail.isdigit():
        return f"{head}-r{int(tail) + 1}"
    return f"{version}-r1"


def recalibrate(spec: DetectorSpec, samples: SampleSet, *, target_fpr: float | None = None, delta: float | None = None
                ) -> Recalibration:
    """New threshold and severity cut-offs of ``spec`` from ``samples`` (see the module docstring)."""
    old = spec.calibration
    target = target_fpr if target_fpr is not None else (old.target_fpr if old is not None else 0.01)
    delta = delta if delta is not None else float(getattr(old, "delta", None) or 0.05)
    result = Recalibration(spec.name, spec.version, spec.threshold)
    feats, turns, tokens, confirmed = [], [], [], []
    for s in samples.samples:
        for d in s.detectors:
            if d.key.name == spec.name and d.key.same_features(spec):
                feats.append(d.features)
                turns.append(s.n_turns)
                tokens.append(s.n_tokens)
                confirmed.append(spec.name in s.confirmed)
                break
    result.n_samples = len(feats)
    if not feats:
        result.refused = (f"no samples of {spec.name!r} with its latents, aggregation, span and window on this SAE: "
                          "were the samples recorded with these detectors?")
        return result
    scores = np.asarray(spec.score(np.stack(feats).astype(np.float64)), dtype=float)
    pos = np.asarray(confirmed, dtype=bool)
    benign = scores[~pos]
    result.n_benign, result.n_confirmed = len(benign), int(pos.sum())
    result.benign_scores = benign.tolist()
    if len(benign):
        result.benign_fpr_at_old = float((benign >= spec.threshold).mean())
    member = [traffic_slices(t, n) for t, n, p in zip(turns, tokens, pos) if not p]
    masks = {name: np.array([name in m for m in member], dtype=bool) for name in TRAFFIC_SLICES}
    need = min_benign_samples(target, delta)
    if len(benign) < need:
        result.refused = (f"{len(benign)} benign samples of {spec.name!r} cannot guarantee FPR <= {target:g} at "
                          f"{1 - delta:.0%} confidence; at least {need} are needed (record more: raise "
                          "samples.rate or wait longer)")
        return result
    try:
        sliced = sliced_threshold(benign, masks, target, delta)
    except CalibrationError as exc:  # pragma: no cover - the count was checked above
        result.refused = str(exc)
        return result
    choice = sliced.by_slice.get(sliced.binding) or sliced.pooled
    threshold = sliced.threshold
    severity = severity_cutoffs(threshold, benign, scores[pos])
    if "high" not in severity:  # too few confirmed positives: keep the old cut-offs, at or above medium
        for level in ("high", "critical"):
            if level in spec.severity_thresholds:
                severity[level] = max(severity["medium"], spec.severity_thresholds[level])
    fired = int((benign >= threshold).sum())
    result.by_slice = {name: {"n": sliced.n_by_slice[name],
                              "threshold": None if c is None else c.threshold,
                              "fpr_upper_bound": None if c is None else c.fpr_upper_bound}
                       for name, c in sliced.by_slice.items()}
    times = [s.time for s in samples.samples]
    record = CalibrationRecord(
        target_fpr=target, achieved_fpr=fired / len(benign), achieved_fpr_ci=clopper_pearson(fired, len(benign)),
        n_benign=choice.n_benign, auroc=old.auroc if old else None, auroc_ci=old.auroc_ci if old else None,
        datasets={SAMPLES_DATASET: samples.sha256}, date=datetime.now(UTC).date().isoformat(),
        fpr_upper_bound=choice.fpr_upper_bound, delta=delta, threshold_rank=choice.rank,
        threshold_slice=sliced.binding, fpr_by_slice=result.by_slice,
        achieved_fpr_on="the traffic samples the threshold was set on (in-sample)",
        recalibrated_from={"version": spec.version, "threshold": spec.threshold,
                           "datasets": dict(old.datasets) if old else {}},
        samples={"source": samples.source, "n": len(feats), "benign": len(benign), "confirmed": int(pos.sum()),
                 "from": min(times), "to": max(times), "dropped_total": samples.dropped_total},
    )
    result.spec = spec.model_copy(update={
        "version": next_version(spec.version), "threshold": threshold, "severity_thresholds": severity,
        "calibration": record})
    DetectorSpec.model_validate(result.spec.model_dump(by_alias=True))  # the copy is checked like a loaded spec
    return result


def markdown_report(results: list[Recalibration], samples: SampleSet, *, dry_run: bool) -> str:
    """The human report of a recalibration run."""
    lines = [f"# Recalibration from traffic samples{' (dry run: nothing applied)' if dry_run else ''}", "",
             f"Samples: `{samples.source}`, sha256 `{samples.sha256}`, {len(samples.samples)} requests"
             + (f" ({samples.dropped_total} older ones were dropped by the store's bound)" if samples.dropped_total
                else "") + ".", "",
             ("| detector | samples | benign | confirmed | FPR at old threshold | old threshold | new threshold "
             "| binding slice | FPR bound | result |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        old_fpr = "–" if r.benign_fpr_at_old is None else f"{100 * r.benign_fpr_at_old:.2f} %"
        if r.spec is not None:
            c = r.spec.calibration
            lines.append(f"| {r.detector} | {r.n_samples} | {r.n_benign} | {r.n_confirmed} | {old_fpr} | "
                         f"{r.old_threshold:.4g} (v{r.old_version}) | {r.spec.threshold:.4g} (v{r.spec.version}) | "
                         f"{c.threshold_slice} | {100 * c.fpr_upper_bound:.2f} % | new spec |")
        else:
            lines.append(f"| {r.detector} | {r.n_samples} | {r.n_benign} | {r.n_confirmed} | {old_fpr} | "
                         f"{r.old_threshold:.4g} (v{r.old_version}) | – | – | – | refused: {r.refused} |")
    return "\n".join(lines) + "\n"
