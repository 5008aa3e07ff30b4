"""The sidecar's HTTP API (FastAPI): ingest, health, metrics, detectors, reload, in-process scoring.

``create_app(sidecar)`` wires a loaded ``monitor.service.sidecar.Sidecar`` into an app; the lifespan starts
its threads and drains them on shutdown. Shared objects live in ``app.state`` and reach the
handlers through dependencies; auth is a dependency too (bearer tokens compared in constant time:
401 without a token, 403 with a wrong one). Every error the API raises itself has the body
``{"error": code, "detail": message}`` (``monitor.service.api_models.ErrorBody``); so does an unexpected
exception (500, ``"error": "internal"``; the traceback goes to the log).

    POST /v1/activations   ingest token   wire batch -> 202 | 400 401 403 404 409 413 415 429 503
    POST /v1/score         ingest token   text -> scores and alerts (only with model.load)
    GET  /v1/detectors     either token   loaded detectors and thresholds
    POST /v1/admin/reload  admin token    re-read the detector directory atomically
    GET  /healthz /readyz /metrics        no token (probes and scrapers)
    GET  /dashboard, /v1/dashboard/...    admin token (bearer, HTTP Basic with it as the password, or the session
                                          cookie POST /v1/dashboard/login sets); a browser without any gets a
                                          sign-in form
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBasic, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from detectors.spec import SpecError
from monitor.service.api_models import (
    DetectorList,
    ErrorBody,
    Health,
    IngestAccepted,
    Readiness,
    ReloadResult,
    ScoreRequest,
    ScoreResponse,
)
from monitor.service.ingest import (
    CONTENT_TYPES,
    body_too_large,
    check_content_length,
    check_content_type,
    parse_batch,
)
from monitor.service.refusals import ApiError, IngestError
from monitor.service.scoring_pipeline import ScoreResult
from monitor.service.sidecar import Sidecar, detector_info

log = logging.getLogger(__name__)

SCORE_TIMEOUT_S = 60.0
DASHBOARD_COOKIE = "safety_monitor_dashboard"
DASHBOARD_SESSION_S = 12 * 3600
_STATUSES = {s.value for s in HTTPStatus}


def _error_response(exc: ApiError) -> JSONResponse:
    body = ErrorBody(error=exc.error, detail=exc.detail, request_ids=exc.request_ids)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=exc.status, headers=exc.headers)


def _responses(*codes: int, text: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    text = {400: "Malformed request or batch", 401: "No bearer token", 403: "Wrong bearer token",
            404: "Unknown request id on a final flag, or no model configured", 409: "Batch made for another model, "
            "hook, SAE or width", 413: "Over a size, token or request limit", 415: "Wrong content type",
            422: "Invalid detector specs (reload) or request body", 429: "Queue full; retry after Retry-After seconds",
            503: "Not ready, or shutting down", **(text or {})}
    out: dict[int | str, dict[str, Any]] = {c: {"model": ErrorBody, "description": text[c]} for c in codes}
    for code, header, what in ((401, "WWW-Authenticate", "The scheme to authenticate with"),
                               (429, "Retry-After", "Seconds to wait before retrying")):
        if code in out:
            out[code]["headers"] = {header: {"description": what, "schema": {"type": "string"}}}
    return out


_DASHBOARD_AUTH_TEXT = {
    401: "No admin token: send it as a bearer token, as the password of HTTP Basic auth, or sign in "
         "(POST /v1/dashboard/login) for the session cookie",
    403: "Wrong admin token",
}
_ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


# --------------------------------------------------------------------------- dependencies
async def get_sidecar(request: Request) -> Sidecar:
    """The ``Sidecar`` of this app (``app.state.sidecar``). (async: a sync dependency costs a thread hop.)"""
    return request.app.state.sidecar


_ingest_scheme = HTTPBearer(auto_error=False, scheme_name="IngestToken",
                            description="auth.ingest_token: model servers that ship activations.")
_admin_scheme = HTTPBearer(auto_error=False, scheme_name="AdminToken",
                           description="auth.admin_token: operators (reload, dashboard).")


class _DashboardBasic(HTTPBasic):
    """Declares HTTP Basic in the OpenAPI document; ``require_dashboard`` reads the header itself (any user
    name, a UTF-8 password, and 403 rather than 401 for a malformed one)."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


