"""Outbox → Kafka against a real broker: keys, headers, order, per-detector topics, late broker."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from alerts_testkit import TansuBroker, free_port, headers_of, make_alert, read_topic, wait_until

from alerts.config import KafkaConnection, PublisherConfig
from alerts.delivery import AlertPipeline
from alerts.kafka_publisher import KafkaAlertPublisher, producer_settings
from alerts.outbox import AlertOutbox
from alerts.schema import SCHEMA_ID, Alert

pytestmark = pytest.mark.kafka


def _pipeline(tmp_path, bootstrap: str, **publisher: object) -> AlertPipeline:
    outbox = AlertOutbox(tmp_path / "outbox.sqlite3")
    config = PublisherConfig(retry_initial_s=0.05, retry_max_s=0.5, **publisher)
    pub = KafkaAlertPublisher(outbox, KafkaConnection(bootstrap_servers=bootstrap), config)
    return AlertPipeline(outbox=outbox, publisher=pub)


def test_producer_settings_ask_for_durability():
    kw = producer_settings(KafkaConnection(bootstrap_servers="h1:9092,h2:9092"), PublisherConfig())
    assert kw["acks"] == "all"
    assert kw["enable_idempotence"] is True  # the installed kafka-python supports it
    assert kw["compression_type"] == "gzip"
    assert kw["linger_ms"] <= 5
    assert kw["bootstrap_servers"] == ["h1:9092", "h2:9092"]
    with pytest.raises(ValueError, match="not available"):
        producer_settings(KafkaConnection(), PublisherConfig(compression_type="nonexistent"))


def test_sasl_ssl_settings_pass_through():
    conn = KafkaConnection(
        bootstrap_servers="b:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="monitor",
        sasl_plain_password="s3cret",
        ssl_cafile="/ca.pem",
        extra={"connections_max_idle_ms": 1234},
    )
    kw = producer_settings(conn, PublisherConfig())
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("monitor", "s3cret")
    assert kw["ssl_cafile"] == "/ca.pem" and kw["ssl_check_hostname"] is True
    assert kw["connections_max_idle_ms"] == 1234
    assert "s3cret" not in repr(conn)


def test_alerts_arrive_with_key_headers_and_request_order(tmp_path, kafka_broker, topic):
    kafka_broker.create_topic(topic, partitions=3)
    alerts = [
        make_alert(i, request_id=f"req-{i % 7}", detector=("scam", "deception")[i % 2]) for i in range(120)
    ]
    with _pipeline(tmp_path, kafka_broker.bootstrap, topic=topic) as pipeline:
        results = [pipeline.emit(a) for a in alerts]
        assert all(r.durable for r in results)
        assert pipeline.flush(30)
        stats = pipeline.stats()
    assert stats.publisher.published_total == 120
    assert stats.outbox.pending == 0

    records = read_topic(kafka_broker.bootstrap, topic, expect=120)
    assert len(records) == 120
    by_id = {a.event_id: a for a in alerts}
    per_request: dict[str, list[str]] = defaultdict(list)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    for rec in records:
        alert = Alert.from_json(rec.value)
        assert alert == by_id[alert.event_id]
        assert rec.key.decode() == alert.request_id
        assert headers_of(rec) == {
            "event_id": alert.event_id,
            "detector": alert.detector,
            "severity": alert.severity.value,
            "schema": SCHEMA_ID,
        }
        per_request[alert.request_id].append(alert.event_id)
        partitions_of[alert.request_id].add(rec.partition)
    assert all(len(p) == 1 for p in partitions_of.values()), "one request must map to one partition"
    assert len({p for ps in partitions_of.values() for p in ps}) > 1, "keys should spread over partitions"
    for rid, ids in per_request.items():
        assert ids == [a.event_id for a in alerts if a.request_id == rid], f"order broken for {rid}"


def test_per_detector_topics(tmp_path, kafka_broker, topic):
    alerts = [make_alert(i, detector=d) for i, d in enumerate(["scam", "power-seeking", "scam"])]
    with _pipeline(tmp_path, kafka_broker.bootstrap, topic=topic, per_detector_topics=True) as pipeline:
        pipeline.emit_many(alerts)
        assert pipeline.flush(30)
    scam = read_topic(kafka_broker.bootstrap, f"{topic}.scam", expect=2)
    power = read_topic(kafka_broker.bootstrap, f"{topic}.power-seeking", expect=1)
    assert [json.loads(r.value)["event_id"] for r in scam] == [alerts[0].event_id, alerts[2].event_id]
    assert [json.loads(r.value)["event_id"] for r in power] == [alerts[1].event_id]


def test_broker_absent_at_start_then_pending_rows_go_first_in_order(tmp_path):
    """Emitting works with no broker at all; when one appears the backlog is delivered in order."""
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic = "late-broker"
    early = [make_alert(i, request_id=f"r{i % 3}") for i in range(30)]
    pipeline = _pipeline(tmp_path, bootstrap, topic=topic).start()
    try:
        assert all(r.durable for r in pipeline.emit_many(early))
        assert not pipeline.flush(1.0)
        assert pipeline.stats().outbox.pending == 30

        broker = TansuBroker(tmp_path)
        broker.port = port
        broker.start()
        try:
            late = [make_alert(100 + i, request_id=f"r{i % 3}") for i in range(9)]
            pipeline.emit_many(late)
            wait_until(lambda: pipeline.stats().outbox.pending == 0, 60, what="backlog delivered")
            records = read_topic(bootstrap, topic, expect=39)
        finally:
            broker.kill()
    finally:
        pipeline.close(2)
    seen = [json.loads(r.value) for r in records]
    assert {s["event_id"] for s in seen} == {a.event_id for a in early + late}
    for rid in ("r0", "r1", "r2"):
        got = [s["event_id"] for s in seen if s["request_id"] == rid]
        assert got == [a.event_id for a in early + late if a.request_id == rid]


def test_close_is_bounded_when_the_broker_is_gone(tmp_path):
    import time

    pipeline = _pipeline(tmp_path, f"127.0.0.1:{free_port()}", topic="nowhere").start()
    pipeline.emit(make_alert())
    t0 = time.monotonic()
    pipeline.close(timeout_s=1.5)
    assert time.monotonic() - t0 < 8
    with AlertOutbox(tmp_path / "outbox.sqlite3") as box:
        assert box.pending_count() == 1  # left for the next start


class _ScriptedProducer:
    """Pure-logic stand-in for KafkaProducer: answers each send at once, failing the first
    attempt of chosen event ids. Records every send in order."""

    def __init__(self, fail_once: set[str]) -> None:
        self.fail_once = set(fail_once)
        self.sends: list[tuple[str, str, bool]] = []  # (request id, event id, acknowledged)

    def send(self, topic, key, value, headers):
        event_id = dict(headers)["event_id"].decode()
        ok = event_id not in self.fail_once
        self.fail_once.discard(event_id)
        self.sends.append((key.decode(), event_id, ok))
        return _Done(None if ok else RuntimeError("NotLeaderForPartition (scripted)"))

    def flush(self, timeout=None):
        pass

    def close(self, timeout=None):
        pass


class _Done:
    def __init__(self, exc):
        self.exc = exc

    def add_callback(self, fn):
        if self.exc is None:
            fn(None)
        return self

    def add_errback(self, fn):
        if self.exc is not None:
            fn(self.exc)
        return self


def test_a_failed_alert_holds_back_later_alerts_of_its_request(tmp_path):
    """Unit test of the ordering rule: after a1 fails, a2/a3 are not sent until a1 is acknowledged,
    while other requests keep flowing."""
    alerts = [make_alert(i, request_id=r) for i, r in enumerate(["a", "a", "b", "a", "b"])]
    producer = _ScriptedProducer(fail_once={alerts[0].event_id})
    outbox = AlertOutbox(tmp_path / "o.sqlite3")
    publisher = KafkaAlertPublisher(
        outbox,
        KafkaConnection(),
        PublisherConfig(retry_initial_s=0.2, retry_max_s=0.2),
        producer_factory=lambda settings: producer,
    )
    with AlertPipeline(outbox=outbox, publisher=publisher) as pipeline:
        pipeline.emit_many(alerts)
        assert pipeline.flush(10)
    acked = [(rid, eid) for rid, eid, ok in producer.sends if ok]
    for rid in ("a", "b"):
        assert [e for r, e in acked if r == rid] == [a.event_id for a in alerts if a.request_id == rid]
    # Nothing of request "a" was even attempted between a1's failure and its retry.
    first_fail = producer.sends.index(("a", alerts[0].event_id, False))
    retry = producer.sends.index(("a", alerts[0].event_id, True))
    assert all(r != "a" for r, _, _ in producer.sends[first_fail + 1 : retry])
    assert any(r == "b" for r, _, _ in producer.sends[first_fail + 1 : retry]), (
        "request b must not wait for a"
    )
    assert publisher.stats().failed_total == 1


def test_steady_state_emit_to_ack_latency(tmp_path, kafka_broker, topic, record_figures):
    """Figure for docs/reliability.md: time from emit() to the broker's acknowledgement."""
    import sqlite3
    import time

    kafka_broker.create_topic(topic, partitions=3)
    with _pipeline(tmp_path, kafka_broker.bootstrap, topic=topic) as pipeline:
        for i in range(500):
            pipeline.emit(make_alert(i, request_id=f"r{i % 25}"))
            time.sleep(0.002)
        assert pipeline.flush(30)
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    lat = sorted(d - c for c, d in db.execute("SELECT created_at, delivered_at FROM outbox"))
    db.close()
    assert len(lat) == 500 and all(x >= 0 for x in lat)
    p50, p99 = lat[len(lat) // 2] * 1000, lat[int(0.99 * (len(lat) - 1))] * 1000
    assert p99 < 1000, f"emit-to-ack p99 {p99:.1f} ms on a local broker"
    record_figures(
        alerts=500,
        rate_per_s=round(500 / (500 * 0.0025)),
        emit_to_ack_p50_ms=round(p50, 2),
        emit_to_ack_p99_ms=round(p99, 2),
    )


class _SilentProducer(_ScriptedProducer):
    """Accepts every send and never answers: a wedged KafkaProducer (no callback, no errback)."""

    def send(self, topic, key, value, headers):
        self.sends.append((key.decode(), dict(headers)["event_id"].decode(), False))
        return _Never()


class _Never:
    def add_callback(self, fn):
        return self

    def add_errback(self, fn):
        return self


def test_a_producer_that_never_answers_is_replaced(tmp_path):
    """Unit test: a send outstanding past the delivery and request timeouts means the producer is
    wedged (seen after a broker restart); it is recreated and the alert delivered by the new one."""
    import time

    producers = [_SilentProducer(set()), _ScriptedProducer(set())]
    made = []

    def factory(settings):
        made.append(producers[min(len(made), 1)])
        return made[-1]

    outbox = AlertOutbox(tmp_path / "o.sqlite3")
    publisher = KafkaAlertPublisher(
        outbox,
        KafkaConnection(),
        PublisherConfig(retry_initial_s=0.05, retry_max_s=0.1, delivery_timeout_ms=300, request_timeout_ms=200,
                        poll_interval_s=0.05),
        producer_factory=factory,
    )
    alert = make_alert(0)
    with AlertPipeline(outbox=outbox, publisher=publisher) as pipeline:
        t0 = time.monotonic()
        pipeline.emit(alert)
        assert pipeline.flush(10)
        waited = time.monotonic() - t0
    assert producers[0].sends == [(alert.request_id, alert.event_id, False)]
    assert producers[1].sends == [(alert.request_id, alert.event_id, True)]
    assert publisher.stats().producer_restarts_total == 1
    assert 1.5 <= waited < 8, f"replaced after {waited:.2f} s; the stuck limit is 0.5 s + 1 s"
