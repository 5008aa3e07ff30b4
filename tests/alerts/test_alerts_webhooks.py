"""Webhooks: signatures, the Redis registry, the admin API, and routing from a real broker to
real HTTP endpoints with retries and a dead-letter topic."""

from __future__ import annotations

import itertools
import json
import time

import pytest
from alerts_testkit import Receiver, make_alert, read_topic
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alerts.config import KafkaConnection, WebhookRouterConfig
from alerts.schema import Alert
from alerts.webhooks.api import webhook_admin_router
from alerts.webhooks.registry import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookRegistry,
    WebhookSubscription,
    sign,
    verify_signature,
)
from alerts.webhooks.router import DEAD_LETTER_SCHEMA, WebhookRouter


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_signature_roundtrip_and_rejections():
    body = make_alert().to_json()
    now = int(time.time())
    sig = sign("s" * 20, now, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify_signature("s" * 20, body, str(now), sig)
    assert not verify_signature("s" * 20, body + b" ", str(now), sig)  # body changed
    assert not verify_signature("t" * 20, body, str(now), sig)  # wrong secret
    assert not verify_signature("s" * 20, body, str(now + 1), sig)  # timestamp is signed too
    old = now - 3600
    assert not verify_signature("s" * 20, body, str(old), sign("s" * 20, old, body))  # replay window
    assert not verify_signature("s" * 20, body, None, sig)


@pytest.mark.redis
def test_registry_in_redis(redis_server):
    registry = WebhookRegistry(redis_server.client(), namespace="t")
    a = registry.add(
        WebhookSubscription(url="https://hooks.example/a", detectors=["scam"], min_severity="high")
    )
    b = registry.add(WebhookSubscription(url="http://10.0.0.5:8080/b"))
    redis_server.client().hset("t:webhooks", "junk", "{not json")
    assert [s.id for s in registry.list()] == sorted([a.id, b.id])
    assert registry.get(a.id).secret == a.secret
    assert registry.get(a.id).alert_filter().matches(make_alert(severity="critical"))
    assert not registry.get(a.id).alert_filter().matches(make_alert(severity="medium"))
    assert registry.remove(a.id) and not registry.remove(a.id)
    with pytest.raises(ValueError, match="http"):
        WebhookSubscription(url="file:///etc/passwd")


@pytest.mark.redis
def test_admin_api(redis_server):
    app = FastAPI()
    app.include_router(webhook_admin_router(WebhookRegistry(redis_server.client())))
    client = TestClient(app)
    created = client.post(
        "/v1/webhooks", json={"url": "https://hooks.example/x", "detectors": ["scam"], "min_severity": "high"}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert len(body["secret"]) >= 32
    listed = client.get("/v1/webhooks").json()
    assert [w["id"] for w in listed] == [body["id"]] and "secret" not in listed[0]
    assert client.get(f"/v1/webhooks/{body['id']}").json()["min_severity"] == "high"
    assert client.post("/v1/webhooks", json={"url": "ftp://x"}).status_code == 422
    assert client.post("/v1/webhooks", json={"url": "https://x", "bogus": 1}).status_code == 422
    assert client.delete(f"/v1/webhooks/{body['id']}").status_code == 204
    assert client.delete(f"/v1/webhooks/{body['id']}").status_code == 404
    redis_server.kill()
    down = client.get("/v1/webhooks")
    assert down.status_code == 503 and "Redis" in down.json()["detail"]


@pytest.mark.kafka
@pytest.mark.redis
def test_router_delivers_signed_retries_and_dead_letters(
    kafka_broker, redis_server, receiver, topic, record_figures
):
    registry = WebhookRegistry(redis_server.client())
    ok = registry.add(WebhookSubscription(url=receiver.url + "/ok", detectors=["scam"], min_severity="high"))
    flaky_sub = registry.add(WebhookSubscription(url=receiver.url + "/flaky"))
    down = registry.add(WebhookSubscription(url=receiver.url + "/down", min_severity="critical"))
    rejecting = registry.add(WebhookSubscription(url=receiver.url + "/rejects", detectors=["deception"]))
    receiver.plan = {"/flaky": [503, 503, 200], "/down": [500], "/rejects": [400]}

    from kafka import KafkaProducer

    # One request id: same partition, so the router sees them in this order.
    alerts = [
        make_alert(1, severity="high", request_id="r"),
        make_alert(2, severity="critical", detector="deception", request_id="r"),
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    for a in alerts:
        producer.send(topic, key=a.request_id.encode(), value=a.to_json())
    producer.send(topic, value=b"poison: not an alert")
    producer.flush(10)
    producer.close()

    config = WebhookRouterConfig(
        topic=topic,
        group_id=f"router-{topic}",
        dead_letter_topic=f"{topic}.dlq",
        max_attempts=3,
        retry_initial_s=0.1,
        retry_max_s=0.4,
        max_poll_interval_ms=2000,
    )
    router = WebhookRouter(KafkaConnection(bootstrap_servers=kafka_broker.bootstrap), registry, config)
    try:
        stats = router.run(idle_timeout_s=1.5)
    finally:
        router.close()

    # /ok: only the high scam alert; /flaky: both alerts, the first after two 503s.
    assert [json.loads(r[2])["event_id"] for r in receiver.to("/ok")] == [alerts[0].event_id]
    flaky = receiver.to("/flaky")
    assert [json.loads(r[2])["event_id"] for r in flaky] == [alerts[0].event_id] * 3 + [alerts[1].event_id]
    gaps = [b[3] - a[3] for a, b in itertools.pairwise(flaky[:3])]
    assert all(g >= 0.07 for g in gaps), f"retries must back off, gaps {gaps}"
    assert len(receiver.to("/down")) == 3  # critical only, max_attempts
    assert len(receiver.to("/rejects")) == 1  # a 400 is not retried
    for path, headers, body, _ in receiver.requests:
        sub = {"/ok": ok, "/flaky": flaky_sub, "/down": down, "/rejects": rejecting}[path]
        assert verify_signature(sub.secret, body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
        assert headers[EVENT_ID_HEADER] == json.loads(body)["event_id"]
        assert Alert.from_json(body)

    dead = [json.loads(r.value) for r in read_topic(kafka_broker.bootstrap, f"{topic}.dlq", expect=2)]
    assert {(d["subscription_id"], d["attempts"], d["last_status"]) for d in dead} == {
        (down.id, 3, 500),
        (rejecting.id, 1, 400),
    }
    assert all(
        d["schema"] == DEAD_LETTER_SCHEMA and d["alert"]["event_id"] == alerts[1].event_id for d in dead
    )
    assert (stats.alerts, stats.delivered, stats.dead_lettered) == (2, 3, 2)
    assert stats.consumer.malformed == 1
    record_figures(
        webhook_posts=stats.attempts,
        delivered=stats.delivered,
        dead_lettered=stats.dead_lettered,
        poison_skipped=stats.consumer.malformed,
    )
