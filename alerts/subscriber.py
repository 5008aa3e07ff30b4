"""The consumer SDK: ``alerts.subscribe(...)`` yields validated, deduplicated alerts.

Delivery contract: the offset of a message is committed only after the caller has had the
alert and asked for the next one (or the message was filtered out or malformed). If the
process dies in between, the alert is delivered again, so the stream is at-least-once;
:class:`DedupeWindow` drops repeats of recently seen ``event_id`` values. Malformed
messages (not JSON, not a v1 alert) are counted in :class:`SubscriberStats` and skipped;
they never stop the consumer.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from alerts.config import DEFAULT_TOPIC, KafkaConnection
from alerts.dedupe import DedupeWindow
from alerts.schema import SCHEMA_ID, Alert, Severity

log = logging.getLogger(__name__)


@dataclass
class SubscriberStats:
    """Counters of one subscription; pass your own instance to read them while iterating."""

    received: int = 0
    """Messages read from Kafka."""
    yielded: int = 0
    """Alerts handed to the caller."""
    duplicates: int = 0
    """Alerts skipped because their event id was seen recently."""
    filtered: int = 0
    """Valid alerts not matching the detector/severity/model filters."""
    malformed: int = 0
    """Messages that were not a valid v1 alert (skipped)."""
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    """``empty``, ``not_json``, ``unsupported_schema`` or ``invalid`` -> count."""
    commits: int = 0
    """Successful offset commits."""
    commit_failures: int = 0
    """Failed offset commits (those messages may be delivered again)."""

    def _malformed(self, reason: str) -> None:
        self.malformed += 1
        self.malformed_by_reason[reason] = self.malformed_by_reason.get(reason, 0) + 1


@dataclass(frozen=True)
class AlertFilter:
    """Which alerts a subscriber wants; ``None`` means any."""

    detectors: frozenset[str] | None = None
    min_severity: Severity | None = None
    models: frozenset[str] | None = None

    @classmethod
    def of(
        cls,
        detectors: Iterable[str] | None = None,
        min_severity: str | Severity | None = None,
        models: Iterable[str] | None = None,
    ) -> AlertFilter:
        return cls(
            detectors=frozenset(detectors) if detectors else None,
            min_severity=Severity.parse(min_severity) if min_severity else None,
            models=frozenset(models) if models else None,
        )

    def matches(self, alert: Alert) -> bool:
        if self.detectors is not None and alert.detector not in self.detectors:
            return False
        if self.min_severity is not None and alert.severity.rank < self.min_severity.rank:
            return False
        return self.models is None or alert.model in self.models


def parse_alert(value: bytes | None, stats: SubscriberStats) -> Alert | None:
    """The alert in a message value, or ``None`` (counted in ``stats``) when it is malformed."""
    if not value:
        stats._malformed("empty")
        return None
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        stats._malformed("not_json")
        return None
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA_ID:
        stats._malformed("unsupported_schema")
        return None
    try:
        return Alert.model_validate(obj)
    except ValidationError:
        stats._malformed("invalid")
        return None


def _offset(offset: int) -> Any:
    from kafka.structs import OffsetAndMetadata

    try:
        return OffsetAndMetadata(offset, "", -1)
    except TypeError:  # kafka-python < 2.1
        return OffsetAndMetadata(offset, "")


def subscribe(
    bootstrap: str | KafkaConnection,
    group_id: str | None,
    detectors: Iterable[str] | None = None,
    min_severity: str | Severity | None = None,
    models: Iterable[str] | None = None,
    *,
    topic: str = DEFAULT_TOPIC,
    per_detector_topics: bool = False,
    start: Literal["earliest", "latest"] = "earliest",
    dedupe: DedupeWindow | None = None,
    stats: SubscriberStats | None = None,
    stop: threading.Event | None = None,
    idle_timeout_s: float | None = None,
    poll_timeout_s: float = 1.0,
    max_poll_interval_ms: int = 300_000,
    commit_every: int = 100,
    consumer_options: dict[str, Any] | None = None,
) -> Iterator[Alert]:
    """Yield alerts from the alert topic, deduplicated by ``event_id``.

    bootstrap: ``"host:port,..."`` or a :class:`KafkaConnection` (SASL/SSL settings).
    group_id: consumer group; offsets are committed for it. ``None`` reads without a group
        (all partitions, nothing committed), as ``alerts tail`` does.
    detectors, min_severity, models: filters; ``None`` lets everything through.
    topic / per_detector_topics: where the sidecar publishes (``<topic>.<detector>`` when per detector).
    start: where a group with no committed offsets (or a group-less reader) starts.
    dedupe: window of recently seen event ids (default: the last 100 000).
    stats: counters updated while iterating (received, malformed, duplicates, ...).
    stop: set it to end the iteration at the next poll.
    idle_timeout_s: end the iteration after this long without any message.
    max_poll_interval_ms: the longest the caller may hold one alert before the group
        considers this consumer dead (Kafka's default; a few seconds suits the Tansu broker,
        which waits this long when a member joins).
    commit_every: commit at least every this many handled messages (and whenever a poll
        returns nothing, and on exit).
    """
    from kafka import KafkaConsumer, TopicPartition

    connection = (
        bootstrap if isinstance(bootstrap, KafkaConnection) else KafkaConnection(bootstrap_servers=bootstrap)
    )
    wanted = AlertFilter.of(detectors, min_severity, models)
    stats = stats if stats is not None else SubscriberStats()
    dedupe = dedupe if dedupe is not None else DedupeWindow()
    stop = stop or threading.Event()

    kw = connection.client_kwargs()
    kw.update(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=start,
        max_poll_interval_ms=max_poll_interval_ms,
        session_timeout_ms=min(45_000, max(6_000, max_poll_interval_ms)),
        heartbeat_interval_ms=min(3_000, max(1_000, max_poll_interval_ms // 3)),
        fetch_max_wait_ms=100,
    )
    kw.update(consumer_options or {})
    consumer = KafkaConsumer(**kw)

    if per_detector_topics and wanted.detectors:
        topics = [f"{topic}.{d}" for d in sorted(wanted.detectors)]
        pattern = None
    elif per_detector_topics:
        topics, pattern = [], "^" + re.escape(topic) + r"\..+"
    else:
        topics, pattern = [topic], None

    handled: dict[Any, int] = {}
    since_commit = 0

    def commit() -> None:
        nonlocal since_commit
        if group_id is None or not handled:
            return
        offsets = {tp: _offset(off) for tp, off in handled.items()}
        try:
            consumer.commit(offsets=offsets)
            stats.commits += 1
            handled.clear()
            since_commit = 0
        except Exception as exc:  # noqa: BLE001 - e.g. a rebalance: messages come again, dedupe handles it
            stats.commit_failures += 1
            log.warning("offset commit failed (%s); those alerts may be delivered again", exc)

    def assign_all() -> bool:
        names = topics or sorted(t for t in consumer.topics() if re.match(pattern or "", t))
        parts = []
        for name in names:
            ids = consumer.partitions_for_topic(name)
            parts += [TopicPartition(name, p) for p in sorted(ids or ())]
        if not parts:
            return False
        consumer.assign(parts)
        if start == "earliest":
            consumer.seek_to_beginning()
        else:
            consumer.seek_to_end()
        return True

    try:
        if group_id is None:
            while not assign_all():
                if stop.wait(0.5):
                    return
        elif pattern is not None:
            consumer.subscribe(pattern=pattern)
        else:
            consumer.subscribe(topics=topics)

        last_message = time.monotonic()
        while not stop.is_set():
            batch = consumer.poll(timeout_ms=int(poll_timeout_s * 1000))
            if not batch:
                commit()
                if not consumer.assignment():
                    last_message = time.monotonic()  # still joining the group: not idle yet
                elif idle_timeout_s is not None and time.monotonic() - last_message > idle_timeout_s:
                    return
                continue
            last_message = time.monotonic()
            for tp, messages in batch.items():
                for msg in messages:
                    stats.received += 1
                    alert = parse_alert(msg.value, stats)
                    if alert is None:
                        log.warning(
                            "skipping malformed message at %s:%d offset %d",
                            tp.topic,
                            tp.partition,
                            msg.offset,
                        )
                    elif not wanted.matches(alert):
                        stats.filtered += 1
                    elif dedupe.seen(alert.event_id):
                        stats.duplicates += 1
                    else:
                        stats.yielded += 1
                        yield alert
                        # Reached only when the caller asks for the next alert: it has this one.
                    handled[tp] = msg.offset + 1
                    since_commit += 1
                    if since_commit >= commit_every:
                        commit()
            commit()
    finally:
        commit()
        consumer.close(autocommit=False)
