"""``DriftWatch`` on its own: the states and their thresholds, one transition per entry into ``drifting``, the
window sliding by time, unscored requests not counted, and a new spec version starting afresh."""

from __future__ import annotations

import torch

from detectors.calibration.stats import clopper_pearson
from detectors.spec import CalibrationRecord, DetectorSpec
from monitor.service.drift_watch import DriftWatch

T0 = 960_000.0  # a bucket boundary (60 s buckets of the default hour)


def spec(version: str = "1", bound: float = 0.01) -> DetectorSpec:
    return DetectorSpec(name="d", concept="d", model="m", hook="h", sae_sha256="0" * 64, latents=[1], weights=[1.0],
                        threshold=1.0, version=version,
                        calibration=CalibrationRecord(target_fpr=0.01, fpr_upper_bound=bound))


def observe(w: DriftWatch, s: DetectorSpec, n: int, k: int, now: float, unscored: int = 0) -> None:
    scores = torch.cat([torch.ones(n), torch.full((unscored,), float("nan"))])[:, None]
    alerted = torch.zeros(n + unscored, 1, dtype=torch.bool)
    alerted[:k] = True
    w.observe((s,), scores, alerted, now=now)


def test_states_transitions_and_the_sliding_window():
    w = DriftWatch(window_s=3600, min_requests=200, limit_factor=2.0)
    s = spec()
    w.set_detectors([s])
    observe(w, s, 199, 50, T0, unscored=500)  # requests whose span had no tokens are not counted
    assert w.evaluate(T0, force=True) == []
    d = w.snapshot(T0)["d"]
    assert d.state == "insufficient_data" and d.window_requests == 199 and d.window_alerts == 50
    # 8 of 200 (4 %): the interval's lower end (1.7 %) is below twice the 1 % bound: ok
    w2 = DriftWatch(window_s=3600, min_requests=200)
    w2.set_detectors([s])
    observe(w2, s, 200, 8, T0)
    w2.evaluate(T0, force=True)
    assert clopper_pearson(8, 200)[0] < 0.02 and w2.snapshot(T0)["d"].state == "ok"
    # the first detector: one more request and 50 alerts of 200 -> drifting, once
    observe(w, s, 1, 0, T0 + 60)
    [t] = w.evaluate(T0 + 60, force=True)
    assert t.detector == "d" and t.summary.state == "drifting" and t.summary.ratio > 20
    observe(w, s, 100, 30, T0 + 120)
    assert w.evaluate(T0 + 120, force=True) == []  # still drifting: no new event
    # an hour later the first minute's requests have left the window
    d = w.snapshot(T0 + 3600 + 30)["d"]
    assert d.window_requests == 101
    assert w.evaluate(T0 + 3600 + 30, force=True) == []
    assert w.snapshot(T0 + 3600 + 30)["d"].state == "insufficient_data"
    # drifting again later: a second event
    observe(w, s, 300, 100, T0 + 3700)
    assert len(w.evaluate(T0 + 3700, force=True)) == 1


def test_a_new_version_starts_afresh_and_old_versions_are_not_counted():
    w = DriftWatch(min_requests=10)
    v1, v2 = spec("1"), spec("2", bound=0.05)
    w.set_detectors([v1])
    observe(w, v1, 50, 40, T0)
    w.set_detectors([v1])  # unchanged: the window is kept
    assert w.snapshot(T0)["d"].window_requests == 50
    w.set_detectors([v2])
    assert w.snapshot(T0)["d"].window_requests == 0
    observe(w, v1, 50, 40, T0)  # requests still finishing on version 1
    observe(w, v2, 20, 0, T0)
    d = w.snapshot(T0)["d"]
    assert d.window_requests == 20 and d.calibrated_fpr_upper_bound == 0.05
    w.evaluate(T0, force=True)
    assert w.snapshot(T0)["d"].state == "ok"
