"""Exponential retry delays with jitter, shared by the publisher, the store writer and the webhook router."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number ``attempt`` (1-based): ``initial_s * 2**(attempt-1)``, capped, jittered."""

    initial_s: float
    """Delay after the first failure, in seconds."""
    max_s: float
    """Cap on the delay, in seconds."""
    jitter: float = 0.2
    """The delay is multiplied by a uniform factor in ``[1 - jitter, 1]`` so retries of many clients spread out."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (>= 1)."""
        base = min(self.max_s, self.initial_s * (2.0 ** max(0, min(attempt - 1, 62))))
        return base * (1.0 - self.jitter * random.random())
