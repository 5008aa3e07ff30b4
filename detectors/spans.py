"""Token roles and detector spans: which tokens of a request a detector reads. The one definition.

Every tapped token has a role: ``ROLE_PROMPT`` (system and user turns, and the assistant header the
server writes before the model generates) or ``ROLE_RESPONSE`` (tokens the model wrote). A detector's
*span* picks the roles it scores:

    prompt       the prompt tokens only
    response     the response tokens only
    all          both
    final_turn   the response once the request has response tokens, else the prompt

Position 0 (the attention sink, a huge-norm outlier) is never scored, whatever the span. The wire
format, the live scorers (``detectors.scoring``, ``monitor.service.request_table``), the offline
features (``detectors.calibration.span_features``) and the API all take their span semantics from here.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

ROLE_PROMPT = 0
ROLE_RESPONSE = 1
ROLES = (ROLE_PROMPT, ROLE_RESPONSE)
ROLE_NAMES = {ROLE_PROMPT: "prompt", ROLE_RESPONSE: "response"}

Span = Literal["prompt", "response", "all", "final_turn"]
SPANS: tuple[str, ...] = get_args(Span)

_FIXED_ROLES = {"prompt": (ROLE_PROMPT,), "response": (ROLE_RESPONSE,), "all": ROLES}


def check_span(span: str) -> str:
    """``span`` if it is one of ``SPANS``; else ``ValueError`` naming the choices."""
    if span not in SPANS:
        raise ValueError(f"unknown span {span!r}; use one of {', '.join(SPANS)}")
    return span


def span_roles(span: str, has_response: bool) -> tuple[int, ...]:
    """The roles a detector with this span scores, for a request that has (or has not yet) response tokens."""
    if span == "final_turn":
        return (ROLE_RESPONSE,) if has_response else (ROLE_PROMPT,)
    return _FIXED_ROLES[check_span(span)]


def span_mask(roles: np.ndarray, positions: np.ndarray, span: str) -> np.ndarray:
    """``[n]`` bool: the tokens of one whole request (``roles [n]``, ``positions [n]``) that the span scores."""
    scored = positions > 0
    has_response = bool((scored & (roles == ROLE_RESPONSE)).any())
    return scored & np.isin(roles, span_roles(span, has_response))

