"""AlertPipeline in its default, server-less form: console, JSONL, in-process dashboard data."""

from __future__ import annotations

import io
import json

from alerts_testkit import make_alert

from alerts.config import AlertsConfig, KafkaConnection, OutboxConfig, StoreConfig
from alerts.dashboard.memory_store import InMemoryDashboardStore
from alerts.dashboard.models import CalibrationSummary, DetectorThreshold
from alerts.delivery import AlertPipeline
from alerts.outbox import AlertOutbox
from alerts.sinks import ConsoleSink, JsonlSink, format_alert


def test_default_pipeline_needs_no_server(tmp_path):
    config = AlertsConfig(model="smollm2-135m", jsonl_path=str(tmp_path / "alerts.jsonl"))
    pipeline = AlertPipeline.from_config(config)
    assert pipeline.outbox is None and pipeline.publisher is None
    assert isinstance(pipeline.store, InMemoryDashboardStore)
    console = io.StringIO()
    pipeline.sinks[0] = ConsoleSink(console)
    with pipeline:
        results = pipeline.emit_many([make_alert(1), make_alert(2, detector="deception", severity="low")])
        pipeline.set_thresholds(
            [
                DetectorThreshold(
                    detector="scam",
                    version="1.0.0",
                    threshold=1.5,
                    calibration=CalibrationSummary(target_fpr=0.01),
                )
            ]
        )
        pipeline.observe_scores("scam", [0.1, 1.4, 1.6, 3.0], threshold=1.5)
        summary = pipeline.store.summary()
    assert [r.durable for r in results] == [False, False]  # no outbox without Kafka
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line)["detector"] for line in lines] == ["scam", "deception"]
    printed = console.getvalue().splitlines()
    assert len(printed) == 2 and "HIGH" in printed[0] and "scam" in printed[0] and "tokens[1:9]" in printed[0]
    assert [a.detector for a in summary.recent] == ["deception", "scam"]  # newest first
    assert {s.detector: sum(s.total) for s in summary.rates.series} == {"scam": 1, "deception": 1}
    assert summary.thresholds[0].calibration.target_fpr == 0.01
    assert sum(summary.histograms[0].counts) == 4
    assert summary.stale is False


def test_from_config_with_kafka_builds_outbox_and_publisher(tmp_path):
    config = AlertsConfig(
        model="m",
        console=False,
        kafka=KafkaConnection(bootstrap_servers="127.0.0.1:1"),
        outbox=OutboxConfig(path=str(tmp_path / "box.sqlite3")),
        store=StoreConfig(model="m", instance="i-1"),
    )
    pipeline = AlertPipeline.from_config(config)
    try:
        result = pipeline.emit(make_alert())  # not started: the alert waits in the outbox
        assert result.durable
        assert pipeline.emit(make_alert()).durable
        assert pipeline.stats().outbox.pending == 2
        assert pipeline.health()["outbox_pending"] == 2
    finally:
        pipeline.close(0.5)
    with AlertOutbox(tmp_path / "box.sqlite3") as box:
        assert box.pending_count() == 2


def test_local_outbox_without_kafka(tmp_path):
    config = AlertsConfig(model="m", console=False, local_outbox=True,
                          outbox=OutboxConfig(path=str(tmp_path / "local.sqlite3")))  # fmt: skip
    with AlertPipeline.from_config(config) as pipeline:
        assert pipeline.publisher is None
        assert pipeline.emit(make_alert()).durable
    with AlertOutbox(tmp_path / "local.sqlite3") as box:
        assert box.pending_count() == 1  # published once a later start configures Kafka


def test_duplicate_emit_is_not_fanned_out_twice(tmp_path):
    outbox = AlertOutbox(tmp_path / "o.sqlite3")
    store = InMemoryDashboardStore(StoreConfig(model="m"))
    pipeline = AlertPipeline(outbox=outbox, store=store, sinks=[JsonlSink(tmp_path / "a.jsonl")])
    alert = make_alert()
    assert pipeline.emit(alert).durable
    assert pipeline.emit(alert).durable
    pipeline.close()
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 1
    assert len(store.recent_alerts()) == 1


def test_a_failing_sink_does_not_stop_alerting(tmp_path):
    class Broken:
        def write(self, alert):
            raise OSError("disk full")

        def close(self):
            pass

    outbox = AlertOutbox(tmp_path / "o.sqlite3")
    pipeline = AlertPipeline(outbox=outbox, sinks=[Broken(), JsonlSink(tmp_path / "a.jsonl")])
    assert pipeline.emit(make_alert()).durable
    assert pipeline.stats().sink_errors_total == 1
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 1
    pipeline.close()


def test_format_alert_shows_latents_and_snippet():
    line = format_alert(make_alert(4, snippet="please wire $5000"))
    assert "#1004(wire-transfer urgency)=4.5" in line
    assert "'please wire $5000'" in line
    assert "score 2.4 >= 1.5" in line


def test_prometheus_metrics(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from alerts.prometheus import AlertMetricsCollector

    outbox = AlertOutbox(OutboxConfig(path=str(tmp_path / "o.sqlite3"), max_rows=2))
    pipeline = AlertPipeline(outbox=outbox, store=InMemoryDashboardStore(StoreConfig(model="m")))
    pipeline.emit_many([make_alert(i, severity="low") for i in range(3)])
    registry = CollectorRegistry()
    registry.register(AlertMetricsCollector(pipeline))
    text = generate_latest(registry).decode()
    pipeline.close()
    assert "safety_monitor_alerts_emitted_total 3.0" in text
    assert "safety_monitor_alerts_outbox_depth 2.0" in text
    assert 'safety_monitor_alerts_dropped_total{severity="low"} 1.0' in text
    assert "safety_monitor_dashboard_store_stale 0.0" in text
    assert "safety_monitor_alerts_outbox_oldest_pending_age_seconds" in text
