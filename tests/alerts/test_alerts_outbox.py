"""The SQLite outbox: durability settings, order, per-request heads, backoff, the full-outbox policy."""

from __future__ import annotations

import sqlite3
import time

import pytest
from alerts_testkit import make_alert

from alerts.config import OutboxConfig
from alerts.outbox import AlertOutbox, AppendOutcome


@pytest.fixture()
def outbox(tmp_path):
    box = AlertOutbox(tmp_path / "outbox.sqlite3")
    yield box
    box.close()


def test_wal_and_full_sync_are_in_force(outbox):
    assert outbox.pragmas() == {"journal_mode": "wal", "synchronous": 2}  # 2 = FULL


def test_rows_survive_reopen_in_order(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    alerts = [make_alert(i) for i in range(5)]
    with AlertOutbox(path) as box:
        assert box.append_many(alerts) == [AppendOutcome.STORED] * 5
        box.mark_delivered([box.heads(10)[0].seq])
    with AlertOutbox(path) as box:
        assert box.pending_event_ids() == [a.event_id for a in alerts[1:]]
        assert [r.event_id for r in box.heads(10)] == [a.event_id for a in alerts[1:]]


def test_duplicate_event_id_is_stored_once(outbox):
    alert = make_alert()
    assert outbox.append(alert) is AppendOutcome.STORED
    assert outbox.append(alert) is AppendOutcome.DUPLICATE
    assert outbox.pending_count() == 1
    assert outbox.stats().duplicates_total == 1


def test_heads_give_one_row_per_request_in_order(outbox):
    a1, b1, a2, c1, a3 = (make_alert(i, request_id=r) for i, r in enumerate(["a", "b", "a", "c", "a"]))
    outbox.append_many([a1, b1, a2, c1, a3])
    heads = outbox.heads(10)
    assert [h.event_id for h in heads] == [a1.event_id, b1.event_id, c1.event_id]
    # While a1 is in flight nothing else of request a is handed out.
    assert [h.event_id for h in outbox.heads(10, exclude=[heads[0].seq])] == [b1.event_id, c1.event_id]
    outbox.mark_delivered([heads[0].seq])
    assert [h.event_id for h in outbox.heads(10)] == [b1.event_id, a2.event_id, c1.event_id]


def test_failed_head_blocks_its_request_until_backoff_expires(outbox):
    a1, a2, b1 = make_alert(1, request_id="a"), make_alert(2, request_id="a"), make_alert(3, request_id="b")
    outbox.append_many([a1, a2, b1])
    head = outbox.heads(1)[0]
    now = time.time()
    outbox.mark_failed([(head.seq, "KafkaTimeoutError: broker down", now + 60)])
    assert [h.event_id for h in outbox.heads(10, now=now)] == [b1.event_id]  # a2 must wait behind a1
    assert [h.event_id for h in outbox.heads(10, now=now + 61)] == [a1.event_id, b1.event_id]
    assert outbox.attempts_of(head.seq) == 1
    assert outbox.next_due_at() == pytest.approx(now, abs=5)


def test_full_outbox_drops_low_first_and_never_high(tmp_path):
    box = AlertOutbox(OutboxConfig(path=str(tmp_path / "o.sqlite3"), max_rows=4))
    low = [make_alert(i, severity="low") for i in range(2)]
    medium = make_alert(10, severity="medium")
    high = [make_alert(20 + i, severity="high") for i in range(3)]
    assert box.append_many([*low, medium, high[0]]) == [AppendOutcome.STORED] * 4
    # Full. A high alert evicts the oldest low one, then the next low one.
    assert box.append(high[1]) is AppendOutcome.STORED
    assert box.append(high[2]) is AppendOutcome.STORED
    assert set(box.pending_event_ids()) == {medium.event_id, *(h.event_id for h in high)}
    # A low alert cannot evict medium/high rows: it is refused.
    refused = make_alert(30, severity="low")
    assert box.append(refused) is AppendOutcome.DROPPED
    # A medium alert evicts the medium row (oldest of its own level).
    newer_medium = make_alert(31, severity="medium")
    assert box.append(newer_medium) is AppendOutcome.STORED
    # A high alert evicts that medium row; then only high rows are left, and a critical
    # alert is stored above the bound, never dropped.
    assert box.append(make_alert(40, severity="high")) is AppendOutcome.STORED
    assert newer_medium.event_id not in box.pending_event_ids()
    critical = make_alert(41, severity="critical")
    assert box.append(critical) is AppendOutcome.STORED
    stats = box.stats()
    assert stats.pending == 5
    assert critical.event_id in box.pending_event_ids()
    assert stats.dropped_total == {"low": 3, "medium": 2, "high": 0, "critical": 0}
    assert stats.over_bound_total == 1
    box.close()
    # Drop counters are persisted with the outbox.
    with AlertOutbox(OutboxConfig(path=str(tmp_path / "o.sqlite3"), max_rows=4)) as again:
        assert again.stats().dropped_total["low"] == 3


def test_byte_bound_and_delivered_rows_make_room_first(tmp_path):
    size = len(make_alert(0).to_json())
    box = AlertOutbox(OutboxConfig(path=str(tmp_path / "o.sqlite3"), max_bytes=int(size * 3.5)))
    first = [make_alert(i, severity="low") for i in range(3)]
    box.append_many(first)
    box.mark_delivered([h.seq for h in box.heads(10)])
    # Delivered rows are deleted to make room before any pending row is evicted.
    more = [make_alert(10 + i, severity="low") for i in range(3)]
    assert box.append_many(more) == [AppendOutcome.STORED] * 3
    assert box.stats().dropped_total["low"] == 0
    assert box.stats().bytes <= size * 3.5
    box.close()


def test_prune_delivered_keeps_recent_and_pending(tmp_path):
    box = AlertOutbox(OutboxConfig(path=str(tmp_path / "o.sqlite3"), delivered_retention_s=100))
    box.append_many([make_alert(i) for i in range(3)])
    heads = box.heads(10)
    box.mark_delivered([heads[0].seq], now=time.time() - 1000)
    box.mark_delivered([heads[1].seq])
    assert box.prune_delivered() == 1
    stats = box.stats()
    assert (stats.pending, stats.delivered_retained) == (1, 1)
    box.close()


# --------------------------------------------------------------------------------- failed writes
def _sql(path, statement: str) -> None:
    """Run a statement through a second, independent connection to the same outbox file."""
    db = sqlite3.connect(str(path), isolation_level=None, timeout=10)
    try:
        db.execute(statement)
    finally:
        db.close()


def _committed(path) -> tuple[int, int]:
    """Rows and payload bytes that another connection sees committed in the file."""
    db = sqlite3.connect(str(path), timeout=10)
    try:
        return db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
    finally:
        db.close()


def test_failed_writes_roll_back_and_the_outbox_goes_on(tmp_path):
    """A failing UPDATE in mark_delivered / mark_failed, a failing INSERT in the middle of a group, a failing
    DELETE in prune (each injected with a real SQLite trigger) roll back; the following writes succeed."""
    path = tmp_path / "outbox.sqlite3"
    box = AlertOutbox(OutboxConfig(path=str(path), delivered_retention_s=0))
    first = [make_alert(i) for i in range(3)]
    box.append_many(first)
    heads = box.heads(10)

    _sql(path, "CREATE TRIGGER fail_update BEFORE UPDATE ON outbox BEGIN SELECT RAISE(ABORT, 'injected'); END")
    with pytest.raises(sqlite3.IntegrityError, match="injected"):
        box.mark_delivered([heads[0].seq, heads[1].seq])
    with pytest.raises(sqlite3.IntegrityError, match="injected"):
        box.mark_failed([(heads[2].seq, "KafkaTimeoutError", time.time() + 1)])
    assert box.stats().write_failures_total == 2
    assert box.stats().last_write_error == "IntegrityError: injected"

    # The connection is not left inside a transaction: appends go on and are committed for everyone.
    later = [make_alert(10 + i) for i in range(4)]
    assert box.append_many(later[:2]) == [AppendOutcome.STORED] * 2
    assert box.append(later[2]) is AppendOutcome.STORED
    assert _committed(path)[0] == 6
    assert box.stats().last_write_error is None
    _sql(path, "DROP TRIGGER fail_update")
    assert box.mark_delivered([heads[0].seq]) == 1
    assert box.stats().delivered_total == 1

    # A group whose second insert fails is rolled back whole, and the outbox's own counts stay true.
    _sql(path, f"CREATE TRIGGER fail_insert BEFORE INSERT ON outbox WHEN NEW.event_id = '{later[3].event_id}'"
               " BEGIN SELECT RAISE(ABORT, 'injected insert'); END")
    with pytest.raises(sqlite3.IntegrityError, match="injected insert"):
        box.append_many([make_alert(20), later[3]])
    _sql(path, "DROP TRIGGER fail_insert")
    rows, size = _committed(path)
    assert rows == 6 and box.stats().bytes == size
    _sql(path, "CREATE TRIGGER fail_delete BEFORE DELETE ON outbox BEGIN SELECT RAISE(ABORT, 'injected'); END")
    with pytest.raises(sqlite3.IntegrityError):
        box.prune_delivered(now=time.time() + 10)
    _sql(path, "DROP TRIGGER fail_delete")
    assert box.append(later[3]) is AppendOutcome.STORED
    assert box.prune_delivered(now=time.time() + 10) == 1
    assert box.stats().write_failures_total == 4
    assert box.pending_event_ids() == [a.event_id for a in [*first[1:], *later]]
    box.close()


def test_a_full_database_fails_the_append_with_its_own_error_and_recovers(tmp_path):
    """SQLite reports the database full (its page limit reached) and rolls the transaction back itself;
    the append raises that error (not a failed ROLLBACK), and appends succeed once there is room."""
    path = tmp_path / "outbox.sqlite3"
    box = AlertOutbox(path)
    box.append_many([make_alert(i) for i in range(5)])
    with box._lock:  # the page limit is a setting of the outbox's own connection
        pages = box._db.execute("PRAGMA page_count").fetchone()[0]
        box._db.execute(f"PRAGMA max_page_count = {pages}")
    big = [make_alert(100 + i, request_id=f"big-{i}") for i in range(40)]
    with pytest.raises(sqlite3.OperationalError, match="full"):
        box.append_many(big)
    stats = box.stats()
    assert stats.last_write_error == "OperationalError: database or disk is full"
    assert (stats.pending, stats.bytes) == _committed(path)
    with box._lock:
        box._db.execute("PRAGMA max_page_count = 1073741823")
    assert box.append_many(big) == [AppendOutcome.STORED] * 40
    assert box.stats().pending == 45 and box.stats().last_write_error is None
    box.close()
