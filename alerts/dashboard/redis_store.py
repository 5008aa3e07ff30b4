"""The Redis dashboard store: recent alerts, rates, score histograms, heartbeats, thresholds.

Writes never block the caller: they go into a bounded queue that a background thread
sends to Redis in ``MULTI``/``EXEC`` batches. When Redis is unreachable the batch is kept
and retried with backoff, new writes queue up (and are dropped and counted once the queue
is full), and the store reports itself stale. Scoring and Kafka publishing do not depend
on it.

Keys (all of one model share one hash tag, so they live in one Redis Cluster slot)::

    <ns>:{<model>}:alerts              stream of recent alerts, XADD MAXLEN ~ stream_maxlen
    <ns>:{<model>}:rate:<minute>       hash "<detector>|<severity>" -> count     TTL counter_ttl_s
    <ns>:{<model>}:hist:<det>:<hour>   hash bucket index -> count                 TTL counter_ttl_s
    <ns>:{<model>}:detectors           set of detector names                      TTL state_ttl_s
    <ns>:{<model>}:thresholds          hash detector -> DetectorThreshold JSON    TTL state_ttl_s
    <ns>:{<model>}:instances           set of sidecar instances                   TTL state_ttl_s
    <ns>:{<model>}:hb:<instance>       Heartbeat JSON                             TTL heartbeat_ttl_s

``<minute>`` and ``<hour>`` are unix seconds // 60 and // 3600.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

from alerts.backoff import Backoff
from alerts.config import RedisConnection, StoreConfig
from alerts.dashboard.models import (
    AlertRates,
    DashboardSummary,
    DetectorThreshold,
    Heartbeat,
    InstanceHealth,
    RateSeries,
    ScoreHistogram,
    StoreHealth,
    health_details,
    histogram_bucket,
)
from alerts.schema import Alert, Severity

log = logging.getLogger(__name__)

HealthProvider = Callable[[], dict[str, Any]]

_BATCH = 500
_HIST_HOURS = 24


@dataclass(frozen=True)
class StoreKeys:
    """Redis key names of one model."""

    namespace: str
    model: str

    @property
    def prefix(self) -> str:
        tag = self.model.replace("{", "(").replace("}", ")")
        return f"{self.namespace}:{{{tag}}}:"

    @property
    def stream(self) -> str:
        return self.prefix + "alerts"

    def rate(self, minute: int) -> str:
        return f"{self.prefix}rate:{minute}"

    def hist(self, detector: str, hour: int) -> str:
        return f"{self.prefix}hist:{detector}:{hour}"

    @property
    def detectors(self) -> str:
        return self.prefix + "detectors"

    @property
    def thresholds(self) -> str:
        return self.prefix + "thresholds"

    @property
    def instances(self) -> str:
        return self.prefix + "instances"

    def heartbeat(self, instance: str) -> str:
        return f"{self.prefix}hb:{instance}"


def rates_from_counters(
    minutes: list[int], counters: list[dict[str, int]], detectors: Iterable[str]
) -> AlertRates:
    """Assemble :class:`AlertRates` from per-minute ``{"<detector>|<severity>": count}`` dicts."""
    names = set(detectors)
    for c in counters:
        names.update(field.split("|", 1)[0] for field in c)
    series = []
    for det in sorted(names):
        by_sev = {s.value: [c.get(f"{det}|{s.value}", 0) for c in counters] for s in Severity}
        total = [sum(v[i] for v in by_sev.values()) for i in range(len(minutes))]
        series.append(RateSeries(detector=det, total=total, by_severity=by_sev))
    return AlertRates(minutes=[m * 60 for m in minutes], series=series)


class DashboardStore:
    """Redis-backed dashboard data of one model; writes are asynchronous and never block.

    ``client`` may be any ``redis.Redis``-compatible client; by default one is built from
    ``connection``. Call :meth:`start` (or use it as a context manager) to run the writer.
    """

    backend = "redis"

    def __init__(
        self,
        config: StoreConfig,
        connection: RedisConnection | None = None,
        *,
        client: Any = None,
        health_provider: HealthProvider | None = None,
    ) -> None:
        self.config = config
        self.model = config.model
        self.keys = StoreKeys(config.namespace, config.model)
        self._client = client if client is not None else (connection or RedisConnection()).client()
        self._health_provider = health_provider
        self._queue: queue.Queue[tuple[float, tuple[Any, ...]]] = queue.Queue(maxsize=config.queue_size)
        self._retry: list[tuple[float, tuple[Any, ...]]] = []
        self._backoff = Backoff(config.retry_initial_s, config.retry_max_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = datetime.now(UTC)
        self._thresholds_latest: dict[str, str] | None = None
        self._lock = threading.Lock()
        self._last_ok_at: float | None = None
        self._last_error_at: float | None = None
        self._last_error: str | None = None
        self._writes = 0
        self._write_failures = 0
        self._read_failures = 0
        self._dropped = 0
        self._streak = 0
        self._last_summary: DashboardSummary | None = None
        self._idle = threading.Event()
        self._idle.set()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="alerts-redis-store", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the writer after trying (up to ``timeout_s``) to send what is queued."""
        self.flush(timeout_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued write reached Redis; ``False`` on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.empty() and not self._retry and self._idle.is_set():
                return True
            time.sleep(0.01)
        return False

    def set_health_provider(self, provider: HealthProvider | None) -> None:
        """Callable returning gauges (numbers, strings) put into each heartbeat's ``details``."""
        self._health_provider = provider

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes (non-blocking) --------------------------------------------------------------

    def record_alert(self, alert: Alert) -> bool:
        """Queue an alert for the stream and the per-minute counters (detections only: a drift event is
        listed, not counted); ``False`` if dropped."""
        minute = int(alert.time.timestamp()) // 60 if alert.kind == "detection" else None
        return self._enqueue(("alert", alert.to_json(), alert.detector, alert.severity.value, minute))

    def observe_scores(self, detector: str, scores: Iterable[float], threshold: float) -> bool:
        """Queue score observations (any, not only alerts) for the detector's histogram."""
        counts = Counter(histogram_bucket(float(s), threshold, self.config.histogram_edges) for s in scores)
        if not counts:
            return True
        return self._enqueue(("scores", detector, int(time.time()) // 3600, dict(counts)))

    def set_thresholds(self, thresholds: Sequence[DetectorThreshold]) -> bool:
        """Replace the detector thresholds shown on the dashboard (re-sent after a Redis recovery)."""
        mapping = {t.detector: t.model_dump_json() for t in thresholds}
        with self._lock:
            self._thresholds_latest = mapping
        return self._enqueue(("thresholds", mapping))

    def heartbeat(self) -> bool:
        """Queue a heartbeat now (the writer also sends one every ``heartbeat_interval_s``)."""
        return self._enqueue(self._heartbeat_op())

    def _enqueue(self, op: tuple[Any, ...]) -> bool:
        try:
            self._queue.put_nowait((time.time(), op))
            return True
        except queue.Full:
            with self._lock:
                self._dropped += 1
            return False

    def _heartbeat_op(self) -> tuple[Any, ...]:
        details = health_details(self._health_provider)
        hb = Heartbeat(
            instance=self.config.instance,
            model=self.model,
            time=datetime.now(UTC),
            started_at=self._started_at,
            details=details,
        )
        return ("heartbeat", hb.model_dump_json())

    # --- writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        next_heartbeat = 0.0
        writer_failing = False
        resend_state = False
        while not self._stop.is_set():
            batch = self._retry
            if not batch:
                timeout = max(0.0, min(0.5, next_heartbeat - time.monotonic()))
                try:
                    batch = [self._queue.get(timeout=timeout)] if timeout > 0 else []
                except queue.Empty:
                    batch = []
                while len(batch) < _BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            if resend_state:
                # Redis may have restarted empty: put back what is not derived from the alert flow.
                resend_state = False
                with self._lock:
                    mapping = self._thresholds_latest
                if mapping is not None:
                    batch = [*batch, (time.time(), ("thresholds", mapping))]
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + self.config.heartbeat_interval_s
                batch = [b for b in batch if b[1][0] != "heartbeat"] + [(time.time(), self._heartbeat_op())]
            if not batch:
                continue
            self._idle.clear()
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - redis errors, OSError, timeouts
                failures = self._note_failure(exc, write=True)
                self._retry = batch
                writer_failing = True
                self._idle.set()
                self._stop.wait(self._backoff.delay(failures))
                continue
            self._note_ok()
            resend_state, writer_failing = writer_failing, False
            self._retry = []
            with self._lock:
                self._writes += len(batch)
            self._idle.set()

    def _write(self, batch: list[tuple[float, tuple[Any, ...]]]) -> None:
        cfg, k = self.config, self.keys
        pipe = self._client.pipeline(transaction=True)
        for _, op in batch:
            kind = op[0]
            if kind == "alert":
                _, payload, detector, severity, minute = op
                pipe.xadd(k.stream, {"alert": payload}, maxlen=cfg.stream_maxlen, approximate=True)
                pipe.expire(k.stream, cfg.state_ttl_s)
                if minute is not None:
                    pipe.hincrby(k.rate(minute), f"{detector}|{severity}", 1)
                    pipe.expire(k.rate(minute), cfg.counter_ttl_s)
                pipe.sadd(k.detectors, detector)
                pipe.expire(k.detectors, cfg.state_ttl_s)
            elif kind == "scores":
                _, detector, hour, counts = op
                for bucket, n in counts.items():
                    pipe.hincrby(k.hist(detector, hour), str(bucket), n)
                pipe.expire(k.hist(detector, hour), cfg.counter_ttl_s)
                pipe.sadd(k.detectors, detector)
                pipe.expire(k.detectors, cfg.state_ttl_s)
            elif kind == "thresholds":
                mapping = op[1]
                pipe.delete(k.thresholds)
                if mapping:
                    pipe.hset(k.thresholds, mapping=mapping)
                    pipe.expire(k.thresholds, cfg.state_ttl_s)
                    pipe.sadd(k.detectors, *mapping)
                    pipe.expire(k.detectors, cfg.state_ttl_s)
            elif kind == "heartbeat":
                pipe.set(k.heartbeat(self.config.instance), op[1], ex=cfg.heartbeat_ttl_s)
                pipe.sadd(k.instances, self.config.instance)
                pipe.expire(k.instances, cfg.state_ttl_s)
        pipe.execute()

    def _note_ok(self) -> None:
        with self._lock:
            recovered = self._last_error_at is not None and (self._last_ok_at or 0) < self._last_error_at
            self._last_ok_at = time.time()
            self._streak = 0
        if recovered:
            log.info("dashboard store: Redis reachable again")

    def _note_failure(self, exc: BaseException, *, write: bool) -> int:
        with self._lock:
            first = self._last_error_at is None or (self._last_ok_at or 0) >= self._last_error_at
            self._last_error_at = time.time()
            self._last_error = f"{type(exc).__name__}: {exc}"
            if write:
                self._write_failures += 1
                self._streak += 1
            else:
                self._read_failures += 1
            streak = self._streak
        if first:
            log.warning("dashboard store: Redis unreachable (%s); the dashboard is stale", self._last_error)
        return max(1, min(streak, 20))

    # --- staleness --------------------------------------------------------------------------

    @property
    def is_stale(self) -> bool:
        """True when the last contact with Redis failed, or writes have waited longer than ``stale_after_s``."""
        return self.stale_reason is not None

    @property
    def stale_reason(self) -> str | None:
        with self._lock:
            last_ok, last_err, err = self._last_ok_at, self._last_error_at, self._last_error
        if last_err is not None and (last_ok is None or last_err >= last_ok):
            return f"Redis unreachable since {_iso(last_err)}: {err}"
        oldest = self._oldest_waiting()
        if oldest is not None and time.time() - oldest > self.config.stale_after_s:
            return f"writes to Redis are {time.time() - oldest:.0f}s behind"
        return None

    def _oldest_waiting(self) -> float | None:
        retry = self._retry  # the writer thread replaces this list; read it once
        if retry:
            return retry[0][0]
        with self._queue.mutex:
            return self._queue.queue[0][0] if self._queue.queue else None

    def store_health(self) -> StoreHealth:
        reason = self.stale_reason
        with self._lock:
            return StoreHealth(
                backend="redis",
                stale=reason is not None,
                stale_reason=reason,
                last_ok_at=None
                if self._last_ok_at is None
                else datetime.fromtimestamp(self._last_ok_at, UTC),
                queue_depth=self._queue.qsize() + len(self._retry),
                writes_total=self._writes,
                write_failures_total=self._write_failures,
                dropped_total=self._dropped,
            )

    # --- reads (synchronous, for the dashboard) ---------------------------------------------

    def recent_alerts(self, limit: int = 50) -> list[Alert]:
        """Most recent alerts first; malformed stream entries are skipped."""
        return self._read(lambda: self._parse_stream(self._client.xrevrange(self.keys.stream, count=limit)))

    def rates(self, minutes: int = 60) -> AlertRates:
        """Alerts per minute per detector, for the last ``minutes`` minutes (current minute last)."""

        def read() -> AlertRates:
            mins = self._minutes(minutes)
            pipe = self._client.pipeline(transaction=False)
            for m in mins:
                pipe.hgetall(self.keys.rate(m))
            pipe.smembers(self.keys.detectors)
            *counters, detectors = pipe.execute()
            return rates_from_counters(mins, [_decode_counts(c) for c in counters], _decode_set(detectors))

        return self._read(read)

    def thresholds(self) -> list[DetectorThreshold]:
        return self._read(lambda: _parse_thresholds(self._client.hgetall(self.keys.thresholds)))

    def histograms(self, hours: int = _HIST_HOURS) -> list[ScoreHistogram]:
        def read() -> list[ScoreHistogram]:
            detectors = sorted(_decode_set(self._client.smembers(self.keys.detectors)))
            return self._read_histograms(detectors, hours)

        return self._read(read)

    def instances(self) -> list[InstanceHealth]:
        def read() -> list[InstanceHealth]:
            names = sorted(_decode_set(self._client.smembers(self.keys.instances)))
            raw = self._client.mget([self.keys.heartbeat(n) for n in names]) if names else []
            return _parse_heartbeats(raw)

        return self._read(read)

    def summary(self, minutes: int = 60, recent: int = 50) -> DashboardSummary:
        """All dashboard data in two round trips. When Redis fails, the last good summary is
        returned marked stale (or an empty one if there is none)."""
        now = datetime.now(UTC)
        try:
            mins = self._minutes(minutes)
            pipe = self._client.pipeline(transaction=False)
            pipe.xrevrange(self.keys.stream, count=recent)
            for m in mins:
                pipe.hgetall(self.keys.rate(m))
            pipe.hgetall(self.keys.thresholds)
            pipe.smembers(self.keys.detectors)
            pipe.smembers(self.keys.instances)
            stream, *rest = pipe.execute()
            counters, (thresholds, detectors, instances) = rest[: len(mins)], rest[len(mins) :]
            detector_names = sorted(_decode_set(detectors))
            instance_names = sorted(_decode_set(instances))
            heartbeats = (
                self._client.mget([self.keys.heartbeat(n) for n in instance_names]) if instance_names else []
            )
            histograms = self._read_histograms(detector_names, _HIST_HOURS)
        except Exception as exc:  # noqa: BLE001
            self._note_failure(exc, write=False)
            health = self.store_health()
            if self._last_summary is not None:
                last = self._last_summary
                aged = [
                    i.model_copy(update={"age_s": max(0.0, (now - i.time).total_seconds())})
                    for i in last.instances
                ]
                return last.model_copy(
                    update={
                        "generated_at": now,
                        "stale": True,
                        "stale_reason": health.stale_reason,
                        "store": health,
                        "instances": aged,
                    }
                )
            return DashboardSummary(
                model=self.model,
                generated_at=now,
                stale=True,
                stale_reason=health.stale_reason,
                rates=AlertRates(minutes=[m * 60 for m in self._minutes(minutes)], series=[]),
                recent=[],
                thresholds=[],
                histograms=[],
                instances=[],
                store=health,
            )
        self._note_ok()
        health = self.store_health()
        summary = DashboardSummary(
            model=self.model,
            generated_at=now,
            stale=health.stale,
            stale_reason=health.stale_reason,
            data_as_of=now,
            rates=rates_from_counters(mins, [_decode_counts(c) for c in counters], detector_names),
            recent=self._parse_stream(stream),
            thresholds=_parse_thresholds(thresholds),
            histograms=histograms,
            instances=_parse_heartbeats(heartbeats),
            store=health,
        )
        self._last_summary = summary
        return summary

    def _read_histograms(self, detectors: list[str], hours: int) -> list[ScoreHistogram]:
        if not detectors:
            return []
        now_hour = int(time.time()) // 3600
        pipe = self._client.pipeline(transaction=False)
        for det in detectors:
            for h in range(now_hour - hours + 1, now_hour + 1):
                pipe.hgetall(self.keys.hist(det, h))
        raw = pipe.execute()
        edges = list(self.config.histogram_edges)
        out = []
        for i, det in enumerate(detectors):
            counts = [0] * len(edges)
            for h in raw[i * hours : (i + 1) * hours]:
                for bucket, n in _decode_counts(h).items():
                    if 0 <= int(bucket) < len(edges):
                        counts[int(bucket)] += n
            if any(counts):
                out.append(ScoreHistogram(detector=det, edges=edges, counts=counts))
        return out

    def _read(self, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except Exception as exc:
            self._note_failure(exc, write=False)
            raise
        self._note_ok()
        return result

    @staticmethod
    def _minutes(n: int) -> list[int]:
        now_min = int(time.time()) // 60
        return list(range(now_min - n + 1, now_min + 1))

    @staticmethod
    def _parse_stream(entries: list[tuple[Any, dict[Any, Any]]]) -> list[Alert]:
        alerts = []
        for _id, fields in entries:
            payload = fields.get(b"alert", fields.get("alert"))
            try:
                alerts.append(Alert.from_json(payload))
            except Exception:  # noqa: BLE001 - a bad entry must not break the dashboard
                log.debug("skipping malformed stream entry %r", _id)
        return alerts


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _decode_counts(raw: dict[Any, Any]) -> dict[str, int]:
    return {_text(k): int(v) for k, v in (raw or {}).items()}


def _decode_set(raw: Iterable[Any]) -> set[str]:
    return {_text(v) for v in (raw or ())}


def _parse_thresholds(raw: dict[Any, Any]) -> list[DetectorThreshold]:
    out = []
    for _det, value in sorted((raw or {}).items()):
        try:
            out.append(DetectorThreshold.model_validate_json(value))
        except Exception:  # noqa: BLE001
            log.debug("skipping malformed threshold entry %r", _det)
    return out


def _parse_heartbeats(raw: list[Any]) -> list[InstanceHealth]:
    now = datetime.now(UTC)
    out = []
    for value in raw:
        if value is None:
            continue
        try:
            hb = Heartbeat.model_validate_json(value)
        except Exception:  # noqa: BLE001
            log.debug("skipping malformed heartbeat %r", value)
            continue
        out.append(InstanceHealth(**hb.model_dump(), age_s=max(0.0, (now - hb.time).total_seconds())))
    return out
