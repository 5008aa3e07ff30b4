"""The sidecar's single entry point for alerts: durable first, then fan-out.

``AlertPipeline.emit(alert)`` commits the alert to the outbox (fsync'd; from then on it
will reach Kafka at least once, even across crashes), wakes the Kafka publisher, queues
the alert for the dashboard store (best effort, never blocks), and writes it to the local
sinks (console, JSONL). Build one with :meth:`AlertPipeline.from_config`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from alerts.config import AlertsConfig
from alerts.dashboard.memory_store import InMemoryDashboardStore
from alerts.dashboard.models import DetectorThreshold, StoreHealth
from alerts.dashboard.redis_store import DashboardStore
from alerts.kafka_publisher import KafkaAlertPublisher, PublisherStats
from alerts.outbox import AlertOutbox, AppendOutcome, OutboxStats
from alerts.schema import Alert
from alerts.sinks import AlertSink, ConsoleSink, JsonlSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmitResult:
    """What happened to one emitted alert."""

    event_id: str
    outcome: AppendOutcome | None
    """Outbox outcome; ``None`` when Kafka (and so the outbox) is off."""

    @property
    def durable(self) -> bool:
        """The alert is in the outbox and will reach Kafka at least once."""
        return self.outcome in (AppendOutcome.STORED, AppendOutcome.DUPLICATE)


@dataclass(frozen=True)
class PipelineStats:
    """Counters of the pipeline and the state of its parts."""

    emitted_total: int
    """Alerts passed to ``emit``."""
    dropped_total: int
    """Alerts the full outbox refused (low/medium only; see the outbox policy)."""
    sink_errors_total: int
    """Failures of local sinks or the store queue (the alert itself is unaffected)."""
    outbox: OutboxStats | None
    publisher: PublisherStats | None
    store: StoreHealth | None


class AlertPipeline:
    """Outbox → Kafka publisher, plus dashboard store and local sinks. Thread-safe ``emit``."""

    def __init__(
        self,
        *,
        outbox: AlertOutbox | None = None,
        publisher: KafkaAlertPublisher | None = None,
        store: DashboardStore | InMemoryDashboardStore | None = None,
        sinks: Sequence[AlertSink] = (),
    ) -> None:
        if publisher is not None and outbox is None:
            outbox = publisher.outbox
        if publisher is not None and publisher.outbox is not outbox:
            raise ValueError("the publisher must drain the pipeline's own outbox")
        self.outbox = outbox
        self.publisher = publisher
        self.store = store
        self.sinks = list(sinks)
        self._lock = threading.Lock()
        self._emitted = 0
        self._dropped = 0
        self._sink_errors = 0
        if store is not None:
            store.set_health_provider(self.health)

    @classmethod
    def from_config(cls, config: AlertsConfig) -> AlertPipeline:
        """Build the parts ``config`` switches on (see :class:`AlertsConfig`); call :meth:`start` next."""
        outbox = publisher = None
        if config.kafka is not None or config.local_outbox:
            outbox = AlertOutbox(config.outbox)
        if config.kafka is not None:
            publisher = KafkaAlertPublisher(outbox, config.kafka, config.publisher)
        store_config = config.store_config()
        store: DashboardStore | InMemoryDashboardStore
        if config.redis is not None:
            store = DashboardStore(store_config, config.redis)
        else:
            store = InMemoryDashboardStore(store_config)
        sinks: list[AlertSink] = []
        if config.console:
            sinks.append(ConsoleSink(as_json=config.console_json))
        if config.jsonl_path:
            sinks.append(JsonlSink(config.jsonl_path))
        return cls(outbox=outbox, publisher=publisher, store=store, sinks=sinks)

    def start(self) -> Self:
        """Start the background publisher and store writer (pending outbox rows go out first)."""
        if self.publisher is not None:
            self.publisher.start()
        if self.store is not None:
            self.store.start()
        return self

    # --- emitting ---------------------------------------------------------------------------

    def emit(self, alert: Alert) -> EmitResult:
        """Emit one alert. Returns once it is durable in the outbox (when Kafka is on).

        Raises ``sqlite3.Error``/``OSError`` if the outbox cannot commit (e.g. disk full):
        then the alert was not emitted.
        """
        return self.emit_many([alert])[0]

    def emit_many(self, alerts: Sequence[Alert]) -> list[EmitResult]:
        """Emit several alerts with one outbox transaction (one fsync)."""
        if not alerts:
            return []
        if self.outbox is not None:
            outcomes: list[AppendOutcome | None] = list(self.outbox.append_many(alerts))
            if self.publisher is not None:
                self.publisher.notify()
        else:
            outcomes = [None] * len(alerts)
        with self._lock:
            self._emitted += len(alerts)
            self._dropped += sum(o is AppendOutcome.DROPPED for o in outcomes)
        for alert, outcome in zip(alerts, outcomes, strict=True):
            if outcome is AppendOutcome.DUPLICATE:
                continue
            self._fan_out(alert)
        return [EmitResult(a.event_id, o) for a, o in zip(alerts, outcomes, strict=True)]

    def _fan_out(self, alert: Alert) -> None:
        errors = 0
        if self.store is not None and not self.store.record_alert(alert):
            errors += 1
        for sink in self.sinks:
            try:
                sink.write(alert)
            except Exception as exc:  # noqa: BLE001 - a local sink must not stop alerting
                errors += 1
                log.warning("alert sink %s failed: %s", type(sink).__name__, exc)
        if errors:
            with self._lock:
                self._sink_errors += errors

    def observe_scores(self, detector: str, scores: Iterable[float], threshold: float) -> None:
        """Feed the dashboard's score histogram of ``detector`` (any scores, not only alerts)."""
        if self.store is not None:
            self.store.observe_scores(detector, scores, threshold)

    def set_thresholds(self, thresholds: Sequence[DetectorThreshold]) -> None:
        """Publish the current detector thresholds and calibration summaries to the dashboard."""
        if self.store is not None:
            self.store.set_thresholds(thresholds)

    # --- state ------------------------------------------------------------------------------

    def stats(self) -> PipelineStats:
        with self._lock:
            emitted, dropped, sink_errors = self._emitted, self._dropped, self._sink_errors
        return PipelineStats(
            emitted_total=emitted,
            dropped_total=dropped,
            sink_errors_total=sink_errors,
            outbox=self.outbox.stats() if self.outbox is not None else None,
            publisher=self.publisher.stats() if self.publisher is not None else None,
            store=self.store.store_health() if self.store is not None else None,
        )

    def health(self) -> dict[str, Any]:
        """Flat gauges for heartbeats and health endpoints."""
        s = self.stats()
        out: dict[str, Any] = {
            "alerts_emitted_total": s.emitted_total,
            "alerts_dropped_total": s.dropped_total,
        }
        if s.outbox is not None:
            out["outbox_pending"] = s.outbox.pending
            out["outbox_oldest_pending_age_s"] = round(s.outbox.oldest_pending_age_s or 0.0, 3)
            out["outbox_write_failures_total"] = s.outbox.write_failures_total
            if s.outbox.last_write_error:
                out["outbox_last_write_error"] = s.outbox.last_write_error
        if s.publisher is not None:
            out["kafka_published_total"] = s.publisher.published_total
            out["kafka_failed_total"] = s.publisher.failed_total
            out["kafka_connected"] = s.publisher.connected
        if s.store is not None:
            out["store_stale"] = s.store.stale
        return out

    def flush(self, timeout_s: float) -> bool:
        """Wait until Kafka acknowledged everything pending and the store queue is empty."""
        ok = True
        if self.publisher is not None:
            ok = self.publisher.flush(timeout_s) and ok
        if self.store is not None:
            ok = self.store.flush(timeout_s) and ok
        return ok

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop background work within about ``timeout_s``; unacknowledged alerts stay pending in the outbox."""
        if self.publisher is not None:
            self.publisher.close(timeout_s)
        if self.store is not None:
            self.store.close(min(2.0, timeout_s))
        if self.outbox is not None:
            self.outbox.close()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # closing must go on for the other sinks
                log.debug("closing sink %s failed", type(sink).__name__, exc_info=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
