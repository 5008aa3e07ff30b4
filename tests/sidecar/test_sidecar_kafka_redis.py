"""With Kafka and Redis configured, the sidecar publishes alerts (key = request id) and feeds the
Redis dashboard store; when Redis dies, scoring and alerting go on."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sidecar_testkit import (
    ADMIN_AUTH,
    INGEST_AUTH,
    SAFETENSORS,
    consume,
    kafka_and_redis,
    make_batch,
    make_settings,
    wait_until,
)

from monitor.service.app import create_app
from monitor.service.sidecar import Sidecar

pytestmark = [pytest.mark.kafka, pytest.mark.redis]
TOPIC = "sidecar-test.alerts"


@pytest.fixture()
def servers(tmp_path):
    with kafka_and_redis(tmp_path, TOPIC) as both:
        yield both


def test_alerts_reach_kafka_and_the_redis_dashboard_and_survive_a_redis_outage(tmp_path, sae_dir, detector_dir,
                                                                               servers):
    broker, redis = servers
    settings = make_settings(tmp_path, sae_dir, detector_dir,
                             kafka={"bootstrap_servers": f"127.0.0.1:{broker.port}"},
                             redis={"url": f"redis://127.0.0.1:{redis.port}/0"},
                             alerts={"publisher": {"topic": TOPIC, "linger_ms": 0}})
    post = {**INGEST_AUTH, **SAFETENSORS}
    with TestClient(create_app(Sidecar.load(settings)), raise_server_exceptions=False) as client:
        assert client.post("/v1/activations", content=make_batch([("k-1", 4, True)], hot=3.0).to_bytes(),
                           headers=post).status_code == 202
        records = consume(f"127.0.0.1:{broker.port}", TOPIC, 1)
        assert records[0].key == b"k-1"
        alert = json.loads(records[0].value)
        assert alert["request_id"] == "k-1" and alert["detector"] == "scam"
        headers = dict(records[0].headers)
        assert headers["event_id"].decode() == alert["event_id"] and headers["detector"] == b"scam"
        wait_until(lambda: client.get("/v1/dashboard/alerts", headers=ADMIN_AUTH).json(), timeout_s=10,
                   what="the alert in the Redis dashboard store")
        assert client.get("/v1/dashboard/health", headers=ADMIN_AUTH).json()["store"]["backend"] == "redis"
        # Webhook subscriptions are registered through the sidecar and kept in Redis for `alerts route`.
        sub = {"url": "https://hooks.example.com/alerts", "detectors": ["scam"], "min_severity": "high",
               "secret": "s3cret-s3cret-s3cret"}
        assert client.post("/v1/webhooks", json=sub, headers=INGEST_AUTH).status_code == 403
        created = client.post("/v1/webhooks", json=sub, headers=ADMIN_AUTH)
        assert created.status_code == 201, created.text
        listed = client.get("/v1/webhooks", headers=ADMIN_AUTH).json()
        assert [w["url"] for w in listed] == [sub["url"]]

        redis.kill()
        assert client.post("/v1/activations", content=make_batch([("k-2", 4, True)], hot=3.0).to_bytes(),
                           headers=post).status_code == 202
        records = consume(f"127.0.0.1:{broker.port}", TOPIC, 2)
        assert [r.key for r in records] == [b"k-1", b"k-2"]
        assert client.get("/readyz").json()["ready"] is True  # Redis is not needed to score and alert