_dashboard_basic = _DashboardBasic(auto_error=False, scheme_name="AdminBasic", realm="safety-monitor dashboard",
                                   description="auth.admin_token as the password of HTTP Basic auth (any user "
                                               "name): the dashboard only, so a browser can open it.")
_dashboard_cookie = APIKeyCookie(name=DASHBOARD_COOKIE, auto_error=False, scheme_name="DashboardSession",
                                 description="The session cookie POST /v1/dashboard/login sets (HttpOnly, "
                                             "SameSite=Lax, 12 h): the dashboard only.")


SidecarDep = Annotated[Sidecar, Depends(get_sidecar)]
IngestCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_ingest_scheme)]
AdminCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_scheme)]


def _token_ok(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def _check_bearer(sidecar: Sidecar, credentials: HTTPAuthorizationCredentials | None, kinds: tuple[str, ...],
                  count_drops: bool = False) -> None:
    auth = sidecar.settings.auth
    if auth.disabled:
        return
    if credentials is None:
        if count_drops:
            sidecar.metrics.drop("unauthorized")
        raise ApiError(401, "unauthorized", f"missing bearer token: send 'Authorization: Bearer <{kinds[0]} token>'",
                       headers={"WWW-Authenticate": 'Bearer realm="safety-monitor"'})
    if not any(_token_ok(credentials.credentials, getattr(auth, f"{k}_token").get_secret_value()) for k in kinds):
        if count_drops:
            sidecar.metrics.drop("forbidden")
        raise ApiError(403, "forbidden", f"the bearer token is not valid here (this endpoint needs the "
                       f"{' or '.join(kinds)} token)")


async def require_ingest(request: Request,
                         credentials: IngestCredentials) -> None:
    """Ingest endpoints: the ingest token."""
    _check_bearer(request.app.state.sidecar, credentials, ("ingest",), count_drops=True)


async def require_admin(request: Request,
                        credentials: AdminCredentials) -> None:
    """Admin endpoints: the admin token."""
    _check_bearer(request.app.state.sidecar, credentials, ("admin",))


async def require_reader(request: Request,
                         ingest: IngestCredentials,
                         admin: AdminCredentials) -> None:
    """Read-only endpoints: either token."""
    _check_bearer(request.app.state.sidecar, ingest or admin, ("admin", "ingest"))


# --------------------------------------------------------------------------- dashboard sign-in
def _session_value(admin_token: str, expires: int) -> str:
    """``<expiry unix seconds>.<HMAC-SHA256 of it keyed with the admin token>``: nothing to store, valid on every
    replica with the same token, void once the token changes; the token itself cannot be read back from it."""
    mac = hmac.new(admin_token.encode(), f"safety-monitor dashboard session {expires}".encode(), hashlib.sha256)
    return f"{expires}.{mac.hexdigest()}"


def _session_ok(value: str, admin_token: str) -> bool:
    expires, _, _ = value.partition(".")
    if not expires.isdigit() or len(expires) > 12 or int(expires) < time.time():
        return False
    return hmac.compare_digest(value.encode("utf-8", "surrogateescape"),
                               _session_value(admin_token, int(expires)).encode())


def _set_session(request: Request, response: Response, admin_token: str) -> None:
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"
    response.set_cookie(DASHBOARD_COOKIE, _session_value(admin_token, int(time.time()) + DASHBOARD_SESSION_S),
                        max_age=DASHBOARD_SESSION_S, path="/", httponly=True, samesite="lax", secure=secure)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="safety-monitor dashboard"'}
# Only GET /v1/dashboard/login asks for Basic: a Basic challenge makes a browser prompt for a password (or, headless,
# fail the navigation), so the page and its polls never send one.
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="safety-monitor dashboard"'}


class _SignInPage(Exception):
    """A browser asked for a dashboard page without valid credentials: answer with the sign-in form, whose
    ``action`` is the sign-in endpoint relative to the page asked for."""

    def __init__(self, status: int, message: str | None, headers: dict[str, str] | None = None,
                 action: str = "v1/dashboard/login") -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.action = status, message, headers, action


def _basic_password(value: str) -> str:
    try:
        return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
    except (ValueError, UnicodeDecodeError):
        return ""


async def require_dashboard(request: Request,
                            _bearer: AdminCredentials,
                            _basic: Annotated[None, Depends(_dashboard_basic)],
                            session: Annotated[str | None, Depends(_dashboard_cookie)]) -> None:
    """The dashboard: the admin token as a bearer token or as the password of HTTP Basic auth, or the session
    cookie of a sign-in. A browser opening the page without them gets the sign-in form; the form signs in by
    itself with the password of an address like ``http://admin:TOKEN@host/dashboard``. No answer here carries a
    Basic challenge (a browser would prompt for a password on every poll, and a headless one fail); the
    browser's own prompt is at ``GET /v1/dashboard/login``."""
    sidecar: Sidecar = request.app.state.sidecar
    auth = sidecar.settings.auth
    if auth.disabled or sidecar.settings.dashboard.public:
        return
    token = auth.admin_token.get_secret_value()  # type: ignore[union-attr]
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    given = value.strip() if scheme.lower() == "bearer" else _basic_password(value) if scheme.lower() == "basic" \
        else None
    if given is not None and _token_ok(given, token):
        request.state.dashboard_signed_in = True  # the page answer sets the session cookie
        return
    if session and _session_ok(session, token):
        return
    page = request.method == "GET" and request.url.path.endswith("/dashboard") and _wants_html(request)
    if given is not None:
        if page:
            raise _SignInPage(403, "That is not the admin token.")
        raise ApiError(403, "forbidden", "wrong admin token")
    detail = ("the dashboard session expired or the admin token changed; sign in again" if session else
              "the dashboard needs the admin token: a bearer token, the password of HTTP Basic auth, or a sign-in "
              "(POST /v1/dashboard/login)")
    if page:
        raise _SignInPage(401, "Your session expired; sign in again." if session else None, headers=_BEARER_CHALLENGE)
    raise ApiError(401, "unauthorized", detail, headers=_BEARER_CHALLENGE)


# --------------------------------------------------------------------------- app
def create_app(sidecar: Sidecar) -> FastAPI:
    """The API around a loaded (not yet started) ``Sidecar``; the app's lifespan starts and stops it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sidecar.start()
        try:
            yield
        finally:
            await run_in_threadpool(sidecar.close)

    app = FastAPI(
        title="safety-monitor sidecar",
        version="1",
        description="Scores tapped activations of a language model with SAE-feature detectors and raises alerts. "
                    "See docs/sidecar.md.",
        lifespan=lifespan,
    )
    app.state.sidecar = sidecar
    limits = sidecar.settings.limits

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Framework errors (unparsable JSON, unknown path, wrong method) get the same body as ours.
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_") if exc.status_code in _STATUSES else "error"
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names the methods of the first route with this path only; a path served by two routes
            # (GET and POST /v1/dashboard/login) must list both.
            allowed = {m for r in request.app.router.routes if isinstance(r, Route)
                       and r.matches(request.scope)[0] is not Match.NONE for m in (r.methods or ())}
            headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
        return _error_response(ApiError(exc.status_code, code, str(exc.detail), headers=headers))

    @app.exception_handler(_SignInPage)
    async def _sign_in_page(request: Request, exc: _SignInPage) -> HTMLResponse:
        from alerts.dashboard.page import login_html

        return HTMLResponse(login_html(title=sidecar.settings.dashboard.title, message=exc.message, action=exc.action,
                                       session_hours=DASHBOARD_SESSION_S / 3600),
                            status_code=exc.status, headers={**(exc.headers or {}), "Cache-Control": "no-store"})

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Anything unexpected: the same JSON body as every other error, not Starlette's plain text. Starlette
        # re-raises the exception after this answer, so the server logs its traceback.
        log.error("unhandled %s answering %s %s", type(exc).__name__, request.method, request.url.path)
        return _error_response(ApiError(500, "internal", f"unexpected {type(exc).__name__} while answering "
                                        f"{request.method} {request.url.path}; the traceback is in the sidecar's log"))

    # ------------------------------------------------------------------ ingest
    @app.post(
        "/v1/activations", status_code=202, response_model=IngestAccepted, tags=["ingest"],
        dependencies=[Depends(require_ingest)],
        responses=_responses(400, 401, 403, 404, 409, 413, 415, 429, 503),
        openapi_extra={"requestBody": {"required": True, "description": "An activation batch in the safetensors "
                                       "wire format (monitor/wire/batch.py).",
                                       "content": {ct: {"schema": {"type": "string", "format": "binary"}}
                                                   for ct in CONTENT_TYPES}}},
    )
    async def ingest_activations(request: Request, sidecar: SidecarDep) -> Response:
        """Queue one activation batch for scoring. Answers 202 once it is validated and queued."""
        received = time.perf_counter()
        metrics = sidecar.metrics
        try:
            check_content_type(request.headers.get("content-type"))
            check_content_length(request.headers.get("content-length"), limits.max_body_bytes)
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limits.max_body_bytes:
                    raise body_too_large(len(body), limits.max_body_bytes)
            batch = parse_batch(body, sidecar.wire_limits)
        except IngestError as exc:
            metrics.drop(exc.reason)
            raise _refused(exc, sidecar) from None
        try:
            n = sidecar.pipeline.submit(batch, received)
        except IngestError as exc:
            metrics.drop(exc.reason, batch.n_tokens)
            raise _refused(exc, sidecar) from None
        metrics.tokens_ingested.inc(n)
        metrics.batches_ingested.inc()
        # The hot path: a Response skips FastAPI's response-model round trip (the model still documents it).
        body = IngestAccepted(accepted_tokens=n, requests=batch.n_requests, queue_tokens=sidecar.pipeline.queue_tokens)
        return Response(body.model_dump_json(), status_code=202, media_type="application/json")

    # ------------------------------------------------------------------ in-process scoring
    @app.post("/v1/score", response_model=ScoreResponse, tags=["ingest"], dependencies=[Depends(require_ingest)],
              responses=_responses(400, 401, 403, 404, 429, 503))
    async def score_text(body: ScoreRequest, sidecar: SidecarDep) -> ScoreResponse:
        """Run a text through the model in this process, score it, and raise alerts like live traffic.
        Needs ``model.load: true``."""
        if sidecar.lm is None:
            raise ApiError(404, "no_model", "this sidecar has no model loaded; start it with model.load: true "
                           "(SAFETY_MONITOR_MODEL__LOAD=true) to score texts")
        if body.response is not None and not body.chat:
            raise ApiError(400, "malformed_request", "'response' needs chat: true")
        try:
            batch = await run_in_threadpool(sidecar.tap_text, body.text, chat=body.chat, response=body.response,
                                            request_id=body.request_id)
        except ValueError as exc:
            raise ApiError(400, "malformed_request", str(exc)) from None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[ScoreResult] = loop.create_future()

        def on_done(result: ScoreResult) -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))

        try:
            sidecar.pipeline.submit(batch, on_done=on_done)
        except IngestError as exc:
            sidecar.metrics.drop(exc.reason, batch.n_tokens)
            raise _refused(exc, sidecar) from None
        try:
            result = await asyncio.wait_for(done, SCORE_TIMEOUT_S)
        except TimeoutError:
            raise ApiError(503, "timeout", f"scoring did not finish within {SCORE_TIMEOUT_S:.0f} s") from None
        rid = batch.request_ids[0]
        return ScoreResponse(request_id=rid, n_tokens=batch.n_tokens, scores=result.scores.get(rid, {}),
                             alerts=result.alerts)

    # ------------------------------------------------------------------ detectors
    @app.get("/v1/detectors", response_model=DetectorList, tags=["detectors"],
             dependencies=[Depends(require_reader)], responses=_responses(401, 403))
    async def list_detectors(sidecar: SidecarDep) -> DetectorList:
        """The detectors new requests are scored with, their thresholds and calibration summaries."""
        return _detector_list(sidecar)

    @app.post("/v1/admin/reload", response_model=ReloadResult, tags=["admin"],
              dependencies=[Depends(require_admin)], responses=_responses(401, 403, 422))
    async def reload_detectors(sidecar: SidecarDep) -> ReloadResult:
        """Re-read the detector directory and switch to it atomically. On any invalid spec the current
        detectors stay in place and the answer is 422 with the reason. Requests already in flight
        finish on the detectors they started with."""
        try:
            previous, new = await run_in_threadpool(sidecar.reload_detectors)
        except SpecError as exc:
            sidecar.metrics.reloads.labels("refused").inc()
            raise ApiError(422, "invalid_detectors", f"reload refused, the previous detectors stay loaded: {exc}") \
                from None
        return ReloadResult(generation=new.number, detectors=[s.name for s in new.specs],
                            previous=[s.name for s in previous.specs])

    # ------------------------------------------------------------------ health and metrics
    @app.get("/healthz", response_model=Health, tags=["health"], responses=_responses(503))
    async def healthz(sidecar: SidecarDep) -> Health | JSONResponse:
        """Alive: the process answers and its scoring worker runs."""
        if not sidecar.pipeline.stats().worker_alive:
            return _error_response(ApiError(503, "worker_stopped", "the scoring worker is not running"))
        return Health(uptime_s=round(time.monotonic() - sidecar.started_at, 3))

    @app.get("/readyz", response_model=Readiness, tags=["health"], responses={503: {"model": Readiness}})
    async def readyz(sidecar: SidecarDep) -> Readiness | JSONResponse:
        """Ready for traffic: SAE and detectors loaded, worker running, queue below its high-water mark,
        outbox writable. 503 with the same body otherwise."""
        r = await run_in_threadpool(sidecar.readiness)
        return r if r.ready else JSONResponse(r.model_dump(), status_code=503)

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    async def metrics(sidecar: SidecarDep) -> Response:
        """Prometheus metrics (no per-latent or per-request labels)."""
        data = await run_in_threadpool(generate_latest, sidecar.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    if sidecar.settings.redis is not None:
        # Webhook subscriptions live in Redis, where `safety-monitor alerts route` reads them.
        from alerts.webhooks.api import webhook_admin_router
        from alerts.webhooks.registry import WebhookRegistry

        registry: list[WebhookRegistry] = []

        def webhook_registry() -> WebhookRegistry:
            if not registry:
                registry.append(WebhookRegistry(sidecar.settings.redis.client()))
            return registry[0]

        app.include_router(webhook_admin_router(webhook_registry, dependencies=[Depends(require_admin)]))

    if sidecar.settings.dashboard.enabled:
        _mount_dashboard(app, sidecar)
    return app


def _mount_dashboard(app: FastAPI, sidecar: Sidecar) -> None:
    """The dashboard routes of ``alerts`` behind ``require_dashboard``, and the sign-in and sign-out routes."""
    from alerts.dashboard.page import login_html
    from alerts.dashboard.routes import dashboard_router

    auth = sidecar.settings.auth
    protected = not (auth.disabled or sidecar.settings.dashboard.public)
    errors = _responses(401, 403, text=_DASHBOARD_AUTH_TEXT) if protected else {}
    html = {"text/html": {"schema": {"type": "string"}}}
    page_errors = {code: {"description": f"{spec['description']}. A browser (Accept: text/html) gets the "
                          "sign-in form instead of JSON.",
                          "headers": spec.get("headers", {}),
                          "content": {**html, **_ERROR_JSON}}
                   for code, spec in errors.items()}

    def on_page(request: Request, response: Response) -> None:
        if getattr(request.state, "dashboard_signed_in", False):
            _set_session(request, response, auth.admin_token.get_secret_value())  # type: ignore[union-attr]

    store = sidecar.alert_pipeline.store
    app.include_router(dashboard_router(store, health=sidecar.health_gauges,  # type: ignore[arg-type]
                                        title=sidecar.settings.dashboard.title,
                                        dependencies=[Depends(require_dashboard)], responses=errors,
                                        page_responses=page_errors, on_page=on_page if protected else None,
                                        sign_out_url="v1/dashboard/logout" if protected else None))
    if not protected:
        return
    form = "application/x-www-form-urlencoded"
    back = "../../dashboard"  # relative to /v1/dashboard/login: the page, under whatever prefix the app sits

    @app.post("/v1/dashboard/login", status_code=204, response_class=Response, tags=["dashboard"],
              summary="Sign in to the dashboard",
              responses={204: {"description": "Signed in (JSON body): the session cookie is set",
                               "headers": {"Set-Cookie": {"schema": {"type": "string"}}}},
                         303: {"description": "Signed in (form body): the session cookie is set, on to the page",
                               "headers": {"Location": {"schema": {"type": "string"}},
                                           "Set-Cookie": {"schema": {"type": "string"}}}},
                         400: {"model": ErrorBody, "description": "No token in the body"},
                         403: {"description": "Wrong admin token (the form again, for a form body)",
                               "content": {**_ERROR_JSON, **html}},
                         415: {"model": ErrorBody, "description": "Neither a form nor JSON"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  form: {"schema": {"type": "object", "required": ["token"],
                                    "properties": {"token": {"type": "string", "minLength": 1}}}},
                  "application/json": {"schema": {"type": "object", "required": ["token"],
                                                  "properties": {"token": {"type": "string", "minLength": 1}}}}}}})
    async def dashboard_login(request: Request) -> Response:
        """Check the admin token and set the dashboard's session cookie (HttpOnly, SameSite=Lax, 12 hours;
        Secure over HTTPS). The sign-in form posts here; scripts may post ``{"token": ...}`` as JSON."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw = await request.body()
        if content_type == form:
            token = parse_qs(raw.decode("utf-8", "replace")).get("token", [""])[0]
        elif content_type == "application/json":
            try:
                body = json.loads(raw)
            except ValueError:
                raise ApiError(400, "malformed_request", "the body is not JSON") from None
            token = body.get("token") if isinstance(body, dict) else None
            if not isinstance(token, str):
                token = ""
        else:
            raise ApiError(415, "unsupported_media_type", f"send the token as {form} or application/json")
        if not token:
            raise ApiError(400, "malformed_request", "no 'token' in the body")
        if not _token_ok(token, auth.admin_token.get_secret_value()):  # type: ignore[union-attr]
            if content_type == form:
                return HTMLResponse(login_html(title=sidecar.settings.dashboard.title, action="login",
                                               message="That is not the admin token.",
                                               session_hours=DASHBOARD_SESSION_S / 3600),
                                    status_code=403, headers={"Cache-Control": "no-store"})
            raise ApiError(403, "forbidden", "wrong admin token")
        response = RedirectResponse(back, status_code=303) if content_type == form else Response(status_code=204)
        _set_session(request, response, auth.admin_token.get_secret_value())  # type: ignore[union-attr]
        return response

    @app.get("/v1/dashboard/login", status_code=303, response_class=RedirectResponse, tags=["dashboard"],
             summary="Sign in to the dashboard with the browser's password prompt",
             responses={303: {"description": "Signed in: the session cookie is set, on to the page",
                              "headers": {"Location": {"schema": {"type": "string"}},
                                          "Set-Cookie": {"schema": {"type": "string"}}}},
                        401: {"description": "No or a wrong admin token: a Basic challenge (the browser prompts; "
                                             "a browser gets the sign-in form as the body)",
                              "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                              "content": {**_ERROR_JSON, **html}}})
    async def dashboard_login_basic(request: Request) -> RedirectResponse:
        """HTTP Basic with the admin token as the password (any user name): the one place that asks for it, so a
        browser shows its own password prompt. Sets the session cookie and goes on to the page."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = auth.admin_token.get_secret_value()  # type: ignore[union-attr]
        if scheme.lower() == "basic" and _token_ok(_basic_password(value), token):
            response = RedirectResponse(back, status_code=303)
            _set_session(request, response, token)
            return response
        wrong = "That is not the admin token." if scheme.lower() == "basic" else None
        if _wants_html(request):
            raise _SignInPage(401, wrong, headers=_BASIC_CHALLENGE, action="login")
        raise ApiError(401, "unauthorized", "send the admin token as the password of HTTP Basic auth"
                       + (" (the one sent is wrong)" if wrong else ""), headers=_BASIC_CHALLENGE)

    @app.post("/v1/dashboard/logout", status_code=303, response_class=RedirectResponse, tags=["dashboard"],
              summary="Sign out of the dashboard",
              responses={303: {"description": "The session cookie is cleared; on to the page",
                               "headers": {"Location": {"schema": {"type": "string"}}}}})
    async def dashboard_logout() -> RedirectResponse:
        """Clear the session cookie. (A browser that signed in with HTTP Basic keeps sending that.)"""
        response = RedirectResponse(back, status_code=303)
        response.delete_cookie(DASHBOARD_COOKIE, path="/", httponly=True, samesite="lax")
        return response


def _refused(exc: IngestError, sidecar: Sidecar) -> ApiError:
    return ApiError.refused(exc, sidecar.settings.queue.retry_after_s)


def _detector_list(sidecar: Sidecar) -> DetectorList:
    from datetime import UTC, datetime

    gen = sidecar.generation
    drift = sidecar.evaluate_drift(force=True)
    return DetectorList(
        model=sidecar.settings.model.id, hook=sidecar.settings.model.hook_name, sae_sha256=sidecar.sae.sha256,
        generation=gen.number, loaded_at=datetime.fromtimestamp(gen.loaded_at, UTC), source=gen.source,
        monitored_latents=len(gen.latents), detectors=[detector_info(s, drift.get(s.name)) for s in gen.specs],
        skipped=sidecar.skipped,
    )

