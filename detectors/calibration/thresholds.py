"""Choosing a threshold for a target false-positive rate, with a one-sided confidence guarantee.

For ``n`` benign calibration scores, the probability mass of benign traffic at or above the r-th
largest score ``X_(r)`` is distributed as ``Beta(r, n + 1 - r)`` (for continuous scores, whatever
their distribution). So ``threshold = X_(r)`` with the largest ``r`` such that
``P(Beta(r, n + 1 - r) > target_fpr) <= delta`` has true FPR <= ``target_fpr`` with probability
>= 1 - ``delta``. It needs ``n >= log(delta) / log(1 - target_fpr)`` benign samples at all
(299 for 1 % at 95 %); more samples let ``r`` grow and the threshold come down toward the quantile.
Scores need not be continuous: where benign scores tie at ``X_(r)``, the threshold moves just above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta


class CalibrationError(ValueError):
    """Too few benign samples for the requested guarantee."""


def min_benign_samples(target_fpr: float, delta: float = 0.05) -> int:
    """Fewest benign scores for which any threshold carries the guarantee (r = 1, the maximum)."""
    return math.ceil(math.log(delta) / math.log(1 - target_fpr))


@dataclass
class ThresholdChoice:
    """A threshold and the numbers behind it."""

    threshold: float
    rank: int
    """r: the threshold is the r-th largest benign score."""
    n_benign: int
    target_fpr: float
    delta: float
    fpr_upper_bound: float
    """The (1 - delta) quantile of Beta(r, n + 1 - r): the FPR guaranteed not to be exceeded."""
    calibration_fpr: float
    """Share of calibration benign scores at or above the threshold."""


def conformal_threshold(benign_scores: np.ndarray, target_fpr: float = 0.01, delta: float = 0.05) -> ThresholdChoice:
    """The lowest order-statistic threshold whose FPR is <= ``target_fpr`` with probability >= 1 - ``delta``."""
    s = np.sort(np.asarray(benign_scores, dtype=float))[::-1]
    n = len(s)
    need = min_benign_samples(target_fpr, delta)
    if n < need:
        raise CalibrationError(
            f"{n} benign samples cannot guarantee FPR <= {target_fpr:g} at {1 - delta:.0%} confidence; "
            f"at least {need} are needed"
        )
    # P(Beta(r, n+1-r) > target) = 1 - beta.cdf(target, r, n+1-r) is increasing in r: search the largest r.
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if beta.sf(target_fpr, mid, n + 1 - mid) <= delta:
            lo = mid
        else:
            hi = mid - 1
    r = lo
    thr = float(s[r - 1])
    if r < n and s[r] == thr:
        # Ties at X_(r) (e.g. texts where none of a detector's latents fire all score the bias): an alert
        # at ``score >= X_(r)`` would fire on every tied score, far more than r of them. The guarantee
        # holds for ``score > X_(r)``, i.e. the next representable value up.
        thr = float(np.nextafter(thr, np.inf))
    return ThresholdChoice(threshold=thr, rank=r, n_benign=n, target_fpr=target_fpr, delta=delta,
                           fpr_upper_bound=float(beta.ppf(1 - delta, r, n + 1 - r)),
                           calibration_fpr=float((s >= thr).mean()))


@dataclass
class SlicedThreshold:
    """One threshold that keeps the FPR guarantee on every traffic slice with enough benign samples."""

    threshold: float
    """The largest of the slices' thresholds (and the pooled one)."""
    binding: str
    """The slice whose threshold it is (``pooled`` when no slice needs more)."""
    pooled: ThresholdChoice
    """The threshold of all benign calibration scores together."""
    by_slice: dict[str, ThresholdChoice | None]
    """Per slice: its own threshold, or None when it has too few samples for the guarantee (reported only)."""
    n_by_slice: dict[str, int]


def sliced_threshold(benign_scores: np.ndarray, slices: dict[str, np.ndarray], target_fpr: float = 0.01,
                     delta: float = 0.05) -> SlicedThreshold:
    """The threshold for ``target_fpr`` on every slice: each slice (a boolean mask over ``benign_scores``)
    with at least ``min_benign_samples`` scores gets its own order-statistic threshold, and the largest of
    those and the pooled one is used. A slice's FPR at a higher threshold can only be lower, so each such
    slice keeps its guarantee (FPR <= target with probability >= 1 - delta, slice by slice). Why: pooled,
    a threshold set mostly on short texts held 1 % on them and failed on long conversations, where the
    scores of a max over a growing prompt sat higher."""
    scores = np.asarray(benign_scores, dtype=float)
    pooled = conformal_threshold(scores, target_fpr, delta)
    need = min_benign_samples(target_fpr, delta)
    by_slice: dict[str, ThresholdChoice | None] = {}
    thr, binding = pooled.threshold, "pooled"
    for name, mask in slices.items():
        mask = np.asarray(mask, dtype=bool)
        by_slice[name] = conformal_threshold(scores[mask], target_fpr, delta) if mask.sum() >= need else None
        if by_slice[name] is not None and by_slice[name].threshold > thr:
            thr, binding = by_slice[name].threshold, name
    return SlicedThreshold(thr, binding, pooled, by_slice, {k: int(np.asarray(m).sum()) for k, m in slices.items()})
