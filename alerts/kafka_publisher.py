"""Drains the outbox into Kafka: a background loop, acks=all, per-request order.

The loop takes due "head" rows from the outbox (at most one unacknowledged alert per
request id at a time, so a request's alerts arrive in emission order even across retries
and broker outages), sends them with key = request id and headers ``event_id``,
``detector``, ``severity``, ``schema``, and marks each row delivered when the broker
acknowledges it. A failed send is retried after an exponential backoff; rows stay in the
outbox until acknowledged, so a crash or a broker outage only delays them. When the outbox
cannot record an acknowledgement (disk full), the row is kept out of the sends and the mark
is retried, so an outbox outage does not make the loop send the same alerts again and again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alerts.backoff import Backoff
from alerts.config import KafkaConnection, PublisherConfig
from alerts.outbox import AlertOutbox, OutboxRow
from alerts.schema import SCHEMA_ID

log = logging.getLogger(__name__)

ProducerFactory = Callable[[dict[str, Any]], Any]


def producer_settings(connection: KafkaConnection, config: PublisherConfig) -> dict[str, Any]:
    """``KafkaProducer`` keyword arguments for these settings.

    Idempotence is switched on when the installed kafka-python supports it (2.1+).
    """
    from kafka import KafkaProducer

    kw = connection.client_kwargs()
    kw.update(
        acks=config.acks,
        linger_ms=config.linger_ms,
        compression_type=config.compression_type,
        request_timeout_ms=config.request_timeout_ms,
        max_block_ms=config.max_block_ms,
        reconnect_backoff_max_ms=config.reconnect_backoff_max_ms,
        retry_backoff_ms=100,
    )
    supported = KafkaProducer.DEFAULT_CONFIG
    if "enable_idempotence" in supported:
        kw["enable_idempotence"] = True
    if "delivery_timeout_ms" in supported:
        kw["delivery_timeout_ms"] = config.delivery_timeout_ms
    else:  # kafka-python < 2.1 has no delivery timeout: bound the retries instead
        kw["retries"] = 5
    if config.compression_type:
        from kafka import codec

        check = getattr(codec, f"has_{config.compression_type}", None)
        if check is None or not check():
            raise ValueError(
                f"compression {config.compression_type!r} is not available in this Python environment;"
                " use 'gzip' or install the codec package (python-snappy, lz4, zstandard)"
            )
    kw.update(config.producer_options)
    return kw


def _default_factory(settings: dict[str, Any]) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(**settings)


@dataclass(frozen=True)
class PublisherStats:
    """Publisher counters (since start) and gauges."""

    published_total: int
    """Alerts acknowledged by the broker."""
    failed_total: int
    """Send attempts that failed (each is retried)."""
    in_flight: int
    """Alerts sent and not yet acknowledged."""
    producer_restarts_total: int
    """Times the Kafka producer was (re)created after an error."""
    connected: bool
    """Whether the last send attempt reached the broker."""
    last_error: str | None
    """The most recent send error."""


class KafkaAlertPublisher:
    """Background delivery loop from an :class:`AlertOutbox` to Kafka.

    ``start()`` launches the loop; ``notify()`` wakes it after an append; ``flush()`` waits
    until nothing is pending; ``close()`` stops it within a timeout, leaving unacknowledged
    alerts pending in the outbox for the next start.
    """

    def __init__(
        self,
        outbox: AlertOutbox,
        connection: KafkaConnection,
        config: PublisherConfig | None = None,
        *,
        producer_factory: ProducerFactory | None = None,
    ) -> None:
        self.outbox = outbox
        self.connection = connection
        self.config = config or PublisherConfig()
        self._settings = producer_settings(connection, self.config)
        self._factory = producer_factory or _default_factory
        self._backoff = Backoff(self.config.retry_initial_s, self.config.retry_max_s)
        self._producer: Any = None
        self._producer_failures = 0
        self._producer_retry_at = 0.0
        self._inflight: dict[int, OutboxRow] = {}
        self._unmarked: list[int] = []  # acknowledged by the broker, not yet marked delivered in the outbox
        self._sent_at: dict[int, float] = {}  # seq -> monotonic send time, oldest first (insertion order)
        # A send neither acknowledged nor failed this long after it was handed to the producer means
        # the producer is wedged (seen with kafka-python after a broker restart: a batch that never
        # expires); the producer is then replaced and the row retried.
        self._stuck_after_s = (self.config.delivery_timeout_ms + self.config.request_timeout_ms) / 1000 + 1.0
        self._done: queue.SimpleQueue[tuple[int, BaseException | None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._published = 0
        self._failed = 0
        self._restarts = 0
        self._connected = False
        self._last_error: str | None = None
        self._last_prune = 0.0
        self._consecutive_failures = 0
        self._pause_until = 0.0

    # --- control ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery loop (pending rows from an earlier run go first, in order)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="alerts-kafka-publisher", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Wake the loop: new rows are in the outbox."""
        self._wake.set()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox has nothing pending and nothing is in flight; ``False`` on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self._inflight and self.outbox.pending_count() == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wake.set()
            with self._idle:
                self._idle.wait(min(0.05, remaining))

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the loop, wait up to ``timeout_s`` for acknowledgements, close the producer."""
        timeout_s = self.config.close_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            self._thread = None
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.flush(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - close must not raise
                log.warning("kafka flush on close failed: %s", exc)
            self._apply_completions()
            try:
                producer.close(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001
                log.warning("kafka producer close failed: %s", exc)
        self._inflight.clear()

    def stats(self) -> PublisherStats:
        return PublisherStats(
            published_total=self._published,
            failed_total=self._failed,
            in_flight=len(self._inflight),
            producer_restarts_total=self._restarts,
            connected=self._connected,
            last_error=self._last_error,
        )

    # --- loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                log.exception("alert delivery loop error; retrying")
                self._stop.wait(0.5)

    def _step(self) -> None:
        self._apply_completions()
        self._check_stuck(time.monotonic())
        now = time.time()
        if now - self._last_prune > 60:
            self._last_prune = now
            try:
                self.outbox.prune_delivered(now)
            except Exception as exc:  # noqa: BLE001 - pruning can wait; sending must not
                log.warning("could not prune delivered outbox rows: %s", exc)
        if self._producer is None and not self._ensure_producer(now):
            self._sleep(max(0.05, self._producer_retry_at - now))
            return
        if now < self._pause_until:
            # The broker refused a send moments ago; do not hammer it with the next rows.
            self._sleep(self._pause_until - now)
            return
        room = self.config.max_in_flight - len(self._inflight)
        busy = [*self._inflight.keys(), *self._unmarked]
        rows = self.outbox.heads(room, now=now, exclude=busy) if room > 0 else []
        for row in rows:
            if self._stop.is_set() or not self._send(row):
                break
        if not rows:
            self._sleep(self._idle_wait(now))

    def _send(self, row: OutboxRow) -> bool:
        try:
            future = self._producer.send(
                self.config.topic_for(row.detector),
                key=row.request_id.encode(),
                value=row.payload,
                headers=[
                    ("event_id", row.event_id.encode()),
                    ("detector", row.detector.encode()),
                    ("severity", row.severity.value.encode()),
                    ("schema", SCHEMA_ID.encode()),
                ],
            )
        except Exception as exc:  # noqa: BLE001 - metadata timeout, buffer full, closed producer
            self._record_failures([(row, exc)])
            if _is_fatal(exc):
                self._drop_producer(exc)
            return False
        self._inflight[row.seq] = row
        self._sent_at[row.seq] = time.monotonic()
        seq = row.seq
        future.add_callback(lambda _md, seq=seq: self._completed(seq, None))
        future.add_errback(lambda exc, seq=seq: self._completed(seq, exc))
        return True

    def _completed(self, seq: int, exc: BaseException | None) -> None:
        # Runs on the producer's I/O thread: hand over to the loop, never touch SQLite here.
        self._done.put((seq, exc))
        self._wake.set()

    def _apply_completions(self) -> None:
        delivered: list[int] = []
        failed: list[tuple[OutboxRow, BaseException]] = []
        while True:
            try:
                seq, exc = self._done.get_nowait()
            except queue.Empty:
                break
            row = self._inflight.pop(seq, None)
            self._sent_at.pop(seq, None)
            if row is None:
                continue
            if exc is None:
                delivered.append(seq)
            else:
                failed.append((row, exc))
        if delivered:
            self._unmarked.extend(delivered)
            # counted when Kafka acknowledged, before the outbox marks them: a flush() that sees nothing
            # pending must also see them in published_total
            self._published += len(delivered)
        self._mark_acknowledged()
        if delivered:
            self._connected = True
            self._consecutive_failures = 0
            self._pause_until = 0.0
        if failed:
            self._record_failures(failed)
            if any(_is_fatal(exc) for _, exc in failed):
                self._drop_producer(failed[0][1])
        if delivered or failed:
            with self._idle:
                self._idle.notify_all()

    def _mark_acknowledged(self) -> None:
        """Mark acknowledged rows delivered; if the outbox cannot write, keep them (unsent) and retry later."""
        if not self._unmarked:
            return
        try:
            self.outbox.mark_delivered(self._unmarked)
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error (disk full, I/O error): retried next step
            log.warning("cannot mark %d acknowledged alert(s) delivered in the outbox, will retry: %s",
                        len(self._unmarked), exc)
            return
        self._unmarked = []

    def _record_failures(self, failed: list[tuple[OutboxRow, BaseException]]) -> None:
        now = time.time()
        marks = []
        for row, exc in failed:
            attempt = row.attempts + 1
            marks.append((row.seq, f"{type(exc).__name__}: {exc}", now + self._backoff.delay(attempt)))
        try:
            self.outbox.mark_failed(marks)
        except Exception as exc:  # noqa: BLE001 - the rows stay pending; the pause below still spaces retries
            log.warning("cannot record %d failed send(s) in the outbox: %s", len(marks), exc)
        self._failed += len(failed)
        self._consecutive_failures += 1
        self._pause_until = now + self._backoff.delay(self._consecutive_failures)
        self._connected = False
        self._last_error = marks[-1][1]
        log.warning("%d alert send(s) failed, will retry: %s", len(failed), self._last_error)

    def _ensure_producer(self, now: float) -> bool:
        if now < self._producer_retry_at:
            return False
        try:
            self._producer = self._factory(dict(self._settings))
            self._producer_failures = 0
            return True
        except Exception as exc:  # noqa: BLE001 - broker unreachable at start-up is normal
            self._producer_failures += 1
            self._producer_retry_at = now + self._backoff.delay(self._producer_failures)
            self._connected = False
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.warning("cannot create Kafka producer (%s); retrying", self._last_error)
            return False

    def _drop_producer(self, exc: BaseException) -> None:
        """Replace a producer whose state can no longer be trusted (e.g. idempotence state lost)."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        self._restarts += 1
        log.warning("recreating Kafka producer after %s: %s", type(exc).__name__, exc)
        try:
            producer.close(timeout=0)
        except Exception:  # the producer is being discarded anyway
            log.debug("closing the old producer failed", exc_info=True)
        self._apply_completions()
        # Whatever was still in flight on the old producer gets retried on the new one.
        if self._inflight:
            self._record_failures([(row, exc) for row in self._inflight.values()])
            self._inflight.clear()
            self._sent_at.clear()

    def _check_stuck(self, now: float) -> None:
        """Replace the producer if a send has been outstanding past the delivery and request timeouts."""
        if self._producer is None or not self._sent_at:
            return
        oldest = next(iter(self._sent_at.values()))
        if now - oldest > self._stuck_after_s:
            self._drop_producer(StuckSendError(f"a send got no answer in {now - oldest:.1f} s "
                                               f"(delivery + request timeouts: {self._stuck_after_s - 1:.1f} s)"))

    def _idle_wait(self, now: float) -> float:
        if self._inflight or self._unmarked:
            return self.config.poll_interval_s
        due = self.outbox.next_due_at()
        if due is None:
            return self.config.poll_interval_s
        return min(self.config.poll_interval_s, max(0.01, due - now))

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()


class StuckSendError(Exception):
    """The producer neither acknowledged nor failed a send within its own timeouts."""


def _is_fatal(exc: BaseException) -> bool:
    """Errors after which the producer instance should not be reused."""
    name = type(exc).__name__
    return name in {
        "OutOfOrderSequenceNumberError",
        "UnknownProducerIdError",
        "InvalidProducerEpochError",
        "ProducerFencedError",
        "IllegalStateError",
        "KafkaConnectionError",
    } or (hasattr(exc, "retriable") and not exc.retriable and name != "KafkaTimeoutError")
