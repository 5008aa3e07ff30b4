"""The dashboard routes the sidecar mounts: ``GET /dashboard`` (HTML) and ``/v1/dashboard/...`` (JSON).

Usage in the sidecar::

    app.include_router(dashboard_router(pipeline.store, health=sidecar_health,
                                        dependencies=[Depends(require_reader)]))

The summary endpoint never fails because of Redis: it serves the last data it could read,
marked ``stale``. The narrower endpoints answer 503 while Redis is unreachable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, HTTPException, Query
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
) -> APIRouter:
    """Routes of the dashboard.

    source: the store to read (:class:`alerts.dashboard.redis_store.DashboardStore` or the in-memory one), or
        a callable returning it.
    health: returns this sidecar's gauges (ready, queue depth, ...) shown under Health.
    refresh_s: how often the page polls.
    recent: how many recent alerts the page lists.
    dependencies: FastAPI dependencies (e.g. auth) applied to every route.
    """
    router = APIRouter(tags=["dashboard"], dependencies=list(dependencies))
    page = dashboard_html(title=title, refresh_s=refresh_s, recent=recent)

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

    @router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @router.get("/v1/dashboard/summary", response_model=DashboardSummary)
    def summary(
        minutes: int = Query(60, ge=1, le=1440), recent: int = Query(50, ge=0, le=1000)
    ) -> DashboardSummary:
        data = src().summary(minutes=minutes, recent=recent)
        return data.model_copy(update={"sidecar": sidecar()})

    @router.get("/v1/dashboard/alerts", response_model=list[Alert])
    def alerts(limit: int = Query(50, ge=1, le=1000)) -> list[Alert]:
        return read(lambda: src().recent_alerts(limit))

    @router.get("/v1/dashboard/rates", response_model=AlertRates)
    def rates(minutes: int = Query(60, ge=1, le=1440)) -> AlertRates:
        return read(lambda: src().rates(minutes))

    @router.get("/v1/dashboard/thresholds", response_model=list[DetectorThreshold])
    def thresholds() -> list[DetectorThreshold]:
        return read(lambda: src().thresholds())

    @router.get("/v1/dashboard/health", response_model=DashboardHealth)
    def dashboard_health() -> DashboardHealth:
        return DashboardHealth(store=src().store_health(), sidecar=sidecar())

    return router
