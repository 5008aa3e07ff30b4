"""Fault injection against real processes; the figures printed at the end go in docs/reliability.md.

- broker SIGKILLed and restarted while a publisher streams alerts: all arrive, dedupable, in request order;
- publisher SIGKILLed with alerts pending: a restart delivers them;
- Redis killed: alerts keep flowing to Kafka, the store reports stale, writes resume after;
- poison messages on the topic: subscribers skip and count them, and do not see them again.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alerts_testkit import HERE, TopicCollector, make_alert, read_topic, run_python, wait_until

from alerts import SubscriberStats, subscribe
from alerts.config import KafkaConnection, PublisherConfig, RedisConnection, StoreConfig
from alerts.dashboard.redis_store import DashboardStore
from alerts.delivery import AlertPipeline
from alerts.kafka_publisher import KafkaAlertPublisher
from alerts.outbox import AlertOutbox

pytestmark = [pytest.mark.reliability, pytest.mark.kafka]


class Publisher:
    """tests/alerts/publisher_proc.py as a subprocess, with its stdout followed in a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = run_python(
            [str(HERE / "publisher_proc.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.emitted = -1
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            self.lines.append(line)
            if line.startswith("emitted "):
                self.emitted = int(line.split()[1])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> dict[str, int]:
        self.proc.wait(timeout_s)
        self._thread.join(5)
        assert self.proc.returncode == 0, self.proc.stderr.read()
        last = self.lines[-1]
        assert last.startswith("drained "), self.lines[-3:]
        return {k: int(v) for k, v in (kv.split("=") for kv in last.split()[1:])}


def _check_delivery(records: list[Any], expected: set[int], requests: int) -> dict[str, int]:
    """Every expected alert index arrived; one event id per index; per-request first arrivals in order."""
    first_seen: dict[int, str] = {}
    duplicates = 0
    per_request: dict[str, list[int]] = defaultdict(list)
    for rec in records:
        value = json.loads(rec.value)
        i = value["token_span"]["start"]
        if i in first_seen:
            assert first_seen[i] == value["event_id"], "a redelivery must carry the same event_id"
            duplicates += 1
            continue
        first_seen[i] = value["event_id"]
        per_request[value["request_id"]].append(i)
    assert set(first_seen) == expected, f"missing: {sorted(expected - set(first_seen))[:20]}"
    assert len(set(first_seen.values())) == len(first_seen)
    for rid, order in per_request.items():
        assert order == sorted(order), f"{rid}: alerts arrived out of order: {order[:20]}"
    assert len(per_request) == min(requests, len(expected))
    return {"distinct": len(first_seen), "duplicates": duplicates}


def _outbox_rows(path: Path) -> tuple[set[int], int]:
    """Alert indices stored in an outbox file (read-only) and how many are pending."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT payload, state FROM outbox").fetchall()
    finally:
        db.close()
    return {json.loads(p)["token_span"]["start"] for p, _ in rows}, sum(s == "pending" for _, s in rows)


def test_broker_killed_and_restarted_mid_stream(private_broker, tmp_path, record_figures):
    n, requests, topic = 3000, 100, "alerts.outage"
    private_broker.create_topic(topic, partitions=3)
    first = TopicCollector(private_broker.bootstrap, topic)
    pub = Publisher(
        "--outbox",
        str(tmp_path / "outbox.sqlite3"),
        "--bootstrap",
        private_broker.bootstrap,
        "--topic",
        topic,
        "--count",
        str(n),
        "--requests",
        str(requests),
        "--rate",
        "600",
    )
    try:
        wait_until(lambda: pub.emitted >= 1000, 30, what="1000 alerts emitted")
        # Freeze the publisher mid-stream (sends in flight) and let the consumer read everything the
        # broker has: Tansu keeps data in memory, so what it acknowledged dies with it otherwise.
        pub.signal(signal.SIGSTOP)
        wait_until(first.caught_up, 20, what="consumer caught up with the broker")
        before = first.close()
        private_broker.kill()
        killed_at = pub.emitted
        pub.signal(signal.SIGCONT)  # publishing goes on against a dead broker
        outage_start = time.monotonic()
        time.sleep(2.0)
        pub.signal(signal.SIGSTOP)
        emitted_during_outage = pub.emitted - killed_at
        private_broker.start()  # same port, empty
        private_broker.create_topic(topic, partitions=3)
        outage_s = time.monotonic() - outage_start
        second = TopicCollector(private_broker.bootstrap, topic)
        restarted = time.monotonic()
        pub.signal(signal.SIGCONT)
        stats = pub.wait(120)
        drain_s = time.monotonic() - restarted
        wait_until(lambda: second.caught_up() and len(before) + second.count() >= n, 30, what="all consumed")
        after = second.close()
    finally:
        if pub.proc.poll() is None:
            pub.signal(signal.SIGCONT)
            pub.proc.kill()
    assert stats["pending"] == 0
    assert emitted_during_outage > 100, "the outage must overlap the stream"
    assert len(before) >= 900 and len(after) > 0
    result = _check_delivery(before + after, set(range(n)), requests)
    record_figures(
        alerts=n,
        requests=requests,
        delivered_before_kill=len(before),
        outage_s=round(outage_s, 2),
        emitted_during_outage=emitted_during_outage,
        duplicates=result["duplicates"],
        failed_attempts=stats["failed"],
        producer_restarts=stats["restarts"],
        drain_after_restart_s=round(drain_s, 2),
        lost=0,
    )


def test_publisher_sigkilled_with_pending_alerts(kafka_broker, tmp_path, record_figures):
    n, requests, topic = 2000, 40, f"alerts.crash.{time.monotonic_ns()}"
    kafka_broker.create_topic(topic, partitions=3)
    outbox = tmp_path / "outbox.sqlite3"
    common = [
        "--outbox",
        str(outbox),
        "--bootstrap",
        kafka_broker.bootstrap,
        "--topic",
        topic,
        "--requests",
        str(requests),
    ]
    # Bursts of 100 alerts per transaction: the kill lands while a burst is still being sent.
    pub = Publisher(*common, "--count", str(n), "--batch", "100", "--rate", "2000")
    wait_until(lambda: pub.emitted >= n // 2, 60, interval_s=0.001, what="half the alerts emitted")
    pub.signal(signal.SIGKILL)
    pub.proc.wait(10)
    printed = pub.emitted
    stored, pending = _outbox_rows(outbox)
    assert set(range(printed + 1)) <= stored, "every alert whose emit() returned must be in the outbox"
    assert pending > 0, "the kill must leave alerts pending"

    restarted = time.monotonic()
    stats = Publisher(*common, "--count", "0").wait(60)
    drain_s = time.monotonic() - restarted
    assert stats["pending"] == 0 and stats["published"] >= pending
    records = read_topic(kafka_broker.bootstrap, topic, expect=len(stored))
    result = _check_delivery(records, stored, requests)
    record_figures(
        emitted_before_kill=len(stored),
        pending_at_kill=pending,
        delivered_by_restart=stats["published"],
        duplicates=result["duplicates"],
        restart_to_drained_s=round(drain_s, 2),
        lost=0,
    )


@pytest.mark.redis
def test_redis_outage_does_not_stop_alerts(kafka_broker, redis_server, tmp_path, record_figures):
    n, topic = 600, f"alerts.redis-outage.{time.monotonic_ns()}"
    outbox = AlertOutbox(tmp_path / "outbox.sqlite3")
    publisher = KafkaAlertPublisher(
        outbox, KafkaConnection(bootstrap_servers=kafka_broker.bootstrap), PublisherConfig(topic=topic)
    )
    store = DashboardStore(
        StoreConfig(
            model="m", instance="s-1", retry_initial_s=0.05, retry_max_s=0.3, heartbeat_interval_s=0.5
        ),
        RedisConnection(url=redis_server.url, socket_timeout_s=0.3, socket_connect_timeout_s=0.3),
    )
    pipeline = AlertPipeline(outbox=outbox, publisher=publisher, store=store).start()
    alerts = [make_alert(i, request_id=f"r{i % 20}") for i in range(n)]
    latency = {"before": [], "outage": [], "after": []}
    stale_seen = []
    try:
        phase = "before"
        for i, alert in enumerate(alerts):
            if i == 200:
                redis_server.kill()
                phase = "outage"
            if i == 400:
                stale_seen.append(store.is_stale)
                redis_server.start()
                phase = "after"
            t0 = time.perf_counter()
            assert pipeline.emit(alert).durable
            latency[phase].append(time.perf_counter() - t0)
            time.sleep(0.003)
        assert pipeline.flush(30)
        summary = store.summary(recent=1000)
        health = store.store_health()
    finally:
        pipeline.close(5)
    records = read_topic(kafka_broker.bootstrap, topic, expect=n)
    assert {json.loads(r.value)["event_id"] for r in records} == {a.event_id for a in alerts}
    assert stale_seen == [True]
    assert not summary.stale and health.write_failures_total > 0 and health.dropped_total == 0
    # Redis came back empty; everything emitted from the kill onwards was written once it returned.
    in_store = {a.event_id for a in summary.recent}
    assert {a.event_id for a in alerts[200:]} <= in_store
    assert sum(sum(s.total) for s in summary.rates.series) >= 400

    def p99(xs: list[float]) -> float:
        return sorted(xs)[int(0.99 * (len(xs) - 1))] * 1000

    record_figures(
        alerts=n,
        kafka_delivered=len({json.loads(r.value)["event_id"] for r in records}),
        emit_p99_ms_before=round(p99(latency["before"]), 2),
        emit_p99_ms_during_outage=round(p99(latency["outage"]), 2),
        emit_max_ms_during_outage=round(max(latency["outage"]) * 1000, 2),
        store_write_failures=health.write_failures_total,
        store_writes_dropped=health.dropped_total,
    )


def test_poison_messages_are_skipped_and_counted(kafka_broker, topic, record_figures):
    from kafka import KafkaProducer

    kafka_broker.create_topic(topic, partitions=1)
    good = [make_alert(i) for i in range(4)]
    wrong_schema = dict(json.loads(good[0].to_json()), schema="safety-monitor.alert/v2")
    missing_field = {k: v for k, v in json.loads(good[1].to_json()).items() if k != "severity"}
    poison = [
        b"\x00\xff\xfe binary",
        b"{not json",
        b"[1, 2, 3]",
        json.dumps(wrong_schema).encode(),
        json.dumps(missing_field).encode(),
        b"",
        json.dumps({"schema": "safety-monitor.alert/v1"}).encode(),
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    for value in [
        poison[0],
        good[0].to_json(),
        *poison[1:4],
        good[1].to_json(),
        *poison[4:],
        good[2].to_json(),
        good[3].to_json(),
    ]:
        producer.send(topic, key=b"k", value=value)
    producer.send(topic, key=b"k", value=None)  # a tombstone
    producer.flush(10)
    producer.close()

    group = f"g-{topic}"
    stats = SubscriberStats()
    got = list(
        subscribe(
            kafka_broker.bootstrap,
            group,
            topic=topic,
            stats=stats,
            idle_timeout_s=1.5,
            max_poll_interval_ms=2000,
        )
    )
    assert [a.event_id for a in got] == [a.event_id for a in good]
    assert stats.malformed == len(poison) + 1
    assert stats.malformed_by_reason == {"not_json": 2, "unsupported_schema": 2, "invalid": 2, "empty": 2}
    # Offsets moved past the poison: the group does not trip over it again.
    again = SubscriberStats()
    assert (
        list(
            subscribe(
                kafka_broker.bootstrap,
                group,
                topic=topic,
                stats=again,
                idle_timeout_s=1.5,
                max_poll_interval_ms=2000,
            )
        )
        == []
    )
    assert again.received == 0
    record_figures(
        messages=stats.received, poison=stats.malformed, alerts_yielded=len(got), redelivered_after=0
    )


# ------------------------------------------------------------------------------ outbox disk full
class _PageLimit:
    """SQLite's own limit: the outbox's connection may not grow the database past its current pages."""

    name = "page_limit"

    def __init__(self, outbox: AlertOutbox, directory: Path) -> None:
        self.outbox = outbox

    def fill(self) -> None:
        with self.outbox._lock:  # a setting of the outbox's own connection
            pages = self.outbox._db.execute("PRAGMA page_count").fetchone()[0]
            self.outbox._db.execute(f"PRAGMA max_page_count = {pages}")

    def free(self) -> None:
        with self.outbox._lock:
            self.outbox._db.execute("PRAGMA max_page_count = 1073741823")


class _FullFilesystem:
    """A real full file system: the outbox lives on a small tmpfs, which a filler file fills up (ENOSPC for
    the WAL and the database alike, so delivery marks fail too); deleting the filler frees it."""

    name = "tmpfs"

    def __init__(self, outbox: AlertOutbox, directory: Path) -> None:
        self.filler = directory / "filler"

    def fill(self) -> None:
        import errno
        import os

        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT)
        try:
            for chunk in (1 << 16, 512, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()


@contextmanager
def _outbox_dir(tmp_path: Path, kind: str):
    if kind == "page_limit":
        yield tmp_path
        return
    import os
    import shutil

    where = tmp_path / "tmpfs"
    where.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root; the page_limit variant runs everywhere")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], check=False,
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("kind", ["page_limit", "tmpfs"])
def test_outbox_full_mid_stream_then_recovers(kafka_broker, topic, tmp_path, kind, record_figures):
    """The outbox's disk fills while alerts stream to Kafka, then frees up. Emits that fail raise (those alerts
    were not emitted); nothing committed before or during the fault is lost; every alert emitted after the
    recovery is delivered; the outbox reports its failing writes while they fail."""
    kafka_broker.create_topic(topic, partitions=3)
    with _outbox_dir(tmp_path, kind) as directory:
        outbox = AlertOutbox(directory / "outbox.sqlite3")
        fault = (_PageLimit if kind == "page_limit" else _FullFilesystem)(outbox, directory)
        publisher = KafkaAlertPublisher(outbox, KafkaConnection(bootstrap_servers=kafka_broker.bootstrap),
                                        PublisherConfig(topic=topic, retry_initial_s=0.05, retry_max_s=0.5))
        committed: list[str] = []
        refused: list[str] = []

        with AlertPipeline(outbox=outbox, publisher=publisher) as pipeline:

            def emit(i: int) -> bool:
                alert = make_alert(i, request_id=f"req-{i % 10}")
                try:
                    pipeline.emit(alert)
                except sqlite3.Error as exc:
                    assert "full" in str(exc), exc
                    refused.append(alert.event_id)
                    return False
                committed.append(alert.event_id)
                return True

            for i in range(100):
                assert emit(i)
            fault.fill()
            for i in range(100, 200):
                emit(i)
                time.sleep(0.002)
            during = outbox.stats()
            assert refused, "the full outbox accepted every alert"
            assert during.write_failures_total >= len(refused)
            assert during.last_write_error is not None and "full" in during.last_write_error
            assert pipeline.health()["outbox_write_failures_total"] == during.write_failures_total
            fault.free()
            for i in range(200, 300):
                assert emit(i), f"alert {i} refused after the recovery"
            assert pipeline.flush(60), pipeline.stats()
            after = outbox.stats()
        outbox.close()

    assert after.pending == 0 and after.last_write_error is None
    records = read_topic(kafka_broker.bootstrap, topic, expect=len(committed), timeout_s=60)
    received = [json.loads(r.value)["event_id"] for r in records]
    assert set(received) == set(committed), (
        f"lost: {len(set(committed) - set(received))}, never committed but sent: {len(set(received) - set(committed))}")
    record_figures(fault=kind, committed=len(committed), refused_during_fault=len(refused),
                   write_failures=after.write_failures_total, received=len(received),
                   duplicates=len(received) - len(set(received)), lost=0)
