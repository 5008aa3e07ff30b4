"""Turning an HTTP body into a validated ``ActivationBatch``, with the precise refusal for each problem.

HTTP-agnostic: ``IngestRejected`` carries the status code and error code the API answers with.

    wrong content type                      415  unsupported_media_type
    body, header, tokens or requests over   413  too_large
    a limit (checked before allocation)
    anything malformed (garbage, truncated, 400  malformed_batch
    disagreeing shapes, NaN/Inf, ...)
"""

from __future__ import annotations

import json
import struct

from monitor.wire import ActivationBatch, WireFormatError, WireLimits

CONTENT_TYPES = ("application/vnd.safetensors", "application/octet-stream")
"""Accepted ``Content-Type`` values of ``POST /v1/activations``."""


class IngestRejected(Exception):
    """A body that is refused before it reaches the queue."""

    def __init__(self, status: int, error: str, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.reason = reason
        """Metrics label (``monitor.metrics.DROP_REASONS``)."""


def check_content_type(value: str | None) -> None:
    """Raise 415 unless ``value`` is one of ``CONTENT_TYPES`` (parameters such as ``; charset`` ignored)."""
    media = (value or "").split(";", 1)[0].strip().lower()
    if media not in CONTENT_TYPES:
        shown = repr(value) if value else "no Content-Type"
        raise IngestRejected(415, "unsupported_media_type",
                             f"{shown} is not accepted; send the safetensors wire format as "
                             f"{' or '.join(CONTENT_TYPES)}", "content_type")


def check_content_length(value: str | None, max_bytes: int) -> None:
    """Raise 413 when the declared length exceeds ``max_bytes`` (400 when it is not a number)."""
    if value is None:
        return
    try:
        n = int(value)
    except ValueError:
        raise IngestRejected(400, "malformed_request", f"Content-Length {value!r} is not a number",
                             "malformed") from None
    if n > max_bytes:
        raise IngestRejected(413, "too_large", f"body of {n} bytes exceeds the limit of {max_bytes} bytes; "
                             "send smaller batches", "too_large")


def body_too_large(size: int, max_bytes: int) -> IngestRejected:
    return IngestRejected(413, "too_large", f"body exceeds the limit of {max_bytes} bytes (read {size} so far); "
                          "send smaller batches", "too_large")


def parse_batch(body: bytes | bytearray, limits: WireLimits) -> ActivationBatch:
    """Validate and decode the wire format. Raises ``IngestRejected`` (413 for limits, else 400)."""
    try:
        return ActivationBatch.from_bytes(body, limits)
    except WireFormatError as exc:
        over = _limit_exceeded(body, limits)
        if over:
            raise IngestRejected(413, "too_large", over, "too_large") from None
        raise IngestRejected(400, "malformed_batch", f"invalid activation batch: {exc}", "malformed") from None


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
        shape = header["activations"]["shape"]
        n_tokens, d_in = int(shape[0]), int(shape[1])
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return None
    if n_tokens > limits.max_tokens:
        return f"batch declares {n_tokens} tokens; the limit is {limits.max_tokens} tokens per batch"
    if d_in > limits.max_d_in:
        return f"batch declares d_in={d_in}; the limit is {limits.max_d_in}"
    try:
        requests = json.loads(header["__metadata__"]["requests"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if isinstance(requests, list) and len(requests) > limits.max_requests:
        return f"batch carries {len(requests)} requests; the limit is {limits.max_requests} per batch"
    return None
