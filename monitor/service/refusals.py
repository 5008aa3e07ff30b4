"""Why the sidecar refuses something, and the HTTP answer for each reason: the one mapping.

Every refusal is an ``IngestError`` carrying what the API answers (``status``, machine ``error`` code,
whether to send ``Retry-After``) and the metrics label (``reason``, ``monitor.service.prometheus``).
Ingest (``monitor.service.ingest``) and the scoring pipeline raise them; the app turns any of them, and
its own auth and request errors, into an ``ApiError`` whose body is ``{"error", "detail"}``.

    reason            status  error                   raised by
    content_type      415     unsupported_media_type  ingest: wrong Content-Type
    too_large         413     too_large               ingest: body, header, tokens or requests over a limit
    malformed         400     malformed_batch         ingest: garbage, truncation, bad shapes, NaN/Inf, ...
    mismatch          409     mismatch                pipeline: batch for another model, hook, SAE or width
    mismatch          409     latent_mismatch         pipeline: latent batch without every latent the detectors read
    unknown_request   404     unknown_request         pipeline: final flag for a request never seen
    queue_full        429     queue_full              pipeline: queue full (Retry-After)
    shutdown          503     shutting_down           pipeline: stopping (Retry-After)
"""

from __future__ import annotations


class IngestError(Exception):
    """A batch was refused; nothing of it was accepted. Class attributes say how the API answers."""

    status = 400
    error = "malformed_batch"
    reason = "malformed"
    """Metrics label of the drop."""
    retry = False
    """The answer carries ``Retry-After``: the same batch may succeed later."""
    request_ids: list[str] | None = None
    """Request ids the refusal concerns, when it names some."""

    def __init__(self, detail: str, *, status: int | None = None, error: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if error is not None:
            self.error = error
        if reason is not None:
            self.reason = reason


class BatchMismatchError(IngestError):
    """The batch was made for another model, hook, SAE or activation width."""

    status, error, reason = 409, "mismatch", "mismatch"


class LatentMismatchError(BatchMismatchError):
    """A latent batch lacks latents the loaded detectors read (its tap was configured for other detectors)."""

    error = "latent_mismatch"

    def __init__(self, missing: list[int], needed: int) -> None:
        shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        super().__init__(
            f"latent batch lacks {len(missing)} of the {needed} SAE latents the loaded detectors read ({shown}); "
            "configure the tap with the latents of the sidecar's detectors (the union of their specs' latents) "
            "or send activation batches"
        )
        self.missing = missing


class UnknownRequestError(IngestError):
    """A final flag without tokens names requests this sidecar has not seen recently."""

    status, error, reason = 404, "unknown_request", "unknown_request"

    def __init__(self, request_ids: list[str]) -> None:
        shown = ", ".join(repr(r) for r in request_ids[:5]) + (" ..." if len(request_ids) > 5 else "")
        super().__init__(
            f"final flag without tokens for {len(request_ids)} unknown request id(s): {shown}. A final-only "
            "chunk must follow tokens of the same request; send those first or drop the final flag"
        )
        self.request_ids = request_ids


class QueueFullError(IngestError):
    """The ingest queue is full; retry later."""

    status, error, reason, retry = 429, "queue_full", "queue_full", True


class NotAcceptingError(IngestError):
    """The pipeline is stopping or stopped."""

    status, error, reason, retry = 503, "shutting_down", "shutdown", True


class ApiError(Exception):
    """An error answer: ``status``, machine ``error`` code, human ``detail``."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                 request_ids: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers, self.request_ids = status, error, detail, headers, request_ids

    @classmethod
    def refused(cls, exc: IngestError, retry_after_s: float) -> ApiError:
        """The answer to a refusal (``Retry-After: retry_after_s`` where retrying can help)."""
        headers = {"Retry-After": str(retry_after_s)} if exc.retry else None
        ids = exc.request_ids[:100] if exc.request_ids else None
        return cls(exc.status, exc.error, exc.detail, headers=headers, request_ids=ids)
