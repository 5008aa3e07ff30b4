"""Turning an HTTP body into a validated ``ActivationBatch``, with the precise refusal for each problem.

Each problem raises an ``IngestError`` (``monitor.service.refusals``: 415 for the content type, 413 for a
limit, checked before allocation, 400 for anything malformed), which names what was wrong.
"""

from __future__ import annotations

import json
import struct

from monitor.service.refusals import IngestError
from monitor.wire import ActivationBatch, WireFormatError, WireLimits

CONTENT_TYPES = ("application/vnd.safetensors", "application/octet-stream")
"""Accepted ``Content-Type`` values of ``POST /v1/activations``."""


def check_content_type(value: str | None) -> None:
    """Raise 415 unless ``value`` is one of ``CONTENT_TYPES`` (parameters such as ``; charset`` ignored)."""
    media = (value or "").split(";", 1)[0].strip().lower()
    if media not in CONTENT_TYPES:
        shown = repr(value) if value else "no Content-Type"
        raise IngestError(f"{shown} is not accepted; send the safetensors wire format as "
                          f"{' or '.join(CONTENT_TYPES)}", status=415, error="unsupported_media_type",
                          reason="content_type")


def check_content_length(value: str | None, max_bytes: int) -> None:
    """Raise 413 when the declared length exceeds ``max_bytes`` (400 when it is not a number)."""
    if value is None:
        return
    try:
        n = int(value)
    except ValueError:
        raise IngestError(f"Content-Length {value!r} is not a number", error="malformed_request") from None
    if n > max_bytes:
        raise _too_large(f"body of {n} bytes exceeds the limit of {max_bytes} bytes; send smaller batches")


def _too_large(detail: str) -> IngestError:
    return IngestError(detail, status=413, error="too_large", reason="too_large")


def body_too_large(size: int, max_bytes: int) -> IngestError:
    return _too_large(f"body exceeds the limit of {max_bytes} bytes (read {size} so far); send smaller batches")


def parse_batch(body: bytes | bytearray, limits: WireLimits) -> ActivationBatch:
    """Validate and decode the wire format. Raises ``IngestError`` (413 for limits, else 400)."""
    try:
        return ActivationBatch.from_bytes(body, limits)
    except WireFormatError as exc:
        over = _limit_exceeded(body, limits)
        if over:
            raise _too_large(over) from None
        raise IngestError(f"invalid activation batch: {exc}") from None


def _limit_exceeded(body: bytes | bytearray, limits: WireLimits) -> str | None:
    """On the error path only: which limit (if any) the declared sizes exceed, so the answer can be 413."""
    if len(body) > limits.max_bytes:
        return f"body of {len(body)} bytes exceeds the limit of {limits.max_bytes} bytes"
    if len(body) < 8:
        return None
    (header_len,) = struct.unpack("<Q", bytes(body[:8]))
    if 8 + header_len > len(body):
        return None  # a length the body cannot hold: garbage or truncation, not a limit
    if header_len > limits.max_header_bytes:
        return (f"safetensors header of {header_len} bytes exceeds the limit of {limits.max_header_bytes} bytes "
                "(metadata included); send fewer requests per batch or shorter ids")
    try:
        header = json.loads(bytes(body[8 : 8 + header_len]))
        rows = "latents" if isinstance(header, dict) and "latents" in header else "activations"
        shape = header[rows]["shape"]
        n_tokens, width = int(shape[0]), int(shape[1])
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return None
    if n_tokens > limits.max_tokens:
        return f"batch declares {n_tokens} tokens; the limit is {limits.max_tokens} tokens per batch"
    if width > limits.max_d_in:
        what = "d_in" if rows == "activations" else "n_latents"
        return f"batch declares {what}={width}; the limit is {limits.max_d_in}"
    try:
        final = header.get("final")
        if isinstance(final, dict):  # schema v2: one final flag per request
            n_requests = int(final["shape"][0])
        else:  # schema v1: a JSON list in the metadata
            requests = json.loads(header["__metadata__"]["requests"])
            n_requests = len(requests) if isinstance(requests, list) else 0
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return None
    if n_requests > limits.max_requests:
        return f"batch carries {n_requests} requests; the limit is {limits.max_requests} per batch"
    return None
