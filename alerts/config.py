"""Configuration of the alert path, declared once.

Every knob of the outbox, the Kafka publisher and subscriber, the Redis dashboard
store, the webhook router and the local sinks lives here as a dataclass field with
a default and a docstring. ``docs/alerts.md`` lists them; the CLI reads the same
defaults. Secrets (SASL and Redis passwords) are excluded from ``repr``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TOPIC = "safety-monitor.alerts"
DEFAULT_DEAD_LETTER_TOPIC = "safety-monitor.alerts.dead-letter"
DEFAULT_NAMESPACE = "safety-monitor"


def default_instance() -> str:
    """Hostname plus pid: unique per sidecar process (the pod name under Kubernetes)."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(kw_only=True)
class KafkaConnection:
    """How to reach the Kafka cluster; shared by publisher, subscriber and router."""

    bootstrap_servers: str = "localhost:9092"
    """Comma-separated ``host:port`` list."""
    client_id: str = "safety-monitor"
    """Client id reported to the brokers (shows in broker logs and quotas)."""
    security_protocol: str = "PLAINTEXT"
    """``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``."""
    sasl_mechanism: str | None = None
    """``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``, ``OAUTHBEARER`` or ``GSSAPI``."""
    sasl_plain_username: str | None = None
    """SASL user name (PLAIN and SCRAM)."""
    sasl_plain_password: str | None = field(default=None, repr=False)
    """SASL password (PLAIN and SCRAM). Prefer the ``SAFETY_MONITOR_KAFKA_SASL_PASSWORD`` variable."""
    ssl_cafile: str | None = None
    """PEM file of the CA that signed the brokers' certificates."""
    ssl_certfile: str | None = None
    """PEM client certificate for mutual TLS."""
    ssl_keyfile: str | None = None
    """PEM private key of the client certificate."""
    ssl_password: str | None = field(default=None, repr=False)
    """Password of ``ssl_keyfile``, if encrypted."""
    ssl_check_hostname: bool = True
    """Verify that the broker certificate matches its host name."""
    api_version: tuple[int, ...] | None = None
    """Broker protocol version, e.g. ``(2, 8)``; ``None`` probes the broker on connect."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other kafka-python client settings, passed through verbatim (they win over ours)."""

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient``."""
        kw: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": self.sasl_plain_password,
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_password": self.ssl_password,
            "api_version": self.api_version,
        }
        kw.update({k: v for k, v in optional.items() if v is not None})
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kw["ssl_check_hostname"] = self.ssl_check_hostname
        kw.update(self.extra)
        return kw

    @classmethod
    def from_env(cls, bootstrap_servers: str | None = None, **overrides: Any) -> KafkaConnection:
        """Build from ``SAFETY_MONITOR_KAFKA_*`` environment variables, then ``overrides``.

        Variables: ``BOOTSTRAP``, ``SECURITY_PROTOCOL``, ``SASL_MECHANISM``, ``SASL_USERNAME``,
        ``SASL_PASSWORD``, ``SSL_CAFILE``, ``SSL_CERTFILE``, ``SSL_KEYFILE``, ``SSL_PASSWORD``.
        """
        env = os.environ.get
        values: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers or env("SAFETY_MONITOR_KAFKA_BOOTSTRAP", "localhost:9092"),
            "security_protocol": env("SAFETY_MONITOR_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            "sasl_mechanism": env("SAFETY_MONITOR_KAFKA_SASL_MECHANISM"),
            "sasl_plain_username": env("SAFETY_MONITOR_KAFKA_SASL_USERNAME"),
            "sasl_plain_password": env("SAFETY_MONITOR_KAFKA_SASL_PASSWORD"),
            "ssl_cafile": env("SAFETY_MONITOR_KAFKA_SSL_CAFILE"),
            "ssl_certfile": env("SAFETY_MONITOR_KAFKA_SSL_CERTFILE"),
            "ssl_keyfile": env("SAFETY_MONITOR_KAFKA_SSL_KEYFILE"),
            "ssl_password": env("SAFETY_MONITOR_KAFKA_SSL_PASSWORD"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(kw_only=True)
class OutboxConfig:
    """The SQLite outbox every alert is committed to before it counts as emitted."""

    path: str = "alerts-outbox.sqlite3"
    """SQLite file; put it on a persistent volume so a restarted sidecar delivers what was pending."""
    max_rows: int = 100_000
    """Bound on rows (pending plus retained delivered). See the full-outbox policy in docs/alerts.md."""
    max_bytes: int = 256 * 1024 * 1024
    """Bound on the summed size of stored alert payloads, in bytes."""
    delivered_retention_s: float = 3600.0
    """Delivered rows are kept this long (for inspection), then deleted; also deleted early when space is needed."""


@dataclass(kw_only=True)
class PublisherConfig:
    """How the outbox is drained into Kafka."""

    topic: str = DEFAULT_TOPIC
    """Topic that receives every alert."""
    per_detector_topics: bool = False
    """Publish to ``<topic>.<detector>`` instead, one topic per detector."""
    acks: str | int = "all"
    """Broker acknowledgement level; ``all`` is required for the no-loss promise."""
    linger_ms: int = 2
    """How long the producer waits to batch records (adds at most this much latency)."""
    compression_type: str | None = "gzip"
    """``gzip`` (always available), ``snappy``/``lz4``/``zstd`` (need their Python packages) or ``None``."""
    delivery_timeout_ms: int = 30_000
    """A send not acknowledged within this time fails and its row is retried with backoff."""
    request_timeout_ms: int = 10_000
    """Time to wait for one produce response."""
    max_block_ms: int = 5_000
    """Longest a send may block waiting for topic metadata (e.g. while the broker is down)."""
    reconnect_backoff_max_ms: int = 1_000
    """Upper bound of the client's reconnect backoff, so recovery after an outage is quick."""
    max_in_flight: int = 1_000
    """Most alerts sent but not yet acknowledged (bounds client memory during an outage)."""
    retry_initial_s: float = 0.2
    """First retry delay of a failed alert; doubles per attempt, with jitter."""
    retry_max_s: float = 30.0
    """Longest retry delay."""
    poll_interval_s: float = 0.5
    """Longest the delivery loop sleeps between outbox scans when it is not woken up."""
    close_timeout_s: float = 10.0
    """Default time ``close()`` waits for acknowledgements before leaving alerts pending for the next start."""
    producer_options: dict[str, Any] = field(default_factory=dict)
    """Other ``KafkaProducer`` settings, passed through verbatim."""

    def topic_for(self, detector: str) -> str:
        """Topic an alert of ``detector`` goes to."""
        return f"{self.topic}.{detector}" if self.per_detector_topics else self.topic


