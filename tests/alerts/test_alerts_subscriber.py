"""The subscriber SDK against a real broker: filters, dedupe, commit-after-handover."""

from __future__ import annotations

import pytest
from alerts_testkit import make_alert

from alerts import SubscriberStats, subscribe
from alerts.dedupe import DedupeWindow

pytestmark = pytest.mark.kafka

FAST_GROUP = {"max_poll_interval_ms": 2000, "idle_timeout_s": 1.5}


def _produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes] | None = None) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i, value in enumerate(values):
        producer.send(topic, value=value, key=keys[i] if keys else b"k")
    producer.flush(10)
    producer.close(5)


def test_filters_and_dedupe(kafka_broker, topic):
    kafka_broker.create_topic(topic, partitions=2)
    alerts = [
        make_alert(0, detector="scam", severity="high"),
        make_alert(1, detector="scam", severity="low"),
        make_alert(2, detector="deception", severity="critical"),
        make_alert(3, detector="scam", severity="medium", model="other-model"),
        make_alert(4, detector="scam", severity="critical"),
    ]
    values = [a.to_json() for a in alerts] + [alerts[4].to_json(), alerts[0].to_json()]  # two redeliveries
    _produce(kafka_broker.bootstrap, topic, values, keys=[b"same"] * len(values))

    stats = SubscriberStats()
    got = list(
        subscribe(
            kafka_broker.bootstrap,
            f"g-{topic}",
            detectors=["scam"],
            min_severity="medium",
            models=["smollm2-135m"],
            topic=topic,
            stats=stats,
            **FAST_GROUP,
        )
    )
    assert [a.event_id for a in got] == [alerts[0].event_id, alerts[4].event_id]
    assert stats.received == 7
    assert stats.duplicates == 2
    assert stats.filtered == 3  # low severity, other detector, other model
    assert stats.malformed == 0


def test_offset_is_committed_only_after_the_caller_asks_for_more(kafka_broker, topic):
    kafka_broker.create_topic(topic, partitions=1)
    alerts = [make_alert(i) for i in range(5)]
    _produce(kafka_broker.bootstrap, topic, [a.to_json() for a in alerts])
    group = f"g-{topic}"

    gen = subscribe(kafka_broker.bootstrap, group, topic=topic, **FAST_GROUP)
    assert next(gen).event_id == alerts[0].event_id
    assert next(gen).event_id == alerts[1].event_id  # asking for #1 means the caller is done with #0
    gen.close()  # the caller stops while holding #1 (it may have crashed on it): #1 must come again

    again = list(subscribe(kafka_broker.bootstrap, group, topic=topic, **FAST_GROUP))
    assert [a.event_id for a in again] == [a.event_id for a in alerts[1:]]

    # Everything was handed over and the generator ran to its end: nothing is left for the group.
    assert list(subscribe(kafka_broker.bootstrap, group, topic=topic, **FAST_GROUP)) == []


def test_groupless_tail_reads_all_partitions(kafka_broker, topic):
    kafka_broker.create_topic(topic, partitions=3)
    alerts = [make_alert(i, request_id=f"r{i}") for i in range(12)]
    _produce(
        kafka_broker.bootstrap,
        topic,
        [a.to_json() for a in alerts],
        keys=[a.request_id.encode() for a in alerts],
    )
    got = list(subscribe(kafka_broker.bootstrap, None, topic=topic, idle_timeout_s=1.0))
    assert sorted(a.event_id for a in got) == sorted(a.event_id for a in alerts)


def test_dedupe_window_is_bounded():
    window = DedupeWindow(capacity=3)
    assert [window.seen(x) for x in "abca"] == [False, False, False, True]  # "a" is now the most recent
    assert window.seen("d") is False  # evicts the least recently seen: "b"
    assert len(window) == 3
    assert window.seen("a") is True
    assert window.seen("b") is False
