"""The durable outbox: an alert counts as emitted once it is committed here.

SQLite in WAL mode with ``synchronous=FULL``: a committed append survives process death
and power loss. The Kafka publisher drains pending rows in order and marks them delivered
when the broker acknowledges them; a restarted process delivers what was left pending.

Full-outbox policy (bounds are ``max_rows`` rows and ``max_bytes`` payload bytes):

1. delivered rows are deleted first (they are only kept for inspection);
2. then pending rows are evicted, lowest severity first and oldest first within a
   severity, but only ``low`` and ``medium`` rows, and never a row more severe than the
   alert being added;
3. if that frees no room, a ``low``/``medium`` alert is refused (``DROPPED``), while a
   ``high``/``critical`` alert is stored anyway, above the bound (counted as over-bound).

So high and critical alerts are never dropped; every drop is counted per severity, and
the counts are persisted in the database.

Every write goes through one transaction helper (``_transaction``): ``BEGIN IMMEDIATE``, the
statements, ``COMMIT``; on any exception (disk full, I/O error, a failed statement, a failed
commit) it rolls back whatever is still open, so a failed write leaves neither a half-written
transaction nor a connection stuck inside one: the next write starts clean. A failed write is
counted (``OutboxStats.write_failures_total``) and ``OutboxStats.last_write_error`` holds its error
until a write succeeds again.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from alerts.config import OutboxConfig
from alerts.schema import Alert, Severity

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    request_id      TEXT    NOT NULL,
    detector        TEXT    NOT NULL,
    severity        INTEGER NOT NULL,          -- Severity.rank: 0 low .. 3 critical
    payload         BLOB    NOT NULL,          -- the alert's wire JSON
    size            INTEGER NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered')),
    attempts        INTEGER NOT NULL DEFAULT 0, -- finished send attempts (failed ones plus the acknowledged one)
    next_attempt_at REAL    NOT NULL,          -- unix seconds; pending rows are not sent before this
    created_at      REAL    NOT NULL,
    delivered_at    REAL,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS outbox_by_request ON outbox (state, request_id, seq);
CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox (state, seq);
CREATE TABLE IF NOT EXISTS outbox_counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# A pending row is a "head" when no earlier pending row has the same request id. Only heads
# are handed out, so alerts of one request reach Kafka in the order they were emitted.
_HEADS = """
SELECT seq, event_id, request_id, detector, severity, payload, attempts, created_at
FROM outbox AS o
WHERE state = 'pending'
  AND next_attempt_at <= :now
  AND seq NOT IN (SELECT value FROM json_each(:exclude))
  AND NOT EXISTS (
      SELECT 1 FROM outbox AS p
      WHERE p.state = 'pending' AND p.request_id = o.request_id AND p.seq < o.seq)
ORDER BY seq
LIMIT :limit
"""


class AppendOutcome(enum.StrEnum):
    """What :meth:`AlertOutbox.append` did with an alert."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    DROPPED = "dropped"


@dataclass(frozen=True)
class OutboxRow:
    """A pending alert handed to the publisher."""

    seq: int
    """Insertion order, unique."""
    event_id: str
    request_id: str
    detector: str
    severity: Severity
    payload: bytes
    """The alert's wire JSON."""
    attempts: int
    """Attempts finished so far."""
    created_at: float
    """Unix seconds when it was appended."""


@dataclass(frozen=True)
class OutboxStats:
    """Outbox gauges and counters."""

    pending: int
    """Rows waiting for a broker acknowledgement."""
    delivered_retained: int
    """Delivered rows not yet deleted."""
    bytes: int
    """Summed payload bytes of all rows."""
    oldest_pending_age_s: float | None
    """Age of the oldest pending row, in seconds; ``None`` when nothing is pending."""
    appended_total: int
    """Alerts stored since this process opened the outbox."""
    duplicates_total: int
    """Appends ignored since this process opened it because the event id was already stored."""
    delivered_total: int
    """Rows marked delivered since this process opened it."""
    failed_attempts_total: int
    """Send attempts that failed since this process opened it."""
    dropped_total: dict[str, int]
    """Alerts dropped by the full-outbox policy, per severity, over the database's whole life."""
    over_bound_total: int
    """High/critical alerts stored above the bound, over the database's whole life."""
    write_failures_total: int = 0
    """Write transactions (appends, delivery marks, pruning) that failed and were rolled back, since this
    process opened the outbox."""
    last_write_error: str | None = None
    """The error of the last write when it failed (e.g. ``OperationalError: database or disk is full``);
    ``None`` once a write has succeeded since."""


