"""The drift watch against real servers: a Tansu (Kafka-protocol) broker receives exactly one
``detector_drift`` event among the detections, the Redis dashboard store carries the drift state, the
Prometheus gauges report the live rate, and the dashboard page in headless Chromium shows the banner and
the "live rate vs calibrated FPR" column."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from live_traffic import batches, calibrated_detectors, drift_traffic
from sidecar_testkit import (
    ADMIN,
    ADMIN_AUTH,
    INGEST_AUTH,
    SAFETENSORS,
    consume,
    kafka_and_redis,
    live_server,
    make_settings,
    wait_until,
)

from monitor.service.app import create_app
from monitor.service.sidecar import Sidecar

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.browser]
TOPIC = "drift-test.alerts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture()
def servers(tmp_path):
    with kafka_and_redis(tmp_path, TOPIC) as both:
        yield both


def test_drift_reaches_kafka_redis_metrics_and_the_dashboard_banner(tmp_path, sae, sae_dir, servers):
    from playwright.sync_api import expect, sync_playwright

    broker, redis = servers
    det_dir = tmp_path / "detectors"
    calibrated_detectors(sae, det_dir)
    settings = make_settings(tmp_path, sae_dir, det_dir,
                             kafka={"bootstrap_servers": f"127.0.0.1:{broker.port}"},
                             redis={"url": f"redis://127.0.0.1:{redis.port}/0"},
                             alerts={"publisher": {"topic": TOPIC, "linger_ms": 0}},
                             drift={"min_requests": 200, "window_s": 600})
    sidecar = Sidecar.load(settings)
    with live_server(create_app(sidecar)) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _, batch in batches(drift_traffic(400, seed=7), "k"):
                body = batch.to_bytes()
                while (r := client.post("/v1/activations", content=body,
                                        headers={**INGEST_AUTH, **SAFETENSORS})).status_code == 429:
                    time.sleep(0.05)
                assert r.status_code == 202, r.text
            wait_until(lambda: client.get("/v1/detectors", headers=ADMIN_AUTH).json()["detectors"][0]["drift"]
                       ["window_requests"] == 400, timeout_s=60, what="400 finished requests")
            drift = {d["name"]: d["drift"] for d in client.get("/v1/detectors", headers=ADMIN_AUTH).json()["detectors"]}
            assert drift["deception"]["state"] == "drifting" and drift["scam"]["state"] == "ok", drift

            # Prometheus: the live rate and the ratio to the calibrated bound, per detector
            metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in client.get("/metrics").text.splitlines()
                       if line.startswith("safety_monitor_detector_")}
            rate = metrics['safety_monitor_detector_live_alert_rate{detector="deception"}']
            assert rate == pytest.approx(drift["deception"]["live_alert_rate"])
            assert metrics['safety_monitor_detector_drift_ratio{detector="deception"}'] > 10
            assert metrics['safety_monitor_detector_drifting{detector="deception"}'] == 1
            assert metrics['safety_monitor_detector_drifting{detector="scam"}'] == 0
            assert metrics['safety_monitor_detector_drift_events_total{detector="deception"}'] == 1

            # Kafka: every alert, and among them exactly one detector_drift event
            assert sidecar.alert_pipeline.flush(30)
            emitted = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
            records = consume(f"127.0.0.1:{broker.port}", TOPIC, len(emitted), settle_ms=500)
            values = [json.loads(r.value) for r in records]
            assert len({v["event_id"] for v in values}) == len(emitted)
            drift_events = [v for v in values if v.get("kind") == "detector_drift"]
            assert len(drift_events) == 1, drift_events
            event = drift_events[0]
            assert event["detector"] == "deception" and event["drift"]["live_rate_ci"][0] > 2 * event["drift"][
                "calibrated_fpr_upper_bound"]
            [key] = [r.key for r in records if json.loads(r.value)["event_id"] == event["event_id"]]
            assert key.decode() == event["request_id"] and key.startswith(b"detector-drift:deception:1:")

            # Redis: the dashboard store carries the drift state (the summary is read from Redis)
            def summary_drift():
                s = client.get("/v1/dashboard/summary", headers=ADMIN_AUTH).json()
                rows = {t["detector"]: t for t in s["thresholds"]}
                return s["store"]["backend"] == "redis" and rows.get("deception", {}).get("drift") and rows
            rows = wait_until(summary_drift, timeout_s=15, what="the drift state in the Redis dashboard store")
            assert rows["deception"]["drift"]["state"] == "drifting" and rows["scam"]["drift"]["state"] == "ok"
            assert sidecar.alert_pipeline.store.thresholds()[0].drift is not None  # read straight from Redis
            listed = client.get("/v1/dashboard/alerts?limit=1000", headers=ADMIN_AUTH).json()
            assert [a["event_id"] for a in listed if a.get("kind") == "detector_drift"] == [event["event_id"]]
            per_minute = client.get("/v1/dashboard/rates?minutes=5", headers=ADMIN_AUTH).json()
            counted = sum(sum(s["total"]) for s in per_minute["series"])
            assert counted == len(emitted) - 1  # the drift event is listed, not counted as a detection

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_context(extra_http_headers={"Authorization": f"Bearer {ADMIN}"}).new_page()
                page.goto(url + "/dashboard")
                banner = page.locator("#drift-banner")
                expect(banner).to_be_visible(timeout=15_000)
                expect(banner).to_contain_text("deception")
                expect(banner).not_to_contain_text("scam")
                expect(page.locator("#thresholds tr[data-detector='deception'] [data-drift='drifting']")).to_be_visible()
                expect(page.locator("#thresholds tr[data-detector='scam'] [data-drift='ok']")).to_be_visible()
                expect(page.locator("#thresholds thead")).to_contain_text("Live rate vs calibrated FPR")
            finally:
                browser.close()
