"""Detection metrics with honest uncertainty: AUROC, recall and FPR at a threshold, their intervals.

Intervals: Clopper-Pearson (exact binomial) for rates; a percentile bootstrap over groups (pairs stay
together when resampled) for AUROC and recall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, rankdata


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), via the Mann-Whitney U statistic."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_columns(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-column AUROC of ``features [n, d]``: ``[d]`` (vectorised; used to rank latents)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    ranks = rankdata(features, axis=0)
    return (ranks[labels].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def source_strata(labels: np.ndarray, sources: np.ndarray | None, min_per_label: int = 10) -> list[np.ndarray]:
    """Row masks a detector is judged on: all rows pooled, and each source holding at least ``min_per_label``
    rows of each label (``sources`` None: the pooled rows alone)."""
    labels = np.asarray(labels).astype(bool)
    strata = [np.ones(len(labels), dtype=bool)]
    if sources is not None:
        sources = np.asarray(sources)
        for src in sorted(set(sources.tolist())):
            m = sources == src
            if min(int(labels[m].sum()), int((~labels[m]).sum())) >= min_per_label and not m.all():
                strata.append(m)
    return strata


def source_balanced_auroc(scores: np.ndarray, labels: np.ndarray, sources: np.ndarray | None,
                          min_per_label: int = 10) -> float:
    """The mean of the pooled AUROC and the AUROC within each source with both labels
    (``source_strata``): a source that is hard to rank counts as much as an easy one, however many rows it
    has and however far its scores sit from the other sources'."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    return float(np.nanmean([auroc(scores[m], labels[m]) for m in source_strata(labels, sources, min_per_label)]))


def source_balanced_separation(features: np.ndarray, labels: np.ndarray, sources: np.ndarray | None,
                               min_per_label: int = 10, *, pooled: np.ndarray | None = None) -> np.ndarray:
    """Per column ``[d]``: the mean, over ``source_strata``, of ``|AUROC - 0.5|`` (how strongly a latent
    separates the concept, each source counting once). ``pooled``: the pooled ``auroc_columns``, if the caller
    has them already (the largest of the rank computations)."""
    labels = np.asarray(labels)
    strata = source_strata(labels, sources, min_per_label)
    if pooled is None:
        pooled = auroc_columns(features, labels)
    parts = [np.nan_to_num(pooled, nan=0.5)] + [np.nan_to_num(auroc_columns(features[m], labels[m]), nan=0.5)
                                                for m in strata[1:]]
    return np.mean([np.abs(a - 0.5) for a in parts], axis=0)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion ``k / n``."""
    if n == 0:
        return (0.0, 1.0)
    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return (lo, hi)


@dataclass
class ThresholdMetrics:
    """How a detector does on one labelled set at one threshold."""

    n_pos: int
    n_neg: int
    auroc: float
    auroc_ci: tuple[float, float]
    recall: float
    recall_ci: tuple[float, float]
    """Clopper-Pearson interval (positives are independent rows)."""
    fpr: float
    fpr_ci: tuple[float, float]
    """Clopper-Pearson interval."""

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def bootstrap_auroc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None, *,
                    n_boot: int = 500, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of AUROC, resampling whole groups (e.g. pairs)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(int)
    groups = np.arange(len(scores)) if groups is None else np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        pick = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        a = auroc(scores[pick], labels[pick])
        if not np.isnan(a):
            vals.append(a)
    if not vals:
        return (float("nan"), float("nan"))
    a = (1 - confidence) / 2
    return (float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a)))


def threshold_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float,
                      groups: np.ndarray | None = None, *, n_boot: int = 500) -> ThresholdMetrics:
    """AUROC with a bootstrap interval; recall and FPR at ``score >= threshold`` with exact intervals."""
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    fired = scores >= threshold
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    tp, fp = int((fired & labels).sum()), int((fired & ~labels).sum())
    return ThresholdMetrics(
        n_pos=n_pos, n_neg=n_neg,
        auroc=auroc(scores, labels),
        auroc_ci=bootstrap_auroc(scores, labels, groups, n_boot=n_boot) if n_pos and n_neg else (np.nan, np.nan),
        recall=tp / n_pos if n_pos else float("nan"), recall_ci=clopper_pearson(tp, n_pos),
        fpr=fp / n_neg if n_neg else float("nan"), fpr_ci=clopper_pearson(fp, n_neg),
    )
