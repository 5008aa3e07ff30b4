"""An in-process dashboard store for the default, server-less run.

Same write and read methods as :class:`alerts.dashboard.redis_store.DashboardStore`, kept in this process's
memory (bounded: ``stream_maxlen`` recent alerts, counters for the last day). It is never
stale, and its data is gone when the process exits.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from alerts.config import StoreConfig
from alerts.dashboard.models import (
    AlertRates,
    DashboardSummary,
    DetectorThreshold,
    Heartbeat,
    InstanceHealth,
    ScoreHistogram,
    StoreHealth,
    health_details,
    histogram_bucket,
)
from alerts.dashboard.redis_store import rates_from_counters
from alerts.schema import Alert

_KEEP_MINUTES = 24 * 60
_HIST_HOURS = 24


class InMemoryDashboardStore:
    """Dashboard data of one model in this process. Thread-safe."""

    backend = "memory"

    def __init__(
        self, config: StoreConfig, *, health_provider: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        self.config = config
        self.model = config.model
        self._health_provider = health_provider
        self._lock = threading.Lock()
        self._recent: deque[Alert] = deque(maxlen=config.stream_maxlen)
        self._rates: dict[int, Counter[str]] = defaultdict(Counter)
        self._hist: dict[tuple[str, int], Counter[int]] = defaultdict(Counter)
        self._detectors: set[str] = set()
        self._thresholds: dict[str, DetectorThreshold] = {}
        self._started_at = datetime.now(UTC)
        self._writes = 0

    def start(self) -> InMemoryDashboardStore:
        return self

    def close(self, timeout_s: float = 0.0) -> None:
        pass

    def flush(self, timeout_s: float) -> bool:
        return True

    def set_health_provider(self, provider: Callable[[], dict[str, Any]] | None) -> None:
        self._health_provider = provider

    @property
    def is_stale(self) -> bool:
        return False

    # --- writes -----------------------------------------------------------------------------

    def record_alert(self, alert: Alert) -> bool:
        minute = int(alert.time.timestamp()) // 60
        with self._lock:
            self._recent.append(alert)
            if alert.kind == "detection":  # a drift event is listed, not counted as a detection
                self._rates[minute][f"{alert.detector}|{alert.severity.value}"] += 1
            self._detectors.add(alert.detector)
            self._writes += 1
            for old in [m for m in self._rates if m < minute - _KEEP_MINUTES]:
                del self._rates[old]
        return True

    def observe_scores(self, detector: str, scores: Iterable[float], threshold: float) -> bool:
        hour = int(time.time()) // 3600
        counts = Counter(histogram_bucket(float(s), threshold, self.config.histogram_edges) for s in scores)
        with self._lock:
            self._hist[(detector, hour)].update(counts)
            self._detectors.add(detector)
            for key in [k for k in self._hist if k[1] < hour - _HIST_HOURS]:
                del self._hist[key]
        return True

    def set_thresholds(self, thresholds: Sequence[DetectorThreshold]) -> bool:
        with self._lock:
            self._thresholds = {t.detector: t for t in thresholds}
            self._detectors.update(self._thresholds)
        return True

    def heartbeat(self) -> bool:
        return True

    # --- reads ------------------------------------------------------------------------------

    def recent_alerts(self, limit: int = 50) -> list[Alert]:
        with self._lock:
            return list(reversed(self._recent))[:limit]

    def rates(self, minutes: int = 60) -> AlertRates:
        now_min = int(time.time()) // 60
        mins = list(range(now_min - minutes + 1, now_min + 1))
        with self._lock:
            counters = [dict(self._rates.get(m, {})) for m in mins]
            detectors = set(self._detectors)
        return rates_from_counters(mins, counters, detectors)

    def thresholds(self) -> list[DetectorThreshold]:
        with self._lock:
            return [self._thresholds[d] for d in sorted(self._thresholds)]

    def histograms(self) -> list[ScoreHistogram]:
        edges = list(self.config.histogram_edges)
        with self._lock:
            per_det: dict[str, list[int]] = {}
            for (det, _hour), counts in self._hist.items():
                row = per_det.setdefault(det, [0] * len(edges))
                for bucket, n in counts.items():
                    row[bucket] += n
        return [ScoreHistogram(detector=d, edges=edges, counts=c) for d, c in sorted(per_det.items())]

    def instances(self) -> list[InstanceHealth]:
        details = health_details(self._health_provider)
        hb = Heartbeat(
            instance=self.config.instance,
            model=self.model,
            time=datetime.now(UTC),
            started_at=self._started_at,
            details=details,
        )
        return [InstanceHealth(**hb.model_dump(), age_s=0.0)]

    def store_health(self) -> StoreHealth:
        with self._lock:
            return StoreHealth(backend="memory", stale=False, writes_total=self._writes)

    def summary(self, minutes: int = 60, recent: int = 50) -> DashboardSummary:
        now = datetime.now(UTC)
        return DashboardSummary(
            model=self.model,
            generated_at=now,
            stale=False,
            data_as_of=now,
            rates=self.rates(minutes),
            recent=self.recent_alerts(recent),
            thresholds=self.thresholds(),
            histograms=self.histograms(),
            instances=self.instances(),
            store=self.store_health(),
        )
