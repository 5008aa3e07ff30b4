"""The dashboard routes the sidecar mounts: ``GET /dashboard`` (HTML) and ``/v1/dashboard/...`` (JSON).

Usage in the sidecar::

    app.include_router(dashboard_router(pipeline.store, health=sidecar_health,
                                        dependencies=[Depends(require_reader)]))

The summary endpoint never fails because of Redis: it serves the last data it could read,
marked ``stale``. The narrower endpoints answer 503 while Redis is unreachable.

Authentication is the caller's: pass it as ``dependencies``, and document what it answers with
``responses`` (every route) and ``page_responses`` (the HTML page, whose errors may be HTML too).
``on_page`` may add to the page's response (the sidecar sets its session cookie there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from alerts.dashboard.models import (
    AlertRates,
    DashboardSource,
    DashboardSummary,
    DetectorThreshold,
    StoreHealth,
)
from alerts.dashboard.page import dashboard_html
from alerts.schema import Alert


class DashboardHealth(BaseModel):
    """``GET /v1/dashboard/health``."""

    store: StoreHealth
    sidecar: dict[str, Any]


def dashboard_router(
    source: DashboardSource | Callable[[], DashboardSource],
    *,
    health: Callable[[], dict[str, Any]] | None = None,
    refresh_s: float = 5.0,
    recent: int = 50,
    title: str = "Safety monitor",
    dependencies: Sequence[Any] = (),
    responses: dict[int | str, dict[str, Any]] | None = None,
    page_responses: dict[int | str, dict[str, Any]] | None = None,
    on_page: Callable[[Request, Response], None] | None = None,
    sign_out_url: str | None = None,
) -> APIRouter:
    """Routes of the dashboard.

    source: the store to read (:class:`alerts.dashboard.redis_store.DashboardStore` or the in-memory one), or
        a callable returning it.
    health: returns this sidecar's gauges (ready, queue depth, ...) shown under Health.
    refresh_s: how often the page polls.
    recent: how many recent alerts the page lists.
    dependencies: FastAPI dependencies (e.g. auth) applied to every route.
    responses: extra OpenAPI responses of every route (e.g. the 401 and 403 of that auth).
    page_responses: extra OpenAPI responses of ``GET /dashboard`` (replacing those of ``responses`` per status).
    on_page: called with the request and the page's response before it is sent.
    sign_out_url: where the page's "Sign out" button posts (relative to the page); ``None``: no button.
    """
    router = APIRouter(tags=["dashboard"], dependencies=list(dependencies), responses=dict(responses or {}))
    page = dashboard_html(title=title, refresh_s=refresh_s, recent=recent, sign_out_url=sign_out_url)
    unavailable: dict[int | str, dict[str, Any]] = {
        503: {
            "description": "The dashboard store (Redis) is unreachable; the summary still answers, marked stale",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    }

    def src() -> DashboardSource:
        return source() if callable(source) and not hasattr(source, "summary") else source  # type: ignore[return-value]

    def sidecar() -> dict[str, Any]:
        if health is None:
            return {}
        try:
            return dict(health())
        except Exception as exc:  # noqa: BLE001 - a failing probe is itself health information
            return {"health_error": f"{type(exc).__name__}: {exc}"}

    def read(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - Redis down, timeouts
            raise HTTPException(
                503, f"dashboard store unavailable ({type(exc).__name__}); data is stale"
            ) from None

    @router.get(
        "/dashboard",
        response_class=HTMLResponse,
        summary="The dashboard page",
        responses={
            200: {"description": "One self-contained HTML page that polls /v1/dashboard/summary",
                  "content": {"text/html": {"schema": {"type": "string"}}}},
            **(page_responses or {}),
        },
    )
    def dashboard_page(request: Request) -> HTMLResponse:
        response = HTMLResponse(page, headers={"Cache-Control": "no-store"})
        if on_page is not None:
            on_page(request, response)
        return response

    @router.get("/v1/dashboard/summary", response_model=DashboardSummary)
    def summary(
        minutes: int = Query(60, ge=1, le=1440), recent: int = Query(50, ge=0, le=1000)
    ) -> DashboardSummary:
        data = src().summary(minutes=minutes, recent=recent)
        return data.model_copy(update={"sidecar": sidecar()})

    @router.get("/v1/dashboard/alerts", responses=unavailable, response_model=list[Alert])
    def alerts(limit: int = Query(50, ge=1, le=1000)) -> list[Alert]:
        return read(lambda: src().recent_alerts(limit))

    @router.get("/v1/dashboard/rates", responses=unavailable, response_model=AlertRates)
    def rates(minutes: int = Query(60, ge=1, le=1440)) -> AlertRates:
        return read(lambda: src().rates(minutes))

    @router.get("/v1/dashboard/thresholds", responses=unavailable, response_model=list[DetectorThreshold])
    def thresholds() -> list[DetectorThreshold]:
        return read(lambda: src().thresholds())

    @router.get("/v1/dashboard/health", response_model=DashboardHealth)
    def dashboard_health() -> DashboardHealth:
        return DashboardHealth(store=src().store_health(), sidecar=sidecar())

    return router