class AlertOutbox:
    """SQLite-backed queue of alerts awaiting Kafka delivery. Thread-safe.

    ``config`` may be an :class:`OutboxConfig` or just a path.
    """

    def __init__(self, config: OutboxConfig | str | Path) -> None:
        if not isinstance(config, OutboxConfig):
            config = OutboxConfig(path=str(config))
        self.config = config
        self._lock = threading.Lock()
        path = Path(config.path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal" and str(path) != ":memory:":
            raise RuntimeError(
                f"outbox {path}: SQLite refused WAL mode (got {mode!r}); use a local file system"
            )
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._rows, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
        ).fetchone()
        self._appended = 0
        self._duplicates = 0
        self._delivered = 0
        self._failed = 0
        self._write_failures = 0
        self._last_write_error: str | None = None
        self._closed = False

    # --- the one write transaction ----------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and run the block in ``BEGIN IMMEDIATE`` ... ``COMMIT``; roll back on any exception.

        Every write path uses this. SQLite itself may already have rolled back (it does on ``SQLITE_FULL``
        and some I/O errors), so ROLLBACK is issued only while a transaction is still open; the in-memory
        row and byte counts are re-read from the database after a rollback.
        """
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    self._rollback_locked()
                    raise
            except Exception as exc:
                self._write_failures += 1
                self._last_write_error = f"{type(exc).__name__}: {exc}"
                raise
            self._last_write_error = None

    def _rollback_locked(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the original error matters more; the connection stays usable
            log.warning("outbox rollback failed: %s", exc)
        try:
            self._rows, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
            ).fetchone()
        except sqlite3.Error as exc:
            log.warning("outbox: cannot re-read the row count after a rollback: %s", exc)

    # --- writing ----------------------------------------------------------------------------

    def append(self, alert: Alert) -> AppendOutcome:
        """Commit one alert (fsync'd) before returning; see the module docstring for the full policy."""
        return self.append_many([alert])[0]

    def append_many(self, alerts: Sequence[Alert]) -> list[AppendOutcome]:
        """Commit several alerts in one transaction (one fsync); outcomes in input order."""
        now = time.time()
        outcomes: list[AppendOutcome] = []
        with self._transaction():
            for alert in alerts:
                outcomes.append(self._append_locked(alert, now))
        with self._lock:
            for outcome in outcomes:
                if outcome is AppendOutcome.STORED:
                    self._appended += 1
                elif outcome is AppendOutcome.DUPLICATE:
                    self._duplicates += 1
        return outcomes

    def _append_locked(self, alert: Alert, now: float) -> AppendOutcome:
        if self._db.execute("SELECT 1 FROM outbox WHERE event_id = ?", (alert.event_id,)).fetchone():
            return AppendOutcome.DUPLICATE
        payload = alert.to_json()
        size = len(payload)
        rank = alert.severity.rank
        if not self._make_room_locked(size, rank):
            self._bump_counter_locked(f"dropped_{alert.severity.value}")
            return AppendOutcome.DROPPED
        self._db.execute(
            "INSERT INTO outbox (event_id, request_id, detector, severity, payload, size, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (alert.event_id, alert.request_id, alert.detector, rank, payload, size, now, now),
        )
        self._rows += 1
        self._bytes += size
        return AppendOutcome.STORED

    def _over(self, size: int) -> bool:
        return self._rows + 1 > self.config.max_rows or self._bytes + size > self.config.max_bytes

    def _make_room_locked(self, size: int, rank: int) -> bool:
        if not self._over(size):
            return True
        if self._db.execute("DELETE FROM outbox WHERE state = 'delivered'").rowcount:
            self._rows, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
            ).fetchone()
        evictable = min(rank, Severity.MEDIUM.rank)
        while self._over(size):
            victim = self._db.execute(
                "SELECT seq, size, severity FROM outbox WHERE state = 'pending' AND severity <= ?"
                " ORDER BY severity, seq LIMIT 1",
                (evictable,),
            ).fetchone()
            if victim is None:
                if rank >= Severity.HIGH.rank:
                    self._bump_counter_locked("over_bound")
                    return True
                return False
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (victim[0],))
            self._rows -= 1
            self._bytes -= victim[1]
            self._bump_counter_locked(f"dropped_{Severity.from_rank(victim[2]).value}")
        return True

    def _bump_counter_locked(self, name: str) -> None:
        self._db.execute(
            "INSERT INTO outbox_counters (name, value) VALUES (?, 1)"
            " ON CONFLICT(name) DO UPDATE SET value = value + 1",
            (name,),
        )

    # --- draining ---------------------------------------------------------------------------

    def heads(self, limit: int, now: float | None = None, exclude: Collection[int] = ()) -> list[OutboxRow]:
        """Up to ``limit`` due pending rows, oldest first, at most one per request id.

        A row is returned only when every earlier pending row of its request has been
        delivered, and its backoff has expired. ``exclude``: sequence numbers in flight.
        """
        if limit <= 0:
            return []
        exclude_json = "[" + ",".join(str(int(s)) for s in exclude) + "]"
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                _HEADS, {"now": time.time() if now is None else now, "exclude": exclude_json, "limit": limit}
            ).fetchall()
        return [
            OutboxRow(seq, eid, rid, det, Severity.from_rank(sev), bytes(payload), attempts, created)
            for seq, eid, rid, det, sev, payload, attempts, created in rows
        ]

    def mark_delivered(self, seqs: Iterable[int], now: float | None = None) -> int:
        """Mark rows delivered (one transaction); returns how many pending rows changed."""
        seqs = list(seqs)
        if not seqs:
            return 0
        now = time.time() if now is None else now
        changed = 0
        with self._transaction() as db:
            for seq in seqs:
                changed += db.execute(
                    "UPDATE outbox SET state = 'delivered', delivered_at = ?, attempts = attempts + 1,"
                    " last_error = NULL WHERE seq = ? AND state = 'pending'",
                    (now, seq),
                ).rowcount
        with self._lock:
            self._delivered += changed
        return changed

    def mark_failed(self, failures: Iterable[tuple[int, str, float]]) -> None:
        """Record failed attempts: ``(seq, error message, next_attempt_at unix seconds)`` each."""
        failures = list(failures)
        if not failures:
            return
        with self._transaction() as db:
            for seq, error, next_at in failures:
                db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                    " WHERE seq = ? AND state = 'pending'",
                    (error[:500], next_at, seq),
                )
        with self._lock:
            self._failed += len(failures)

    def attempts_of(self, seq: int) -> int:
        with self._lock:
            row = self._db.execute("SELECT attempts FROM outbox WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else 0

    def next_due_at(self) -> float | None:
        """Earliest ``next_attempt_at`` among pending rows, or ``None`` when none is pending."""
        with self._lock:
            self._check_open()
            return self._db.execute(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'"
            ).fetchone()[0]

    def prune_delivered(self, now: float | None = None) -> int:
        """Delete delivered rows older than ``delivered_retention_s``; returns how many."""
        cutoff = (time.time() if now is None else now) - self.config.delivered_retention_s
        with self._transaction() as db:
            n = db.execute("DELETE FROM outbox WHERE state = 'delivered' AND delivered_at < ?", (cutoff,)).rowcount
            if n:
                self._rows, self._bytes = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        return n

    # --- inspection -------------------------------------------------------------------------

    def pending_count(self) -> int:
        with self._lock:
            self._check_open()
            return self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0]

    def pending_event_ids(self) -> list[str]:
        """Event ids of pending rows, oldest first."""
        with self._lock:
            self._check_open()
            return [
                r[0]
                for r in self._db.execute("SELECT event_id FROM outbox WHERE state = 'pending' ORDER BY seq")
            ]

    def stats(self, now: float | None = None) -> OutboxStats:
        now = time.time() if now is None else now
        with self._lock:
            self._check_open()
            pending, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE state = 'pending'"
            ).fetchone()
            delivered = self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'delivered'").fetchone()[
                0
            ]
            counters = dict(self._db.execute("SELECT name, value FROM outbox_counters").fetchall())
            return OutboxStats(
                pending=pending,
                delivered_retained=delivered,
                bytes=self._bytes,
                oldest_pending_age_s=None if oldest is None else max(0.0, now - oldest),
                appended_total=self._appended,
                duplicates_total=self._duplicates,
                delivered_total=self._delivered,
                failed_attempts_total=self._failed,
                dropped_total={s.value: counters.get(f"dropped_{s.value}", 0) for s in Severity},
                over_bound_total=counters.get("over_bound", 0),
                write_failures_total=self._write_failures,
                last_write_error=self._last_write_error,
            )

    def pragmas(self) -> dict[str, str | int]:
        """Journal mode and synchronous level actually in force (for tests and diagnostics)."""
        with self._lock:
            return {
                "journal_mode": self._db.execute("PRAGMA journal_mode").fetchone()[0],
                "synchronous": self._db.execute("PRAGMA synchronous").fetchone()[0],
            }

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the alert outbox is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
