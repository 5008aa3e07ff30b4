"""``safety-monitor alerts route``: consume the alert topic and POST each alert to the
webhook subscriptions it matches.

Each POST is signed (see :mod:`alerts.webhooks.registry`) and retried with exponential backoff on
connection errors, timeouts, 408, 429 and 5xx. A delivery that fails its last attempt,
or gets another 4xx, is published to the dead-letter topic. The alert's offset is
committed only after every matching subscription got it or its dead letter was
acknowledged, so webhook delivery is at-least-once too (receivers dedupe by event id,
also sent as the ``X-Safety-Monitor-Event-Id`` header).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from alerts.backoff import Backoff
from alerts.config import KafkaConnection, WebhookRouterConfig
from alerts.schema import Alert
from alerts.subscriber import SubscriberStats, subscribe
from alerts.webhooks.registry import (
    ATTEMPT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    SUBSCRIPTION_HEADER,
    TIMESTAMP_HEADER,
    WebhookRegistry,
    WebhookSubscription,
    sign,
)

log = logging.getLogger(__name__)

DEAD_LETTER_SCHEMA = "safety-monitor.webhook-dead-letter/v1"
_RETRY_STATUS = {408, 425, 429}


@dataclass(frozen=True)
class DeliveryResult:
    """Outcome of delivering one alert to one subscription."""

    ok: bool
    attempts: int
    status: int | None
    """Last HTTP status, ``None`` when no response came."""
    error: str | None


@dataclass
class RouterStats:
    """Counters of a router run."""

    alerts: int = 0
    """Alerts consumed (after dedupe)."""
    delivered: int = 0
    """Successful (2xx) deliveries."""
    dead_lettered: int = 0
    """Deliveries given up and sent to the dead-letter topic."""
    attempts: int = 0
    """POSTs made, retries included."""
    consumer: SubscriberStats = field(default_factory=SubscriberStats)
    """Consumer counters (malformed messages, duplicates, commits)."""


class WebhookRouter:
    """Kafka alert topic → signed webhook POSTs, with retries and a dead-letter topic."""

    def __init__(
        self,
        connection: KafkaConnection,
        registry: WebhookRegistry,
        config: WebhookRouterConfig | None = None,
        *,
        http_client: Any = None,
        dead_letter_producer: Any = None,
    ) -> None:
        import httpx

        self.connection = connection
        self.registry = registry
        self.config = config or WebhookRouterConfig()
        self._http = http_client or httpx.Client(
            timeout=self.config.request_timeout_s, follow_redirects=False
        )
        self._dlq = dead_letter_producer
        self._backoff = Backoff(self.config.retry_initial_s, self.config.retry_max_s)
        self._subs: list[WebhookSubscription] = []
        self._subs_at = 0.0
        self._pool = ThreadPoolExecutor(max_workers=self.config.max_parallel, thread_name_prefix="webhook")
        self._stats_lock = threading.Lock()
        self.stats = RouterStats()

    def run(self, stop: threading.Event | None = None, idle_timeout_s: float | None = None) -> RouterStats:
        """Route until ``stop`` is set (or ``idle_timeout_s`` without messages); returns the counters."""
        stop = stop or threading.Event()
        alerts = subscribe(
            self.connection,
            self.config.group_id,
            topic=self.config.topic,
            stats=self.stats.consumer,
            stop=stop,
            idle_timeout_s=idle_timeout_s,
            max_poll_interval_ms=self.config.max_poll_interval_ms,
            commit_every=1,
        )
        try:
            for alert in alerts:
                self.route(alert, stop)
        finally:
            alerts.close()
        return self.stats

    def route(self, alert: Alert, stop: threading.Event | None = None) -> list[DeliveryResult]:
        """Deliver one alert to every matching subscription (concurrently); dead-letter failures."""
        self.stats.alerts += 1
        subs = [s for s in self.subscriptions() if s.alert_filter().matches(alert)]
        results = list(self._pool.map(lambda s: self.deliver(s, alert, stop), subs))
        for sub, result in zip(subs, results, strict=True):
            if result.ok:
                self.stats.delivered += 1
            else:
                self.dead_letter(sub, alert, result)
                self.stats.dead_lettered += 1
        return results

    def subscriptions(self) -> list[WebhookSubscription]:
        """Current subscriptions, re-read from Redis at most every ``refresh_subscriptions_s``."""
        now = time.monotonic()
        if now - self._subs_at >= self.config.refresh_subscriptions_s or not self._subs_at:
            try:
                self._subs = self.registry.list()
                self._subs_at = now
            except Exception as exc:  # noqa: BLE001 - keep routing with the last known list
                log.warning(
                    "cannot read webhook subscriptions from Redis (%s); using the last known list", exc
                )
        return self._subs

    def deliver(
        self, sub: WebhookSubscription, alert: Alert, stop: threading.Event | None = None
    ) -> DeliveryResult:
        """POST ``alert`` to ``sub.url`` with retries; never raises."""
        body = alert.to_json()
        status: int | None = None
        error: str | None = None
        for attempt in range(1, self.config.max_attempts + 1):
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "safety-monitor-webhooks/1",
                EVENT_ID_HEADER: alert.event_id,
                TIMESTAMP_HEADER: str(ts),
                SIGNATURE_HEADER: sign(sub.secret, ts, body),
                ATTEMPT_HEADER: str(attempt),
                SUBSCRIPTION_HEADER: sub.id,
            }
            with self._stats_lock:
                self.stats.attempts += 1
            try:
                response = self._http.post(sub.url, content=body, headers=headers)
                status, error = response.status_code, None
                if 200 <= status < 300:
                    return DeliveryResult(True, attempt, status, None)
                error = f"HTTP {status}"
                if status < 500 and status not in _RETRY_STATUS:
                    return DeliveryResult(False, attempt, status, error)  # the receiver rejects it: no retry
            except Exception as exc:  # noqa: BLE001 - connection refused, timeout, TLS, ...
                status, error = None, f"{type(exc).__name__}: {exc}"
            if attempt < self.config.max_attempts:
                delay = self._backoff.delay(attempt)
                if stop is not None and stop.wait(delay):
                    break
                if stop is None:
                    time.sleep(delay)
        log.warning(
            "webhook %s gave up on %s after %d attempt(s): %s", sub.id, alert.event_id, attempt, error
        )
        return DeliveryResult(False, attempt, status, error)

    def dead_letter(self, sub: WebhookSubscription, alert: Alert, result: DeliveryResult) -> None:
        """Publish the failed delivery to the dead-letter topic; retries until acknowledged
        (raises after ``max_attempts`` failures, leaving the alert uncommitted)."""
        record = {
            "schema": DEAD_LETTER_SCHEMA,
            "subscription_id": sub.id,
            "url": sub.url,
            "attempts": result.attempts,
            "last_status": result.status,
            "last_error": result.error,
            "failed_at": datetime.now(UTC).isoformat(),
            "alert": alert.to_dict(),
        }
        value = json.dumps(record).encode()
        headers = [("event_id", alert.event_id.encode()), ("subscription_id", sub.id.encode())]
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                producer = self._dead_letter_producer()
                producer.send(
                    self.config.dead_letter_topic, key=sub.id.encode(), value=value, headers=headers
                ).get(timeout=10)
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("dead-letter publish failed (%s), attempt %d", exc, attempt)
                time.sleep(self._backoff.delay(attempt))
        raise RuntimeError(f"cannot publish to dead-letter topic {self.config.dead_letter_topic!r}")

    def _dead_letter_producer(self) -> Any:
        if self._dlq is None:
            from kafka import KafkaProducer

            kw = self.connection.client_kwargs()
            kw.update(acks="all", linger_ms=0, max_block_ms=5000)
            self._dlq = KafkaProducer(**kw)
        return self._dlq

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._dlq is not None:
            try:
                self._dlq.close(timeout=5)
            except Exception:
                log.debug("dead-letter producer close failed", exc_info=True)
        self._http.close()
