"""Webhook subscriptions: the record, its Redis registry, and request signing.

A receiver verifies a delivery with :func:`verify_signature`: the signature is
``sha256=`` + hex HMAC-SHA256, keyed with the subscription secret, of
``<timestamp> + "." + <raw body>``, where ``<timestamp>`` is the value of the
``X-Safety-Monitor-Timestamp`` header (unix seconds). Binding the timestamp into the
MAC lets receivers reject replays older than a tolerance.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alerts.config import DEFAULT_NAMESPACE
from alerts.schema import Severity, uuid7
from alerts.subscriber import AlertFilter

SIGNATURE_HEADER = "X-Safety-Monitor-Signature"
TIMESTAMP_HEADER = "X-Safety-Monitor-Timestamp"
EVENT_ID_HEADER = "X-Safety-Monitor-Event-Id"
ATTEMPT_HEADER = "X-Safety-Monitor-Delivery-Attempt"
SUBSCRIPTION_HEADER = "X-Safety-Monitor-Subscription"


def new_secret() -> str:
    """A random signing secret (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, f"{timestamp}." + body)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """True when ``signature`` (header value) matches ``body`` and ``timestamp`` is within
    ``tolerance_s`` seconds of now. Constant-time comparison."""
    if not timestamp or not signature:
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


class WebhookSubscription(BaseModel):
    """Where to POST which alerts."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=lambda: uuid7().hex, description="Subscription id.")
    url: str = Field(max_length=2048, description="http(s) endpoint that receives the POSTs.")
    detectors: list[str] | None = Field(None, description="Only these detectors; null for all.")
    min_severity: Severity | None = Field(None, description="Only alerts at least this severe; null for all.")
    models: list[str] | None = Field(None, description="Only these models; null for all.")
    secret: str = Field(
        default_factory=new_secret, min_length=16, repr=False, description="HMAC signing secret."
    )
    description: str | None = Field(None, max_length=500)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"webhook url must be an absolute http:// or https:// URL, got {v!r}")
        return v

    def alert_filter(self) -> AlertFilter:
        """The detectors/severity/models this subscription wants."""
        return AlertFilter.of(self.detectors, self.min_severity, self.models)


class WebhookRegistry:
    """Subscriptions kept in one Redis hash, ``<namespace>:webhooks`` (id -> JSON)."""

    def __init__(self, client: Any, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._client = client
        self.key = f"{namespace}:webhooks"

    def add(self, subscription: WebhookSubscription) -> WebhookSubscription:
        self._client.hset(self.key, subscription.id, subscription.model_dump_json())
        return subscription

    def get(self, subscription_id: str) -> WebhookSubscription | None:
        raw = self._client.hget(self.key, subscription_id)
        return None if raw is None else WebhookSubscription.model_validate_json(raw)

    def list(self) -> list[WebhookSubscription]:
        out = []
        for _id, raw in sorted(self._client.hgetall(self.key).items()):
            try:
                out.append(WebhookSubscription.model_validate_json(raw))
            except ValueError:
                continue  # a hand-edited, invalid entry must not stop the other subscriptions
        return out

    def remove(self, subscription_id: str) -> bool:
        return bool(self._client.hdel(self.key, subscription_id))