@dataclass(kw_only=True)
class RedisConnection:
    """How to reach Redis (dashboard store, webhook subscriptions)."""

    url: str = "redis://localhost:6379/0"
    """``redis://`` or, for TLS, ``rediss://`` URL; may carry ``user:password@``."""
    username: str | None = None
    """ACL user name (Redis 6+), when not in the URL."""
    password: str | None = field(default=None, repr=False)
    """AUTH password, when not in the URL. Prefer ``SAFETY_MONITOR_REDIS_PASSWORD``."""
    ssl_ca_certs: str | None = None
    """PEM CA bundle for ``rediss://``."""
    ssl_certfile: str | None = None
    """Client certificate for mutual TLS."""
    ssl_keyfile: str | None = None
    """Private key of ``ssl_certfile``."""
    socket_timeout_s: float = 1.0
    """Per-command timeout; keeps the writer and dashboard responsive when Redis hangs."""
    socket_connect_timeout_s: float = 1.0
    """Connection timeout."""

    def client(self) -> Any:
        """A ``redis.Redis`` client (thread-safe, pooled) for these settings."""
        import redis

        kw: dict[str, Any] = {
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": self.socket_connect_timeout_s,
            "health_check_interval": 10,
        }
        password = self.password or os.environ.get("SAFETY_MONITOR_REDIS_PASSWORD")
        if self.username:
            kw["username"] = self.username
        if password:
            kw["password"] = password
        if self.url.startswith("rediss://"):
            kw.update(
                {
                    k: v
                    for k, v in {
                        "ssl_ca_certs": self.ssl_ca_certs,
                        "ssl_certfile": self.ssl_certfile,
                        "ssl_keyfile": self.ssl_keyfile,
                    }.items()
                    if v is not None
                }
            )
        return redis.Redis.from_url(self.url, **kw)


