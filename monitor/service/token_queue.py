"""``TokenQueue``: a FIFO bounded both in items and in the tokens they carry; never blocks the producer.

Ingest puts with ``put_nowait`` and turns ``QueueFull`` into 429; the worker takes several items at
a time (up to a token budget) to encode them in one matrix product.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The queue holds ``max_items`` items or adding would exceed ``max_tokens`` tokens."""


class TokenQueue(Generic[T]):
    """Thread-safe FIFO of ``(item, tokens)``."""

    def __init__(self, max_items: int, max_tokens: int) -> None:
        self.max_items = max_items
        self.max_tokens = max_tokens
        self._items: deque[tuple[T, int]] = deque()
        self._tokens = 0
        self._cond = threading.Condition(threading.Lock())

    def put_nowait(self, item: T, tokens: int) -> None:
        """Append or raise ``QueueFull``. An item larger than ``max_tokens`` fits only into an empty queue."""
        with self._cond:
            if len(self._items) >= self.max_items or (self._items and self._tokens + tokens > self.max_tokens):
                raise QueueFull(f"{len(self._items)} batches / {self._tokens} tokens queued")
            self._items.append((item, tokens))
            self._tokens += tokens
            self._cond.notify()

    def get_many(self, max_tokens: int, timeout: float, accept: Callable[[T], bool] | None = None) -> list[T]:
        """Wait up to ``timeout`` s for an item, then take it and following ones while their tokens total
        at most ``max_tokens`` and ``accept(item)`` holds (the first is always taken, and ``accept`` sees it
        too, so it can remember what the group holds). ``[]`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)
            item, n = self._items.popleft()
            if accept is not None:
                accept(item)
            out, total = [item], n
            while self._items:
                nxt, m = self._items[0]
                if total + m > max_tokens or (accept is not None and not accept(nxt)):
                    break
                self._items.popleft()
                out.append(nxt)
                total += m
            self._tokens -= total
            return out

    @property
    def tokens(self) -> int:
        """Tokens waiting."""
        return self._tokens

    def __len__(self) -> int:
        return len(self._items)
