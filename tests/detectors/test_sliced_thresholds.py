"""Per-slice thresholds keep the FPR guarantee on every slice, where a pooled threshold does not."""

from __future__ import annotations

import numpy as np

from detectors.calibration.thresholds import min_benign_samples, sliced_threshold
from detectors.traffic_slices import traffic_slices


def test_every_slice_keeps_its_guarantee_where_the_pooled_threshold_fails():
    rng = np.random.default_rng(0)
    target, delta, trials = 0.01, 0.05, 300
    fails_sliced = fails_pooled = 0
    for _ in range(trials):
        # short texts: most of the traffic; long chats: fewer, and their benign scores sit higher
        short, long = rng.normal(0, 1, 3000), rng.normal(1.5, 1, 400)
        scores = np.concatenate([short, long])
        slices = {"single_turn": np.r_[np.ones(3000, bool), np.zeros(400, bool)],
                  "multi_turn": np.r_[np.zeros(3000, bool), np.ones(400, bool)]}
        t = sliced_threshold(scores, slices, target, delta)
        assert t.binding == "multi_turn" and t.threshold >= t.pooled.threshold
        # the true FPR of each slice at the chosen thresholds (normal tails)
        from scipy.stats import norm

        fpr_long = norm.sf(t.threshold - 1.5)
        fails_sliced += fpr_long > target
        fails_pooled += norm.sf(t.pooled.threshold - 1.5) > target
        assert norm.sf(t.threshold) <= target  # the short slice too
    assert fails_sliced / trials <= delta + 0.03  # the guarantee, up to sampling noise of 300 trials
    assert fails_pooled / trials > 0.9  # pooled, long chats break it nearly always


def test_a_slice_too_small_for_the_guarantee_is_reported_not_used():
    rng = np.random.default_rng(1)
    scores = rng.normal(0, 1, 2000)
    small = np.zeros(2000, bool)
    small[: min_benign_samples(0.01) - 1] = True
    t = sliced_threshold(scores, {"long": small}, 0.01, 0.05)
    assert t.by_slice["long"] is None and t.binding == "pooled" and t.n_by_slice["long"] == 298


def test_traffic_slices():
    assert traffic_slices(2, 100) == ["single_turn"]
    assert traffic_slices(18, 600) == ["multi_turn"]
    assert traffic_slices(20, 1500) == ["multi_turn", "long"]
    assert traffic_slices(1, 1200) == ["long"]
    assert traffic_slices(4, 300) == []
