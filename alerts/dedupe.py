"""Bounded memory of recently seen event ids, for at-least-once consumers."""

from __future__ import annotations

from collections import OrderedDict


class DedupeWindow:
    """Remembers the last ``capacity`` event ids; :meth:`seen` says whether one came before.

    Duplicates of at-least-once delivery arrive close together (a redelivery after a
    rebalance, a resend after a lost acknowledgement), so a window of recent ids catches
    them; a consumer that must dedupe across restarts keeps its own durable record.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("dedupe capacity must be at least 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        """True if ``event_id`` is in the window; otherwise remember it and return False."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._ids)
