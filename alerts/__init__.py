"""Safety alerts: the event schema, the durable outbox, Kafka publishing and subscribing,
webhook routing, and the Redis dashboard store.

This package knows nothing of torch or SAEs; the sidecar (``monitor``) builds
:class:`~alerts.schema.Alert` objects and hands them to an
:class:`~alerts.delivery.AlertPipeline`.
"""

from alerts.schema import SCHEMA_ID, Alert, LatentActivation, Severity, TokenSpan, uuid7
from alerts.subscriber import SubscriberStats, subscribe

__all__ = [
    "SCHEMA_ID",
    "Alert",
    "LatentActivation",
    "Severity",
    "SubscriberStats",
    "TokenSpan",
    "subscribe",
    "uuid7",
]
