"""The HTTP API in process: ingest to alert to outbox, detectors and reload, health, metrics, auth,
back-pressure, the dashboard."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sidecar_testkit import (
    ADMIN,
    ADMIN_AUTH,
    INGEST,
    INGEST_AUTH,
    SAFETENSORS,
    make_batch,
    make_settings,
    make_spec,
    wait_until,
)

from alerts.outbox import AlertOutbox
from alerts.schema import Alert
from monitor.service.app import create_app
from monitor.service.sidecar import Sidecar

POST = {**INGEST_AUTH, **SAFETENSORS}


def post(client, batch, headers=POST):
    return client.post("/v1/activations", content=batch.to_bytes(), headers=headers)


def outbox_alerts(sidecar: Sidecar) -> list[Alert]:
    ob = AlertOutbox(sidecar.settings.alerts.outbox.path)
    try:
        rows = ob.heads(1000)
        return [Alert.from_json(r.payload) for r in rows]
    finally:
        ob.close()


def test_ingest_scores_and_the_alert_lands_in_the_outbox(client, sidecar):
    r = post(client, make_batch([("req-1", 6, False), ("req-2", 3, False)], hot=3.0, hot_dims=(1,)))
    assert r.status_code == 202, r.text
    assert r.json()["accepted_tokens"] == 9 and r.json()["requests"] == 2
    assert post(client, make_batch([("req-1", 0, True)])).status_code == 202
    alerts = wait_until(lambda: [a for a in outbox_alerts(sidecar) if a.request_id == "req-1"], what="outbox row")
    assert alerts[0].detector == "scam" and alerts[0].sae_sha256 == sidecar.sae.sha256
    lines = (sidecar.settings.alerts.jsonl_path).read_text().splitlines()
    assert {json.loads(x)["request_id"] for x in lines} == {"req-1", "req-2"}


def test_detectors_list_and_auth(client, sidecar):
    for headers in (INGEST_AUTH, ADMIN_AUTH):
        r = client.get("/v1/detectors", headers=headers)
        assert r.status_code == 200
    body = r.json()
    assert {d["name"] for d in body["detectors"]} == {"scam", "power"}
    assert body["sae_sha256"] == sidecar.sae.sha256 and body["generation"] == 1 and body["monitored_latents"] == 3
    assert client.get("/v1/detectors").status_code == 401
    assert client.get("/v1/detectors", headers={"Authorization": "Bearer nope-nope-nope-nope"}).status_code == 403


@pytest.mark.parametrize("path, method, good, other", [
    ("/v1/activations", "post", INGEST, ADMIN),
    ("/v1/admin/reload", "post", ADMIN, INGEST),
])
def test_each_endpoint_takes_only_its_own_token(client, path, method, good, other):
    r = client.request(method, path)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.request(method, path, headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = client.request(method, path, headers={"Authorization": f"Basic {good}"})
    assert r.status_code == 401  # right secret, wrong scheme
    r = client.request(method, path, headers={"Authorization": f"Bearer {good}x"})
    assert r.status_code == 403


def test_reload_switches_atomically_and_a_broken_spec_changes_nothing(client, sidecar, detector_dir, sae):
    make_spec(sae, "deception", latents=(9,), weights=(2.0,), threshold=1.0).save(detector_dir / "deception.json")
    r = client.post("/v1/admin/reload", headers=ADMIN_AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["generation"] == 2 and set(r.json()["detectors"]) == {"scam", "power", "deception"}

    (detector_dir / "broken.json").write_text('{"schema": "safety-monitor.detector/v1", "name": "broken"')
    r = client.post("/v1/admin/reload", headers=ADMIN_AUTH)
    assert r.status_code == 422 and r.json()["error"] == "invalid_detectors"
    assert "broken.json" in r.json()["detail"] and "previous detectors stay loaded" in r.json()["detail"]
    (detector_dir / "broken.json").unlink()

    make_spec(sae, "other_sae", sae_sha256="0" * 64).save(detector_dir / "other.json")
    r = client.post("/v1/admin/reload", headers=ADMIN_AUTH)
    assert r.status_code == 422 and "recalibrate" in r.json()["detail"]

    body = client.get("/v1/detectors", headers=ADMIN_AUTH).json()
    assert body["generation"] == 2 and {d["name"] for d in body["detectors"]} == {"scam", "power", "deception"}
    metrics = client.get("/metrics").text
    assert 'safety_monitor_detector_reloads_total{result="refused"} 2.0' in metrics
    assert post(client, make_batch([("after", 3, True)], hot=3.0)).status_code == 202


def test_no_signal_specs_are_listed_as_skipped(client, sidecar, detector_dir, sae):
    make_spec(sae, "sycophancy", status="no_signal", status_reason="AUROC 0.51").save(detector_dir / "syc.json")
    assert client.post("/v1/admin/reload", headers=ADMIN_AUTH).status_code == 200
    body = client.get("/v1/detectors", headers=ADMIN_AUTH).json()
    assert [s["name"] for s in body["skipped"]] == ["sycophancy"] and body["skipped"][0]["status"] == "no_signal"
    assert "sycophancy" not in {d["name"] for d in body["detectors"]}


def test_health_readiness_and_metrics(client):
    assert client.get("/healthz").json()["status"] == "ok"
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] and set(r.json()["checks"]) == {
        "sae", "detectors", "worker", "queue", "outbox"}
    post(client, make_batch([("m1", 4, True)], hot=3.0))
    time.sleep(0.3)
    text = client.get("/metrics").text
    for name in ("safety_monitor_tokens_ingested_total 4.0", "safety_monitor_queue_tokens",
                 'safety_monitor_detector_alerts_total{detector="scam",severity="high"}',
                 "safety_monitor_encode_seconds_bucket", "safety_monitor_ingest_to_alert_seconds_bucket",
                 "safety_monitor_alerts_outbox_depth", 'safety_monitor_batches_dropped_total{reason="queue_full"}',
                 'safety_monitor_requests_finished_total{reason="final"} 1.0'):
        assert name in text, name
    assert "latent=" not in text and "request_id" not in text


@pytest.fixture()
def paused(tmp_path, sae_dir, detector_dir):
    """A sidecar whose worker is held on its first batch, with a queue of 2 batches / 64 tokens."""
    settings = make_settings(tmp_path, sae_dir, detector_dir, queue={"max_batches": 2, "max_tokens": 64,
                                                                      "high_water": 0.5},
                             limits={"max_tokens_per_batch": 64})
    sidecar = Sidecar.load(settings)
    gate = threading.Event()
    real_step = sidecar.pipeline._step

    def held_step(items):
        gate.wait(10)
        real_step(items)

    sidecar.pipeline._step = held_step
    with TestClient(create_app(sidecar), raise_server_exceptions=False) as client:
        yield client, gate
        gate.set()


def test_a_full_queue_answers_429_with_retry_after_and_recovers(paused):
    client, gate = paused
    assert post(client, make_batch([("a", 4, False)])).status_code == 202  # taken by the held worker
    wait_until(lambda: client.get("/metrics").text.find("safety_monitor_queue_batches 0.0") >= 0)
    assert post(client, make_batch([("b", 30, False)])).status_code == 202
    assert client.get("/readyz").json()["ready"] is True
    assert post(client, make_batch([("c", 30, False)])).status_code == 202
    r = client.get("/readyz")
    assert r.status_code == 503 and not r.json()["checks"]["queue"]["ok"]  # above the high-water mark
    r = post(client, make_batch([("d", 30, False)]))
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"] == "queue_full"
    assert client.get("/healthz").status_code == 200
    gate.set()
    wait_until(lambda: post(client, make_batch([("d", 30, False)])).status_code == 202, what="recovery")
    line = next(x for x in client.get("/metrics").text.splitlines()
                if x.startswith('safety_monitor_batches_dropped_total{reason="queue_full"}'))
    assert float(line.split()[-1]) >= 1


def test_score_needs_a_model(client):
    r = client.post("/v1/score", json={"text": "hello"}, headers=INGEST_AUTH)
    assert r.status_code == 404 and r.json()["error"] == "no_model"


def test_dashboard_needs_the_admin_token_and_shows_alerts(client, sidecar):
    r = client.get("/dashboard")
    # No Basic challenge: a browser would prompt on every poll (its prompt is at GET /v1/dashboard/login).
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "unauthorized"
    page = client.get("/dashboard", headers={"Accept": "text/html"})
    assert page.status_code == 401 and 'id="login-form"' in page.text
    assert client.get("/v1/dashboard/login").headers["www-authenticate"].startswith("Basic")
    assert client.get("/dashboard", headers=INGEST_AUTH).status_code == 403
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{ADMIN}".encode()).decode()}
    assert client.get("/dashboard", headers=basic).status_code == 200
    post(client, make_batch([("dash-1", 4, True)], hot=3.0))
    wait_until(lambda: client.get("/v1/dashboard/alerts", headers=ADMIN_AUTH).json(), what="dashboard alert")
    summary = client.get("/v1/dashboard/summary", headers=ADMIN_AUTH).json()
    assert summary["sidecar"]["detectors"] == 2 and summary["sidecar"]["ready"] is True
    thresholds = client.get("/v1/dashboard/thresholds", headers=ADMIN_AUTH).json()
    assert {t["detector"] for t in thresholds} == {"scam", "power"}


def test_openapi_documents_the_binary_ingest_body(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/activations"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/vnd.safetensors", "application/octet-stream"}
    schemes = spec["components"]["securitySchemes"]
    assert {"IngestToken", "AdminToken"} <= set(schemes)


def test_a_final_turn_detector_is_listed_over_http(tmp_path, sae_dir, sae):
    """A spec whose span is ``final_turn`` (as the shipped power_seeking one) is listed with its span."""
    import httpx
    from sidecar_testkit import live_server

    specs = tmp_path / "final-turn-detectors"
    make_spec(sae, "power_seeking", latents=(5, 21), weights=(1.0, 0.5), span="final_turn").save(specs / "ps.json")
    sidecar = Sidecar.load(make_settings(tmp_path, sae_dir, specs))
    with live_server(create_app(sidecar)) as url:
        r = httpx.get(url + "/v1/detectors", headers=INGEST_AUTH, timeout=10)
        assert r.status_code == 200, r.text
        [info] = r.json()["detectors"]
        assert (info["name"], info["span"]) == ("power_seeking", "final_turn")
        assert httpx.get(url + "/v1/dashboard/thresholds", headers=ADMIN_AUTH, timeout=10).json()[0]["detector"] \
            == "power_seeking"


def test_an_unexpected_exception_answers_json_500_and_the_server_goes_on(sidecar, monkeypatch):
    import httpx
    from sidecar_testkit import live_server

    def broken() -> None:
        raise RuntimeError("injected fault")

    with live_server(create_app(sidecar)) as url:
        monkeypatch.setattr(sidecar, "readiness", broken)
        r = httpx.get(url + "/readyz", timeout=10)
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["error"] == "internal"
        assert "RuntimeError" in body["detail"] and "GET /readyz" in body["detail"]
        assert "injected fault" not in body["detail"]  # messages may carry internals; they go to the log only
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        monkeypatch.undo()
        assert httpx.get(url + "/readyz", timeout=10).status_code == 200


def test_dashboard_sign_in_sets_a_session_cookie_that_only_the_dashboard_accepts(client, sidecar):
    from monitor.service.app import DASHBOARD_COOKIE, _session_value

    assert client.post("/v1/dashboard/login", json={"token": INGEST}).status_code == 403
    assert client.post("/v1/dashboard/login", json={}).status_code == 400
    assert client.post("/v1/dashboard/login", content=b"token", headers={"Content-Type": "text/plain"}).status_code == 415
    r = client.post("/v1/dashboard/login", json={"token": ADMIN})
    assert r.status_code == 204
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age=43200" in cookie and ADMIN not in cookie
    assert client.get("/v1/dashboard/summary").status_code == 200  # the client keeps the cookie
    assert client.post("/v1/admin/reload").status_code == 401  # the session is for the dashboard only
    session = client.cookies[DASHBOARD_COOKIE]
    client.cookies.clear()
    expires, _, mac = session.partition(".")
    for forged in (f"{int(expires) + 3600}.{mac}", f"{expires}.{'0' * 64}", "garbage", _session_value(INGEST, 2**40),
                   _session_value(ADMIN, 1000)):  # moved expiry, wrong mac, junk, keyed with another token, expired
        client.cookies.set(DASHBOARD_COOKIE, forged)
        r = client.get("/v1/dashboard/summary")
        assert r.status_code == 401 and "sign in again" in r.json()["detail"], forged
    client.cookies.set(DASHBOARD_COOKIE, session)
    assert client.get("/v1/dashboard/summary").status_code == 200
    form = client.post("/v1/dashboard/login", data={"token": ADMIN}, follow_redirects=False)
    assert form.status_code == 303 and form.headers["location"] == "../../dashboard"
    out = client.post("/v1/dashboard/logout", follow_redirects=False)
    assert out.status_code == 303 and f'{DASHBOARD_COOKIE}=""' in out.headers["set-cookie"]
    r = client.request("DELETE", "/v1/dashboard/login")
    assert r.status_code == 405 and {"GET", "POST"} <= {m.strip() for m in r.headers["allow"].split(",")}
