"""The sidecar while its alert outbox cannot write (the database is full), against a real uvicorn server,
the real SQLite outbox file and a real Kafka broker (Tansu): scoring goes on, /readyz and /metrics say the
outbox is failing, and once it can write again every alert raised, before, during and after, reaches Kafka."""

from __future__ import annotations

import json

import httpx
import pytest
from sidecar_testkit import (
    INGEST_AUTH,
    SAFETENSORS,
    ServerProcess,
    live_server,
    make_batch,
    make_settings,
    wait_until,
)

from monitor.service.app import create_app
from monitor.service.sidecar import Sidecar

pytestmark = pytest.mark.kafka
TOPIC = "sidecar-test.outbox-faults"
POST = {**INGEST_AUTH, **SAFETENSORS}


@pytest.fixture()
def broker(tmp_path):
    broker = ServerProcess.tansu(tmp_path)
    try:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{broker.port}")
        admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
        admin.close()
        yield f"127.0.0.1:{broker.port}"
    finally:
        broker.kill()


def metric(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith((name + " ", name + "{")))
    return float(line.split()[-1])


def request_ids_in_kafka(bootstrap: str) -> list[str]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out: list[str] = []
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=200).values():
                out += [json.loads(r.value)["request_id"] for r in records]
        return out
    finally:
        consumer.close()


def set_page_limit(sidecar: Sidecar, pages: int | None) -> None:
    """Make the outbox database full (no page beyond the ones it has), or lift the limit (``None``)."""
    outbox = sidecar.alert_pipeline.outbox
    with outbox._lock:  # the limit is a setting of the outbox's own SQLite connection
        if pages is None:
            pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]
        outbox._db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_outbox_fails_readiness_not_scoring_and_loses_no_alert(tmp_path, sae_dir, detector_dir, broker):
    settings = make_settings(tmp_path, sae_dir, detector_dir, kafka={"bootstrap_servers": broker},
                             alerts={"publisher": {"topic": TOPIC, "linger_ms": 0}})
    sidecar = Sidecar.load(settings)
    with live_server(create_app(sidecar)) as url, httpx.Client(base_url=url, timeout=10) as http:

        def raise_alerts(ids: list[str]) -> None:
            # One hot request each: the scam detector alerts once per request.
            r = http.post("/v1/activations", headers=POST,
                          content=make_batch([(rid, 4, True) for rid in ids], hot=3.0).to_bytes())
            assert r.status_code == 202, r.text

        before = [f"before-{i}" for i in range(5)]
        raise_alerts(before)
        wait_until(lambda: sorted(request_ids_in_kafka(broker)) == before, timeout_s=20, what="alerts in Kafka")

        set_page_limit(sidecar, None)
        during = [f"during-{i}" for i in range(40)]
        for i in range(0, 40, 4):
            raise_alerts(during[i:i + 4])
        ready = wait_until(lambda: (r := http.get("/readyz")).status_code == 503 and r.json(), timeout_s=20,
                           what="/readyz to report the outbox")
        assert ready["checks"]["outbox"]["ok"] is False
        assert "database or disk is full" in ready["checks"]["outbox"]["detail"]
        assert all(c["ok"] for name, c in ready["checks"].items() if name != "outbox")
        text = http.get("/metrics").text
        assert metric(text, "safety_monitor_alert_commits_failing") == 1.0
        assert metric(text, "safety_monitor_alert_emit_failures_total") >= 1
        assert metric(text, "safety_monitor_alerts_outbox_write_failures_total") >= 1
        assert metric(text, "safety_monitor_alerts_outbox_write_failing") == 1.0
        assert http.get("/healthz").status_code == 200
        # Scoring goes on: new batches are accepted and scored while the alerts wait for their commit.
        scored = metric(text, 'safety_monitor_requests_finished_total{reason="final"}')
        raise_alerts(["during-late"])
        wait_until(lambda: metric(http.get("/metrics").text, 'safety_monitor_requests_finished_total{reason="final"}')
                   > scored, timeout_s=10, what="the late request to be scored")
        assert metric(http.get("/metrics").text, "safety_monitor_alert_queue_depth") > 0

        set_page_limit(sidecar, 1073741823)
        wait_until(lambda: http.get("/readyz").status_code == 200, timeout_s=20, what="readiness after recovery")
        after = [f"after-{i}" for i in range(5)]
        raise_alerts(after)
        expected = sorted(before + during + ["during-late"] + after)
        wait_until(lambda: sorted(set(request_ids_in_kafka(broker))) == expected, timeout_s=30,
                   what="every alert in Kafka")
        text = http.get("/metrics").text
        assert metric(text, "safety_monitor_alert_commits_failing") == 0.0
        assert metric(text, "safety_monitor_alerts_outbox_write_failing") == 0.0
        assert metric(text, 'safety_monitor_detector_alerts_total{detector="scam",severity="high"}') == len(expected)
