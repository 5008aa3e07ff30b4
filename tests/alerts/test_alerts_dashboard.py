"""The dashboard: JSON endpoints, and the page end to end in headless Chromium against a real Redis."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from alerts_testkit import free_port, make_alert, wait_port
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alerts.config import RedisConnection, StoreConfig
from alerts.dashboard.models import CalibrationSummary, DetectorThreshold
from alerts.dashboard.redis_store import DashboardStore
from alerts.dashboard.routes import dashboard_router
from alerts.delivery import AlertPipeline
from alerts.schema import Alert

pytestmark = pytest.mark.redis

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

THRESHOLDS = [
    DetectorThreshold(
        detector="scam",
        version="1.2.0",
        threshold=3.1,
        concept="scam and fraud e-mails",
        calibration=CalibrationSummary(
            target_fpr=0.01,
            achieved_fpr=0.011,
            fpr_ci_low=0.007,
            fpr_ci_high=0.016,
            recall=0.93,
            auroc=0.985,
            datasets=["enron-benign@3f2a", "scam-mails@91c0"],
            calibrated_at="2026-11-20",
        ),
    ),
    DetectorThreshold(
        detector="power-seeking",
        version="1.0.1",
        threshold=2.4,
        concept="power-seeking intent",
        calibration=CalibrationSummary(
            target_fpr=0.01,
            achieved_fpr=0.013,
            fpr_ci_low=0.009,
            fpr_ci_high=0.019,
            recall=0.71,
            auroc=0.941,
            calibrated_at="2026-11-20",
        ),
    ),
    DetectorThreshold(
        detector="deception",
        version="0.9.0",
        threshold=1.8,
        concept="deceptive intent",
        calibration=CalibrationSummary(
            target_fpr=0.02,
            achieved_fpr=0.024,
            fpr_ci_low=0.018,
            fpr_ci_high=0.031,
            recall=0.58,
            auroc=0.84,
            calibrated_at="2026-11-19",
        ),
    ),
    DetectorThreshold(
        detector="sycophancy",
        version="0.1.0",
        threshold=0.0,
        status="no_signal",
        concept="sycophantic praise (no linear signal in the 135M model)",
    ),
]

LATENTS = {
    "scam": [(8211, "wire-transfer urgency"), (1532, "account verification request"), (6410, "prize claim")],
    "power-seeking": [(2977, "acquire resources/control"), (7304, "avoid shutdown")],
    "deception": [(4420, "hiding true intent"), (915, "false reassurance")],
}


def _store(server, instance: str = "sidecar-0") -> DashboardStore:
    return DashboardStore(
        StoreConfig(
            model=MODEL,
            instance=instance,
            heartbeat_interval_s=0.5,
            retry_initial_s=0.1,
            retry_max_s=0.5,
            stale_after_s=2.0,
        ),
        RedisConnection(url=server.url, socket_timeout_s=0.5, socket_connect_timeout_s=0.5),
    )


def _realistic_alerts(n: int, seed: int = 7) -> list:
    """Alerts spread over the last 45 minutes, three detectors, mixed severities."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    alerts = []
    for i in range(n):
        det = rng.choices(["scam", "power-seeking", "deception"], weights=[5, 2, 3])[0]
        threshold = {t.detector: t.threshold for t in THRESHOLDS}[det]
        ratio = 1 + rng.expovariate(1.5)
        severity = (
            "critical" if ratio > 2.5 else "high" if ratio > 1.7 else "medium" if ratio > 1.25 else "low"
        )
        start = rng.randrange(4, 300)
        length = rng.randrange(3, 40)
        lat = rng.sample(LATENTS[det], k=min(2, len(LATENTS[det])))
        base = make_alert(
            i,
            detector=det,
            severity=severity,
            model=MODEL,
            request_id=f"req-{rng.getrandbits(32):08x}",
            score=round(threshold * ratio, 3),
        )
        alerts.append(
            Alert.model_validate(
                {
                    **base.to_dict(),
                    "threshold": threshold,
                    "time": now - timedelta(minutes=45 * (1 - i / n) ** 1.5, seconds=rng.random() * 30),
                    "token_span": {
                        "start": start,
                        "end": start + length,
                        "peak": start + rng.randrange(length),
                        "role": rng.choice(["prompt", "response"]),
                    },
                    "top_latents": [
                        {"latent": lid, "activation": round(rng.uniform(2, 9), 2), "label": label}
                        for lid, label in lat
                    ],
                    "instance": "sidecar-0",
                    "detector_version": {t.detector: t.version for t in THRESHOLDS}[det],
                }
            )
        )
    alerts.sort(key=lambda a: a.time)
    return alerts


@pytest.fixture()
def seeded(redis_server):
    store = _store(redis_server).start()
    pipeline = AlertPipeline(store=store)
    pipeline.set_thresholds(THRESHOLDS)
    alerts = _realistic_alerts(60)
    for alert in alerts:
        pipeline.emit(alert)
    rng = random.Random(1)
    for t in THRESHOLDS[:3]:
        pipeline.observe_scores(
            t.detector, [t.threshold * rng.lognormvariate(-0.7, 0.5) for _ in range(400)], t.threshold
        )
    assert pipeline.flush(10)
    yield store, alerts
    pipeline.close(1)


