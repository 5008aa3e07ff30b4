"""``safety-monitor alerts tail|route|schema`` as a user runs them (subprocesses, real broker)."""

from __future__ import annotations

import argparse
import json
import subprocess

import pytest
from alerts_testkit import REPO, make_alert, run_python

from alerts.cli import register, run_route, run_tail
from alerts.schema import Severity, alert_json_schema


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for value in values:
        producer.send(topic, key=b"k", value=value)
    producer.flush(10)
    producer.close(5)


def test_register_adds_the_alerts_commands():
    parser = argparse.ArgumentParser(prog="safety-monitor")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "alerts",
            "tail",
            "--detector",
            "scam",
            "--detector",
            "deception",
            "--min-severity",
            "HIGH",
            "--json",
            "--bootstrap",
            "k1:9092",
        ]
    )
    assert args.func is run_tail
    assert args.detector == ["scam", "deception"] and args.min_severity is Severity.HIGH and args.json
    assert parser.parse_args(["alerts", "route", "--redis-url", "redis://r:6379/1"]).func is run_route
    with pytest.raises(SystemExit):
        parser.parse_args(["alerts", "tail", "--min-severity", "severe"])


@pytest.mark.kafka
def test_tail_prints_filtered_alerts_and_counts_poison(kafka_broker, topic):
    alerts = [
        make_alert(0, severity="low"),
        make_alert(1, severity="high"),
        make_alert(2, severity="critical", detector="deception"),
        make_alert(3, severity="critical"),
    ]
    _produce(
        kafka_broker.bootstrap,
        topic,
        [a.to_json() for a in alerts[:2]] + [b"{garbage"] + [a.to_json() for a in alerts[2:]],
    )

    as_json = run_python(
        [
            "-m",
            "alerts",
            "tail",
            "--bootstrap",
            kafka_broker.bootstrap,
            "--topic",
            topic,
            "--from-beginning",
            "--min-severity",
            "high",
            "--detector",
            "scam",
            "--json",
            "--idle-timeout",
            "1.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = as_json.communicate(timeout=60)
    assert as_json.returncode == 0, err
    assert [json.loads(line)["event_id"] for line in out.splitlines()] == [
        alerts[1].event_id,
        alerts[3].event_id,
    ]
    assert "1 malformed message(s) skipped" in err

    human = run_python(
        [
            "-m",
            "alerts",
            "tail",
            "--bootstrap",
            kafka_broker.bootstrap,
            "--topic",
            topic,
            "--from-beginning",
            "--max-messages",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = human.communicate(timeout=60)
    assert human.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and "LOW" in lines[0] and "HIGH" in lines[1] and "request=req-1" in lines[1]


def test_schema_command_prints_the_published_schema(tmp_path):
    proc = run_python(["-m", "alerts", "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out) == json.loads(json.dumps(alert_json_schema()))
    assert json.loads(out) == json.loads((REPO / "docs" / "alert.schema.json").read_text())


@pytest.mark.kafka
@pytest.mark.redis
def test_route_command_delivers_to_a_registered_webhook(kafka_broker, redis_server, topic):
    from alerts_testkit import Receiver

    from alerts.webhooks.registry import (
        SIGNATURE_HEADER,
        TIMESTAMP_HEADER,
        WebhookRegistry,
        WebhookSubscription,
        verify_signature,
    )

    receiver = Receiver()
    try:
        sub = WebhookRegistry(redis_server.client()).add(
            WebhookSubscription(url=receiver.url + "/hook", min_severity="high")
        )
        alerts = [make_alert(0, severity="medium"), make_alert(1, severity="critical")]
        _produce(kafka_broker.bootstrap, topic, [a.to_json() for a in alerts])
        proc = run_python(
            [
                "-m",
                "alerts",
                "route",
                "--bootstrap",
                kafka_broker.bootstrap,
                "--topic",
                topic,
                "--group",
                f"route-{topic}",
                "--redis-url",
                redis_server.url,
                "--max-poll-interval-ms",
                "2000",
                "--idle-timeout",
                "1.5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert "2 alert(s), 1 delivered, 0 dead-lettered" in err
        ((path, headers, body, _),) = receiver.requests
        assert path == "/hook" and json.loads(body)["event_id"] == alerts[1].event_id
        assert verify_signature(sub.secret, body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
    finally:
        receiver.close()
