"""``AlertEmitter``: hands alerts from the scoring worker to the ``alerts`` package without stalling it.

The outbox commit is an fsync (milliseconds). The worker puts alerts on a bounded queue and goes on
scoring; this thread commits them in groups with ``AlertPipeline.emit_many`` (one fsync per group).
Alerts are never dropped here: when the outbox fails (disk full, ...) the group is retried with
backoff, and when the queue is full the worker waits, the ingest queue fills up and ingest answers
429: back-pressure instead of loss.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from alerts.delivery import AlertPipeline
from alerts.schema import Alert
from monitor.service.prometheus import SidecarMetrics

log = logging.getLogger(__name__)

_MAX_GROUP = 256
_RETRY_INITIAL_S = 0.05
_RETRY_MAX_S = 2.0


@dataclass(frozen=True)
class PendingAlert:
    """An alert and when the batch that raised it was received (``time.perf_counter()`` seconds)."""

    alert: Alert
    received_at: float


class AlertEmitter:
    """Background committer of alerts into an ``AlertPipeline`` (outbox, Kafka, dashboard, sinks)."""

    def __init__(self, pipeline: AlertPipeline, metrics: SidecarMetrics, *, queue_size: int = 4096) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self._queue: queue.Queue[PendingAlert | None] = queue.Queue(maxsize=queue_size)
        self._failing_since: float | None = None
        self.last_error: str | None = None
        """The most recent commit error, cleared by the next success."""
        self._thread = threading.Thread(target=self._run, name="alert-emitter", daemon=True)
        self._started = False

    def start(self) -> AlertEmitter:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def submit(self, alerts: list[PendingAlert], stop: threading.Event | None = None) -> bool:
        """Queue alerts for commit; waits while the queue is full. Returns False if ``stop`` was set
        while waiting (shutdown), leaving the rest unqueued."""
        for item in alerts:
            while True:
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    if stop is not None and stop.is_set():
                        return False
        return True

    def observe_scores(self, detector: str, scores: list[float], threshold: float) -> None:
        """Final scores of finished requests for the dashboard histogram (best effort, never blocks)."""
        if scores:
            self.pipeline.observe_scores(detector, scores, threshold)

    @property
    def depth(self) -> int:
        """Alerts waiting for their commit."""
        return self._queue.qsize()

    @property
    def healthy(self) -> bool:
        """False while commits have been failing (the outbox is not writable)."""
        return self._failing_since is None

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < _MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[PendingAlert]) -> None:
        delay = _RETRY_INITIAL_S
        while True:
            try:
                self.pipeline.emit_many([p.alert for p in group])
                break
            except Exception as exc:  # noqa: BLE001 - sqlite3.Error, OSError: keep the alerts, retry
                self.metrics.alert_emit_failures.inc()
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.error("alert outbox commit failed, retrying (alerts are kept): %s", self.last_error)
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        self._failing_since = None
        self.last_error = None
        now = time.perf_counter()
        for p in group:
            self.metrics.alerts.labels(p.alert.detector, p.alert.severity.value).inc()
            self.metrics.ingest_to_alert.observe(max(0.0, now - p.received_at))

    def close(self, timeout_s: float = 10.0) -> bool:
        """Commit what is queued (within ``timeout_s``) and stop. Returns False if alerts were left."""
        if not self._started:
            return True
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()
