"""The sidecar's dashboard in headless Chromium (Debian's ``chromium``, driven by Playwright) against a real
uvicorn server: every way to sign in, and a banner that names what went wrong."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sidecar_testkit import ADMIN, INGEST, INGEST_AUTH, SAFETENSORS, live_server, make_batch

from monitor.service.app import DASHBOARD_COOKIE, create_app

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture()
def served(sidecar) -> Iterator[str]:
    """A live sidecar (1 s dashboard refresh) that has raised one alert."""
    import httpx

    with live_server(create_app(sidecar)) as url:
        r = httpx.post(url + "/v1/activations", content=make_batch([("dash-req", 4, True)], hot=3.0).to_bytes(),
                       headers={**INGEST_AUTH, **SAFETENSORS})
        assert r.status_code == 202
        yield url


def _live_page(page) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#status-pill")).to_have_text("live", timeout=10_000)
    expect(page.locator("#model")).to_have_text("test-model")
    expect(page.locator("#stale-banner")).to_be_hidden()
    expect(page.locator("#thresholds tr[data-detector='scam']")).to_be_visible()
    expect(page.locator("#recent-alerts tbody tr[data-event-id]")).to_have_count(1, timeout=10_000)
    expect(page.locator("#recent-alerts")).to_contain_text("dash-req")


def _session_cookie(context) -> dict:
    [cookie] = [c for c in context.cookies() if c["name"] == DASHBOARD_COOKIE]
    return cookie


def test_credentials_in_the_url_open_the_dashboard(chromium, served):
    """http://admin:TOKEN@host/dashboard: the sign-in page signs in with the address's password and opens the
    page at the address without it; the polls carry the session cookie, not the URL's credentials (which
    fetch() refuses)."""
    from playwright.sync_api import expect

    context = chromium.new_context()
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        host = served.removeprefix("http://")
        page.goto(f"http://admin:{ADMIN}@{host}/dashboard")
        expect(page).to_have_url(served + "/dashboard")
        _live_page(page)
        cookie = _session_cookie(context)
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
        assert ADMIN not in cookie["value"]
        assert errors == []
    finally:
        context.close()


def test_wrong_credentials_in_the_url_show_the_sign_in_form(chromium, served):
    from playwright.sync_api import expect

    context = chromium.new_context()
    try:
        page = context.new_page()
        host = served.removeprefix("http://")
        page.goto(f"http://admin:{INGEST}@{host}/dashboard")
        expect(page.locator("#login-error")).to_have_text("The password in the address is not the admin token.")
        page.fill("#token", ADMIN)
        page.click("#login-form button")
        _live_page(page)
    finally:
        context.close()


def test_the_browsers_own_password_prompt_signs_in(chromium, served):
    """HTTP Basic through the browser's own prompt: GET /v1/dashboard/login challenges, the browser answers with
    the credentials it was given (as a user would type them), the session cookie is set, on to the page."""
    from playwright.sync_api import expect

    context = chromium.new_context(http_credentials={"username": "ops", "password": ADMIN})
    try:
        page = context.new_page()
        page.goto(served + "/dashboard")
        page.click("#basic-sign-in")
        expect(page).to_have_url(served + "/dashboard")
        _live_page(page)
    finally:
        context.close()


def test_basic_and_bearer_headers_sent_with_every_request_work(chromium, served):
    """A proxy or an extension that adds the header to every request: no sign-in, no cookie needed."""
    import base64

    for header in (f"Bearer {ADMIN}", "Basic " + base64.b64encode(f"ops:{ADMIN}".encode()).decode()):
        context = chromium.new_context(extra_http_headers={"Authorization": header})
        try:
            page = context.new_page()
            response = page.goto(served + "/dashboard")
            assert response is not None and response.status == 200
            _live_page(page)
        finally:
            context.close()


def test_the_sign_in_form_and_a_banner_that_names_the_error(chromium, sidecar):
    """No credentials: the sign-in form (a wrong token is refused), then the page; a lost session says 401 and
    how to sign in again, not "cannot reach the sidecar"; a stopped sidecar says it cannot be reached."""
    import httpx
    from playwright.sync_api import expect

    context = chromium.new_context()
    try:
        page = context.new_page()
        with live_server(create_app(sidecar)) as url:
            httpx.post(url + "/v1/activations", content=make_batch([("dash-req", 4, True)], hot=3.0).to_bytes(),
                       headers={**INGEST_AUTH, **SAFETENSORS})
            response = page.goto(url + "/dashboard")
            assert response is not None and response.status == 401
            expect(page.locator("#login-form")).to_be_visible()
            page.fill("#token", INGEST)
            page.click("#login-form button")
            expect(page.locator("#login-error")).to_have_text("That is not the admin token.")
            page.fill("#token", ADMIN)
            page.click("#login-form button")
            expect(page).to_have_url(url + "/dashboard")
            _live_page(page)
            assert _session_cookie(context)["httpOnly"] is True

            # The session is gone (expired, or the admin token changed): the banner says so.
            context.clear_cookies()
            banner = page.locator("#stale-banner")
            expect(banner).to_be_visible(timeout=15_000)
            expect(banner).to_contain_text("Signed out")
            expect(banner).to_contain_text("HTTP 401")
            expect(banner).not_to_contain_text("cannot reach")
            expect(page.locator("#status-pill")).to_have_text("signed out")
            expect(page.locator("#recent-alerts tbody tr[data-event-id]")).to_have_count(1)  # the last data stays

            # Reloading asks again; signing in brings the page back; signing out clears the cookie.
            page.reload()
            page.fill("#token", ADMIN)
            page.click("#login-form button")
            _live_page(page)
            page.click("#sign-out")
            expect(page.locator("#login-form")).to_be_visible()
            assert not [c for c in context.cookies() if c["name"] == DASHBOARD_COOKIE]
            page.fill("#token", ADMIN)
            page.click("#login-form button")
            _live_page(page)
        # The server is gone: now the banner blames the network.
        banner = page.locator("#stale-banner")
        expect(banner).to_contain_text("cannot reach the sidecar", timeout=15_000)
        expect(page.locator("#status-pill")).to_have_text("unreachable")
    finally:
        context.close()


@pytest.mark.slow
def test_the_dashboard_with_the_shipped_detectors_and_its_screenshot(chromium, tmp_path):
    """The real page of a sidecar running the shipped SAE and detector specs (artifacts/) and the embedded model,
    after scoring the demo's built-in conversations with POST /v1/score: what docs/dashboard.png shows.

    ``UPDATE_SCREENSHOTS=1`` writes the screenshot to docs/dashboard.png (otherwise under the test's tmp dir)."""
    import os

    import httpx
    from playwright.sync_api import expect
    from sidecar_testkit import REPO

    from monitor.demo import CONVERSATIONS
    from monitor.service.settings import load_settings
    from monitor.service.sidecar import Sidecar

    settings = load_settings(None, model={"load": True}, auth={"ingest_token": INGEST, "admin_token": ADMIN},
                             alerts={"console": False, "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
                                     "instance": "safety-monitor-0"})
    sidecar = Sidecar.load(settings)  # no SAE or detector path: the shipped ones
    specs = {s.name: s for s in sidecar.generation.specs}
    assert {"scam_reply", "scam_request", "deception_request", "power_seeking_reply"} <= set(specs)
    alerts = []
    with live_server(create_app(sidecar)) as url:
        for i, conv in enumerate(CONVERSATIONS):
            user = [text for role, text in conv.messages if role == "user"][-1]
            r = httpx.post(url + "/v1/score", headers=INGEST_AUTH, timeout=120,
                           json={"text": user, "chat": True, "response": conv.response_prefix or None,
                                 "request_id": f"demo-{i:02d}"})
            assert r.status_code == 200, r.text
            alerts += r.json()["alerts"]
        assert alerts, "the shipped detectors raised no alert on the demo conversations"

        context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://admin:{ADMIN}@{url.removeprefix('http://')}/dashboard")
            rows = page.locator("#recent-alerts tbody tr[data-event-id]")
            expect(rows).to_have_count(len(alerts), timeout=15_000)
            assert {rows.nth(i).get_attribute("data-event-id") for i in range(len(alerts))} == \
                {a["event_id"] for a in alerts}
            expect(page.locator("#model")).to_have_text(settings.model.id)
            for name, spec in specs.items():
                row = page.locator(f"#thresholds tr[data-detector='{name}']")
                expect(row).to_contain_text(f"v{spec.version}")
                expect(row).to_contain_text(f"{spec.threshold:.4g}")
            for skipped in sidecar.skipped:
                if skipped.status == "no_signal":
                    expect(page.locator(f"#thresholds tr[data-detector='{skipped.name}']")).to_contain_text("no_signal")
            expect(page.locator("#status-pill")).to_have_text("live")
            expect(page.locator("#stale-banner")).to_be_hidden()
            shot = REPO / "docs" / "dashboard.png" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000 and errors == []
        finally:
            context.close()
