"""Prometheus metrics of the alert path, read from an :class:`AlertPipeline` at scrape time.

Register once in the sidecar's registry::

    registry.register(AlertMetricsCollector(pipeline))

Nothing is kept in module globals, and the labels are low-cardinality (severity only).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from alerts.delivery import AlertPipeline


class AlertMetricsCollector(Collector):
    """Outbox depth and age, Kafka published/failed, drops, dashboard-store health."""

    def __init__(self, pipeline: AlertPipeline, prefix: str = "safety_monitor") -> None:
        self.pipeline = pipeline
        self.prefix = prefix

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        p = self.prefix
        s = self.pipeline.stats()
        yield CounterMetricFamily(f"{p}_alerts_emitted", "Alerts passed to emit().", value=s.emitted_total)
        yield CounterMetricFamily(
            f"{p}_alert_sink_errors", "Local sink or store-queue failures.", value=s.sink_errors_total
        )
        if s.outbox is not None:
            yield GaugeMetricFamily(
                f"{p}_alerts_outbox_depth",
                "Alerts waiting in the outbox for a Kafka ack.",
                value=s.outbox.pending,
            )
            yield GaugeMetricFamily(
                f"{p}_alerts_outbox_oldest_pending_age_seconds",
                "Age of the oldest pending alert (0 when none).",
                value=s.outbox.oldest_pending_age_s or 0.0,
            )
            yield GaugeMetricFamily(
                f"{p}_alerts_outbox_bytes", "Payload bytes held by the outbox.", value=s.outbox.bytes
            )
            yield CounterMetricFamily(
                f"{p}_alerts_outbox_write_failures",
                "Outbox write transactions that failed and were rolled back (disk full, I/O error).",
                value=s.outbox.write_failures_total,
            )
            yield GaugeMetricFamily(
                f"{p}_alerts_outbox_write_failing",
                "1 while the outbox's last write failed (0 once a write succeeds again).",
                value=1.0 if s.outbox.last_write_error else 0.0,
            )
            dropped = CounterMetricFamily(
                f"{p}_alerts_dropped", "Alerts refused or evicted by the full outbox.", labels=["severity"]
            )
            for severity, n in s.outbox.dropped_total.items():
                dropped.add_metric([severity], n)
            yield dropped
        if s.publisher is not None:
            yield CounterMetricFamily(
                f"{p}_alerts_published", "Alerts acknowledged by Kafka.", value=s.publisher.published_total
            )
            yield CounterMetricFamily(
                f"{p}_alerts_publish_failures",
                "Failed send attempts (retried).",
                value=s.publisher.failed_total,
            )
            yield GaugeMetricFamily(
                f"{p}_alerts_in_flight", "Alerts sent, not yet acknowledged.", value=s.publisher.in_flight
            )
        if s.store is not None:
            yield GaugeMetricFamily(
                f"{p}_dashboard_store_stale",
                "1 when the dashboard store is stale.",
                value=1.0 if s.store.stale else 0.0,
            )
            yield CounterMetricFamily(
                f"{p}_dashboard_store_write_failures",
                "Failed Redis write batches.",
                value=s.store.write_failures_total,
            )
            yield CounterMetricFamily(
                f"{p}_dashboard_store_dropped",
                "Store writes dropped on a full queue.",
                value=s.store.dropped_total,
            )
