"""Metrics against scikit-learn, and the threshold guarantee on synthetic score distributions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from detectors.calibration.stats import (
    auroc,
    auroc_columns,
    bootstrap_auroc,
    clopper_pearson,
    threshold_metrics,
)
from detectors.calibration.thresholds import CalibrationError, conformal_threshold, min_benign_samples


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 200)
        scores = np.round(rng.normal(size=200) + labels * 0.7, 1)  # rounding makes ties
        assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    lab = np.random.default_rng(1).integers(0, 2, 300)
    feats = rng.normal(size=(300, 5)) + lab[:, None] * np.arange(5) * 0.3
    got = auroc_columns(feats, lab)
    want = [roc_auc_score(lab, feats[:, j]) for j in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_clopper_pearson_known_values():
    lo, hi = clopper_pearson(0, 100)
    assert lo == 0.0 and hi == pytest.approx(0.03621669, rel=1e-5)
    lo, hi = clopper_pearson(5, 10)
    assert lo == pytest.approx(0.187086, rel=1e-4) and hi == pytest.approx(0.812914, rel=1e-4)


def test_bootstrap_interval_covers_and_respects_groups():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 150)
    scores = rng.normal(size=300) + labels
    lo, hi = bootstrap_auroc(scores, labels, n_boot=300)
    a = auroc(scores, labels)
    assert lo < a < hi and hi - lo < 0.15
    # identical pairs resampled together: the interval is wider than treating the copies as independent
    dup_s, dup_l, groups = np.repeat(scores, 2), np.repeat(labels, 2), np.repeat(np.arange(300), 2)
    lo_g, hi_g = bootstrap_auroc(dup_s, dup_l, groups, n_boot=300)
    lo_i, hi_i = bootstrap_auroc(dup_s, dup_l, n_boot=300)
    assert hi_g - lo_g > 1.2 * (hi_i - lo_i)


def test_threshold_metrics_counts():
    scores = np.array([0.1, 0.4, 0.6, 0.9, 0.2, 0.7])
    labels = np.array([0, 0, 1, 1, 0, 1])
    m = threshold_metrics(scores, labels, 0.65, n_boot=50)
    assert (m.n_pos, m.n_neg) == (3, 3)
    assert m.recall == pytest.approx(2 / 3) and m.fpr == 0.0 and m.auroc == 1.0


def test_min_benign_samples():
    assert min_benign_samples(0.01, 0.05) == 299
    with pytest.raises(CalibrationError, match="at least 299"):
        conformal_threshold(np.zeros(298), 0.01, 0.05)


@pytest.mark.parametrize("dist", ["normal", "exponential", "bimodal"])
def test_threshold_guarantee_holds_on_synthetic_benign_scores(dist):
    """Over many calibration draws, the true FPR exceeds the target in at most ~delta of them."""
    rng = np.random.default_rng(42)
    target, delta, n, trials = 0.01, 0.05, 1000, 1500
    exceed = 0
    for _ in range(trials):
        if dist == "normal":
            s = rng.normal(size=n)
            true_fpr = lambda t: norm.sf(t)
        elif dist == "exponential":
            s = rng.exponential(size=n)
            true_fpr = lambda t: np.exp(-t)
        else:
            s = np.where(rng.random(n) < 0.5, rng.normal(-2, 0.5, n), rng.normal(2, 0.5, n))
            true_fpr = lambda t: 0.5 * norm.sf(t, -2, 0.5) + 0.5 * norm.sf(t, 2, 0.5)
        choice = conformal_threshold(s, target, delta)
        exceed += true_fpr(choice.threshold) > target
    rate = exceed / trials
    assert rate <= delta + 3 * np.sqrt(delta * (1 - delta) / trials), rate
    assert rate >= 0.01, "the threshold should not be far more conservative than needed"


def test_threshold_guarantee_holds_when_benign_scores_tie():
    """Most benign texts fire none of a detector's latents, so they all score the bias: an atom. An alert
    at ``score >= X_(r)`` on a tied X_(r) would fire on the whole atom; the threshold must sit above it."""
    rng = np.random.default_rng(7)
    target, delta, n, trials = 0.01, 0.05, 1000, 1000
    exceed = 0
    for trial in range(trials):
        atom = 0.995 if trial % 2 else 0.9  # the atom holds X_(r) (rarely) or lies well below it
        s = np.where(rng.random(n) < atom, -3.0, rng.normal(size=n))
        choice = conformal_threshold(s, target, delta)
        true_fpr = (1 - atom) * norm.sf(choice.threshold) + atom * (choice.threshold <= -3.0)
        exceed += true_fpr > target
    assert exceed / trials <= delta + 3 * np.sqrt(delta * (1 - delta) / trials)
    all_tied = conformal_threshold(np.full(500, -3.0), target, delta)
    assert all_tied.threshold > -3.0 and (np.full(10, -3.0) >= all_tied.threshold).sum() == 0
