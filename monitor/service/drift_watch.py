"""``DriftWatch``: does each detector's threshold still hold on this deployment's traffic?

A threshold chosen on calibration text guarantees, with probability 1 - delta, a false-positive rate
of at most ``CalibrationRecord.guaranteed_fpr`` on traffic *like that text*. The sidecar sees every
request's outcome, so it can check: per detector, over a sliding window of finished requests (default
the last hour), the live alert rate ``k / n`` and its Clopper-Pearson 95% interval. The state is

    insufficient_data   n < min_requests (default 200)
    drifting            the interval's lower end > limit_factor (2) x the calibrated bound
    ok                  otherwise

Nearly all traffic is benign, so a live rate well above the calibrated FPR means the benign traffic here
scores higher than the calibration's did: the threshold no longer holds (or there is an attack wave;
either way a person should look). The lower end of the interval, not the point estimate, has to clear
twice the bound: with 200 requests and a 1 % bound that takes at least 9 alerts (4.5 %), so chance
alone does not trip it (with a true rate at the bound: 2e-4 per evaluation at 200 requests, 2e-7 at 1,000).

Counts are kept per detector in ``BUCKETS`` time buckets (bounded memory at any request rate); the
window slides by whole buckets. Only requests whose detector span had tokens count (the others never
alert, as in calibration). Windows are keyed by detector name and spec version: a reload that changes
a spec (e.g. after ``calibrate --thresholds-from``) starts its window afresh, and requests still
finishing on the old version are not counted against the new one.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch

from alerts.dashboard.models import DriftSummary
from detectors.calibration.stats import clopper_pearson
from detectors.spec import DetectorSpec

BUCKETS = 60
"""Time buckets per window (one minute each for the default hour)."""


@dataclass
class _Window:
    version: str
    bound: float | None
    buckets: deque = field(default_factory=deque)
    """``[bucket index, requests, alerts]``, oldest first."""
    state: str = "insufficient_data"
    since: float = field(default_factory=time.time)
    n: int = 0
    k: int = 0


@dataclass(frozen=True)
class DriftTransition:
    """A detector that has just entered ``drifting``."""

    detector: str
    version: str
    summary: DriftSummary


class DriftWatch:
    """Sliding-window live alert rates of the loaded detectors. Thread-safe: the worker observes, the API,
    the metrics scrape and the dashboard read."""

    def __init__(self, *, window_s: float = 3600.0, min_requests: int = 200, limit_factor: float = 2.0,
                 evaluate_every_s: float = 0.5) -> None:
        self.window_s = float(window_s)
        self.min_requests = int(min_requests)
        self.limit_factor = float(limit_factor)
        self.evaluate_every_s = evaluate_every_s
        self._bucket_s = self.window_s / BUCKETS
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._next_evaluation = 0.0
        self._ci_cache: dict[tuple[int, int], tuple[float, float]] = {}

    # ------------------------------------------------------------------ detectors
    def set_detectors(self, specs: list[DetectorSpec] | tuple[DetectorSpec, ...]) -> None:
        """The detectors to watch; a detector whose version is unchanged keeps its window."""
        with self._lock:
            old = self._windows
            self._windows = {}
            for spec in specs:
                w = old.get(spec.name)
                bound = spec.calibration.guaranteed_fpr if spec.calibration is not None else None
                if w is None or w.version != spec.version or w.bound != bound:
                    w = _Window(spec.version, bound)
                self._windows[spec.name] = w

    @property
    def detectors(self) -> list[str]:
        with self._lock:
            return list(self._windows)

    # ------------------------------------------------------------------ observing
    def observe(self, specs: tuple[DetectorSpec, ...], scores: torch.Tensor, alerted: torch.Tensor,
                now: float | None = None) -> None:
        """Count finished requests: ``scores [m, d]`` (NaN: the span had no tokens, not counted) and
        ``alerted [m, d]`` bool, columns in the order of ``specs`` (the generation they were scored with)."""
        if scores.shape[0] == 0:
            return
        now = time.time() if now is None else now
        scored = ~scores.isnan()
        n = scored.sum(0).tolist()
        k = (alerted & scored).sum(0).tolist()
        index = int(now // self._bucket_s)
        with self._lock:
            for spec, dn, dk in zip(specs, n, k):
                w = self._windows.get(spec.name)
                if w is None or w.version != spec.version or dn == 0:
                    continue
                if w.buckets and w.buckets[-1][0] == index:
                    w.buckets[-1][1] += dn
                    w.buckets[-1][2] += dk
                else:
                    w.buckets.append([index, dn, dk])
                w.n += dn
                w.k += dk

    # ------------------------------------------------------------------ evaluating
    def due(self, now: float | None = None) -> bool:
        """Whether ``evaluate`` would do work now (it is throttled to once per ``evaluate_every_s``)."""
        return (time.monotonic() if now is None else now) >= self._next_evaluation

    def evaluate(self, now: float | None = None, *, force: bool = False) -> list[DriftTransition] | None:
        """Slide the windows and update every state; the detectors that have just entered ``drifting``. None
        when throttled (evaluated less than ``evaluate_every_s`` ago, unless ``force``)."""
        mono = time.monotonic()
        if not force and mono < self._next_evaluation:
            return None
        self._next_evaluation = mono + self.evaluate_every_s
        now = time.time() if now is None else now
        out = []
        with self._lock:
            for name, w in self._windows.items():
                self._slide(w, now)
                state = self._state(w)
                if state != w.state:
                    w.state, w.since = state, now
                    if state == "drifting":
                        out.append(DriftTransition(name, w.version, self._summary(w)))
        return out

    def snapshot(self, now: float | None = None) -> dict[str, DriftSummary]:
        """Every watched detector's current numbers (windows slid to ``now``; states as last evaluated)."""
        now = time.time() if now is None else now
        with self._lock:
            out = {}
            for name, w in self._windows.items():
                self._slide(w, now)
                out[name] = self._summary(w)
            return out

    def _slide(self, w: _Window, now: float) -> None:
        oldest = int(now // self._bucket_s) - BUCKETS + 1
        while w.buckets and w.buckets[0][0] < oldest:
            _, dn, dk = w.buckets.popleft()
            w.n -= dn
            w.k -= dk

    def _interval(self, k: int, n: int) -> tuple[float, float]:
        key = (k, n)
        ci = self._ci_cache.get(key)
        if ci is None:
            if len(self._ci_cache) > 4096:
                self._ci_cache.clear()
            ci = self._ci_cache[key] = clopper_pearson(k, n)
        return ci

    def _state(self, w: _Window) -> str:
        if w.n < self.min_requests or w.bound is None:
            return "insufficient_data" if w.n < self.min_requests else "ok"
        low, _ = self._interval(w.k, w.n)
        return "drifting" if low > self.limit_factor * w.bound else "ok"

    def _summary(self, w: _Window) -> DriftSummary:
        rate = w.k / w.n if w.n else None
        ratio = None
        if rate is not None and w.bound is not None:
            ratio = rate / w.bound if w.bound > 0 else (math.inf if rate > 0 else 0.0)
        return DriftSummary(
            state=w.state, window_s=self.window_s, min_requests=self.min_requests, window_requests=w.n,
            window_alerts=w.k, live_alert_rate=rate, live_rate_ci=self._interval(w.k, w.n) if w.n else None,
            calibrated_fpr_upper_bound=w.bound, ratio=ratio if ratio is None or math.isfinite(ratio) else None,
            limit_factor=self.limit_factor, since=datetime.fromtimestamp(w.since, UTC),
        )
