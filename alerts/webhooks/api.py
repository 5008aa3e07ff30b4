"""HTTP API the sidecar mounts to register webhook subscriptions (kept in Redis).

``POST /v1/webhooks`` returns the signing secret once; listing never shows it. Mount it
with the sidecar's admin bearer-token dependency::

    app.include_router(webhook_admin_router(registry, dependencies=[Depends(require_admin)]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, Field

from alerts.schema import Severity
from alerts.webhooks.registry import WebhookRegistry, WebhookSubscription


class WebhookCreate(BaseModel):
    """Body of ``POST /v1/webhooks``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="http(s) endpoint that receives signed POSTs.")
    detectors: list[str] | None = Field(
        None, max_length=100, description="Only these detectors; omit for all."
    )
    min_severity: Severity | None = Field(None, description="Only alerts at least this severe.")
    models: list[str] | None = Field(None, max_length=100, description="Only these models.")
    secret: str | None = Field(
        None, min_length=16, max_length=256, description="Signing secret; generated when omitted."
    )
    description: str | None = Field(None, max_length=500)


class WebhookInfo(BaseModel):
    """A subscription as listed (without its secret)."""

    id: str
    url: str
    detectors: list[str] | None
    min_severity: Severity | None
    models: list[str] | None
    description: str | None
    created_at: datetime

    @classmethod
    def of(cls, sub: WebhookSubscription) -> WebhookInfo:
        return cls(**sub.model_dump(exclude={"secret"}))


class WebhookCreated(WebhookInfo):
    """Response of ``POST /v1/webhooks``: the only time the secret is shown."""

    secret: str


def webhook_admin_router(
    registry: WebhookRegistry | Callable[[], WebhookRegistry],
    *,
    dependencies: Sequence[Any] = (),
) -> APIRouter:
    """Routes ``POST/GET /v1/webhooks`` and ``GET/DELETE /v1/webhooks/{id}``.

    ``registry`` may be a callable, so the sidecar can build it lazily from its settings.
    Redis errors become 503 responses.
    """
    router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], dependencies=list(dependencies))

    def reg() -> WebhookRegistry:
        return registry() if callable(registry) else registry

    def unavailable(exc: Exception) -> HTTPException:
        return HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"webhook registry (Redis) unavailable: {type(exc).__name__}; retry later",
        )

    @router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated)
    def create(body: WebhookCreate) -> WebhookCreated:
        try:
            sub = WebhookSubscription(**body.model_dump(exclude_none=True))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            reg().add(sub)
        except Exception as exc:  # noqa: BLE001
            raise unavailable(exc) from None
        return WebhookCreated(**WebhookInfo.of(sub).model_dump(), secret=sub.secret)

    @router.get("", response_model=list[WebhookInfo])
    def list_all() -> list[WebhookInfo]:
        try:
            return [WebhookInfo.of(s) for s in reg().list()]
        except Exception as exc:  # noqa: BLE001
            raise unavailable(exc) from None

    @router.get("/{subscription_id}", response_model=WebhookInfo)
    def get_one(subscription_id: str) -> WebhookInfo:
        try:
            sub = reg().get(subscription_id)
        except Exception as exc:  # noqa: BLE001
            raise unavailable(exc) from None
        if sub is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook subscription {subscription_id!r}")
        return WebhookInfo.of(sub)

    @router.delete("/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT)
    def delete(subscription_id: str) -> Response:
        try:
            removed = reg().remove(subscription_id)
        except Exception as exc:  # noqa: BLE001
            raise unavailable(exc) from None
        if not removed:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook subscription {subscription_id!r}")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