@dataclass(kw_only=True)
class StoreConfig:
    """The Redis dashboard store."""

    model: str
    """Model id; all keys of this model share the prefix ``<namespace>:{<model>}:`` (one cluster slot)."""
    namespace: str = DEFAULT_NAMESPACE
    """First part of every key."""
    instance: str = field(default_factory=default_instance)
    """Sidecar instance name written in heartbeats."""
    stream_maxlen: int = 1_000
    """Approximate number of recent alerts kept in the stream (``XADD MAXLEN ~``)."""
    counter_ttl_s: int = 2 * 24 * 3600
    """Lifetime of per-minute counters and hourly histograms."""
    state_ttl_s: int = 7 * 24 * 3600
    """Lifetime of the stream, thresholds and detector list, refreshed on every write."""
    heartbeat_interval_s: float = 5.0
    """How often the store writes this instance's heartbeat."""
    heartbeat_ttl_s: int = 30
    """A heartbeat older than this expires, and the instance counts as gone."""
    queue_size: int = 10_000
    """Writes waiting for Redis; beyond this new writes are dropped and counted (the caller never blocks)."""
    retry_initial_s: float = 0.2
    """First retry delay after a failed write; doubles up to ``retry_max_s``."""
    retry_max_s: float = 5.0
    """Longest retry delay."""
    stale_after_s: float = 10.0
    """The store reports stale when writes have been failing, or waiting, longer than this."""
    histogram_edges: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
    """Bucket lower edges of score/threshold (last bucket is open-ended; scores below 0 go to the first)."""


@dataclass(kw_only=True)
class WebhookRouterConfig:
    """The process that consumes the alert topic and delivers to registered webhooks."""

    topic: str = DEFAULT_TOPIC
    """Alert topic to consume."""
    group_id: str = "safety-monitor-webhooks"
    """Consumer group; run several routers in the same group to share partitions."""
    dead_letter_topic: str = DEFAULT_DEAD_LETTER_TOPIC
    """Deliveries that failed their last attempt are published here with the reason."""
    max_attempts: int = 5
    """POST attempts per subscription and alert, the first included."""
    retry_initial_s: float = 0.5
    """Delay after the first failed attempt; doubles per attempt, with jitter."""
    retry_max_s: float = 30.0
    """Longest delay between attempts."""
    request_timeout_s: float = 5.0
    """Timeout of one POST."""
    max_parallel: int = 8
    """Subscriptions delivered to concurrently for one alert."""
    refresh_subscriptions_s: float = 5.0
    """How often the subscription list is re-read from Redis."""
    max_poll_interval_ms: int = 300_000
    """Consumer-group liveness bound (Kafka default); lower it (a few seconds) for Tansu, which waits this long on join."""
    namespace: str = DEFAULT_NAMESPACE
    """Redis key prefix of the subscription registry."""


@dataclass(kw_only=True)
class AlertsConfig:
    """Everything the sidecar needs to build an :class:`alerts.delivery.AlertPipeline`.

    With the defaults nothing needs a server: alerts go to the console. Set ``kafka`` to publish
    (through the outbox), ``redis`` to feed the dashboard, ``jsonl_path`` to append to a local file.
    """

    model: str
    """Model id (dashboard key prefix)."""
    instance: str = field(default_factory=default_instance)
    """Sidecar instance name, written into every alert and heartbeat."""
    kafka: KafkaConnection | None = None
    """Kafka cluster; ``None`` disables Kafka publishing (and the outbox)."""
    publisher: PublisherConfig = field(default_factory=PublisherConfig)
    """Publisher settings (used when ``kafka`` is set)."""
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    """Outbox settings (used when ``kafka`` is set, or ``local_outbox``)."""
    local_outbox: bool = False
    """Keep the SQLite outbox even without Kafka: a durable local record whose pending alerts are
    published once Kafka is configured (until then high/critical alerts accumulate beyond the bound)."""
    redis: RedisConnection | None = None
    """Redis for the dashboard store; ``None`` keeps the dashboard data in process memory."""
    store: StoreConfig | None = None
    """Store settings; ``None`` uses defaults for ``model`` and ``instance``."""
    console: bool = True
    """Print one line per alert to stderr."""
    console_json: bool = False
    """Print the JSON event instead of the human line."""
    jsonl_path: str | None = None
    """Append every alert as one JSON line to this file."""

    def store_config(self) -> StoreConfig:
        return self.store or StoreConfig(model=self.model, instance=self.instance)