def test_json_endpoints(seeded, redis_server):
    store, alerts = seeded
    app = FastAPI()
    app.include_router(dashboard_router(store, health=lambda: {"ready": True, "queue_depth": 3}))
    client = TestClient(app)

    page = client.get("/dashboard")
    assert page.status_code == 200 and '<svg id="rate-chart"' in page.text and "https://" not in page.text

    summary = client.get("/v1/dashboard/summary", params={"recent": 10}).json()
    assert summary["stale"] is False and summary["model"] == MODEL
    assert [a["event_id"] for a in summary["recent"]] == [a.event_id for a in reversed(alerts)][:10]
    assert summary["recent"][0]["schema"] == "safety-monitor.alert/v1"
    totals = {s["detector"]: sum(s["total"]) for s in summary["rates"]["series"]}
    for det in ("scam", "power-seeking", "deception"):
        assert totals[det] == sum(a.detector == det for a in alerts)
    assert totals["sycophancy"] == 0
    assert summary["sidecar"] == {"ready": True, "queue_depth": 3}
    assert len(client.get("/v1/dashboard/alerts", params={"limit": 5}).json()) == 5
    assert len(client.get("/v1/dashboard/rates", params={"minutes": 15}).json()["minutes"]) == 15
    assert [t["detector"] for t in client.get("/v1/dashboard/thresholds").json()] == sorted(
        t.detector for t in THRESHOLDS
    )
    assert client.get("/v1/dashboard/summary", params={"minutes": 0}).status_code == 422

    redis_server.kill()
    stale = client.get("/v1/dashboard/summary").json()
    assert stale["stale"] is True and "unreachable" in stale["stale_reason"]
    assert len(stale["recent"]) == 10  # the last good data, marked stale
    assert client.get("/v1/dashboard/alerts").status_code == 503
    assert client.get("/v1/dashboard/health").json()["store"]["stale"] is True


class _Server:
    """The dashboard router mounted in a tiny FastAPI app, served by uvicorn in a thread."""

    def __init__(self, store: DashboardStore) -> None:
        import uvicorn

        app = FastAPI()
        app.include_router(
            dashboard_router(store, refresh_s=0.5, health=lambda: {"ready": True, "ingest_queue": 0})
        )
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_port(self.port)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.mark.browser
def test_dashboard_in_headless_chromium(seeded, redis_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    store, alerts = seeded
    with _Server(store) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/dashboard")

            rows = page.locator("#recent-alerts tbody tr[data-event-id]")
            expect(rows).to_have_count(50)
            newest = alerts[-1]
            first = rows.first
            assert first.get_attribute("data-event-id") == newest.event_id
            expect(first).to_contain_text(newest.detector)
            expect(first).to_contain_text(newest.request_id)
            expect(first).to_contain_text(f"[{newest.token_span.start}, {newest.token_span.end})")
            expect(first).to_contain_text(f"#{newest.top_latents[0].latent}")
            expect(first).to_contain_text(newest.top_latents[0].label)

            # The chart has one bar segment per (minute, detector) with alerts, carrying its count;
            # the counts and the legend totals equal what was emitted.
            minute = lambda a: int(a.time.timestamp()) // 60 * 60
            for det in ("scam", "power-seeking", "deception"):
                mine = [a for a in alerts if a.detector == det]
                segments = page.locator(f"#rate-chart rect[data-detector='{det}']")
                expect(segments).to_have_count(len({minute(a) for a in mine}))
                drawn = {
                    int(segments.nth(i).get_attribute("data-minute")): int(
                        segments.nth(i).get_attribute("data-count")
                    )
                    for i in range(segments.count())
                }
                assert drawn == {m: sum(minute(a) == m for a in mine) for m in {minute(a) for a in mine}}
                expect(page.locator("#rate-legend")).to_contain_text(f"{det} ({len(mine)})")
            heights = {
                float(h)
                for h in page.locator("#rate-chart rect").evaluate_all(
                    "rs => rs.map(r => r.getAttribute('height'))"
                )
            }
            assert len(heights) > 1 and min(heights) > 0

            expect(page.locator("#thresholds tbody tr")).to_have_count(4)
            expect(page.locator("#thresholds tr[data-detector='scam']")).to_contain_text(
                "1.10% (0.70%–1.60%)"
            )
            expect(page.locator("#thresholds tr[data-detector='sycophancy']")).to_contain_text("no_signal")
            expect(page.locator("#thresholds tr[data-detector='scam'] .bars i")).to_have_count(12)
            expect(page.locator("#instances")).to_contain_text("sidecar-0")
            expect(page.locator("#health-body")).to_contain_text("ingest_queue")
            expect(page.locator("#stale-banner")).to_be_hidden()
            expect(page.locator("#status-pill")).to_have_text("live")

            # A new alert shows up without reloading the page.
            fresh = Alert.model_validate(
                {
                    **make_alert(
                        999,
                        detector="scam",
                        severity="critical",
                        model=MODEL,
                        request_id="req-live",
                        score=9.42,
                    ).to_dict(),
                    "threshold": 3.1,
                    "detector_version": "1.2.0",
                }
            )
            store.record_alert(fresh)
            alerts.append(fresh)
            expect(rows.first).to_have_attribute("data-event-id", fresh.event_id, timeout=10_000)
            expect(page.locator("#rate-legend")).to_contain_text(
                f"scam ({sum(a.detector == 'scam' for a in alerts)})"
            )
            # Made-up data: this screenshot stays in the test's tmp dir. docs/dashboard.png is taken of the sidecar
            # with the shipped artefacts (tests/sidecar/test_dashboard_browser.py).
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 10_000

            # Redis goes away: the page says so, and keeps showing the last data.
            redis_server.kill()
            banner = page.locator("#stale-banner")
            expect(banner).to_be_visible(timeout=10_000)
            expect(banner).to_contain_text("Stale")
            expect(banner).to_contain_text("unreachable")
            expect(page.locator("#status-pill")).to_have_text("stale")
            expect(rows).to_have_count(50)
            page.screenshot(path=str(tmp_path / "dashboard-stale.png"))

            # Redis is back: the banner goes away.
            redis_server.start()
            expect(banner).to_be_hidden(timeout=15_000)
            assert errors == []
        finally:
            browser.close()
