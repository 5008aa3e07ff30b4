"""Slices of traffic a detector's threshold must hold on separately: short single-turn requests, long
multi-turn conversations and long documents have different benign score distributions."""

from __future__ import annotations

TRAFFIC_SLICES = ("single_turn", "multi_turn", "long")
"""Kinds of traffic a threshold must hold on separately (``traffic_slices``)."""
MULTI_TURN_MESSAGES = 8
LONG_TOKENS = 1000


def traffic_slices(n_messages: int, n_tokens: int) -> list[str]:
    """The slices a request belongs to: ``single_turn`` (one user turn, at most one reply, under
    ``LONG_TOKENS``), ``multi_turn`` (at least ``MULTI_TURN_MESSAGES`` messages), ``long`` (at least
    ``LONG_TOKENS`` tokens). A request of 3 to 7 messages and under 1,000 tokens is in none of them."""
    out = []
    if n_messages <= 2 and n_tokens < LONG_TOKENS:
        out.append("single_turn")
    if n_messages >= MULTI_TURN_MESSAGES:
        out.append("multi_turn")
    if n_tokens >= LONG_TOKENS:
        out.append("long")
    return out
