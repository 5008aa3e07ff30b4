"""The dense baseline: a logistic probe on raw layer-L activations, same examples and span as the SAE
detector. Published work finds dense probes often beat SAE probes; reporting both keeps us honest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.calibration.discover import _cv_auroc, _fit


@dataclass
class DenseProbe:
    """``bias + weights . ((x - mean) / std)`` on span-aggregated activations ``x [d_in]``."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float
    c: float
    cv_auroc: float

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.bias + ((x - self.mean) / self.std) @ self.weights


def fit_probe(x: np.ndarray, labels: np.ndarray, groups: np.ndarray,
              c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0), folds: int = 5,
              judged: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> DenseProbe:
    """L2 logistic regression on standardised features, strength chosen by grouped CV AUROC over the
    ``judged`` rows (default: all), trained with ``sample_weight``, as ``discover.fit_detector`` chooses."""
    labels = np.asarray(labels).astype(int)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    scored = [(_cv_auroc(xs, labels, groups, c, "l2", folds, judged, sample_weight), c) for c in c_grid]
    cv, c = max(scored, key=lambda t: (np.nan_to_num(t[0], nan=-1), -t[1]))
    m = _fit(xs, labels, c, "l2", sample_weight)
    return DenseProbe(mu, sd, m.coef_[0], float(m.intercept_[0]), c, cv)
