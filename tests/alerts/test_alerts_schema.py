"""The alert event: UUIDv7 ids, validation, forward compatibility, the published JSON Schema."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest
from alerts_testkit import REPO, make_alert, subprocess_env
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from alerts.schema import SCHEMA_ID, Alert, Severity, alert_json_schema, uuid7, uuid7_time


def test_uuid7_layout_and_order():
    before = datetime.now(UTC)
    ids = [uuid7() for _ in range(20_000)]  # far more than one millisecond's worth of counter space
    after = datetime.now(UTC)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "UUIDv7 from one process must be strictly increasing"
    for u in (ids[0], ids[-1]):
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
    # The embedded timestamp is the creation time (millisecond precision; overflow may run ahead slightly).
    assert before.timestamp() - 0.002 <= uuid7_time(ids[0]).timestamp() <= after.timestamp() + 0.002
    assert abs(uuid7_time(ids[-1]).timestamp() - after.timestamp()) < 0.5


def test_roundtrip_uses_wire_names():
    alert = make_alert(3, snippet="[redacted] send the wire today")
    wire = json.loads(alert.to_json())
    assert wire["schema"] == SCHEMA_ID
    assert "schema_id" not in wire
    assert Alert.from_json(alert.to_json()) == alert
    assert Alert.from_json(alert.to_json()).event_id == alert.event_id


def test_unknown_future_fields_are_ignored():
    wire = json.loads(make_alert().to_json())
    wire["added_in_v1_9"] = {"anything": [1, 2]}
    wire["token_span"]["future_flag"] = True
    parsed = Alert.from_json(json.dumps(wire))
    assert parsed.detector == "scam"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schema": "safety-monitor.alert/v2"}, "schema"),
        ({"event_id": str(uuid.uuid4())}, "event_id"),
        ({"score": float("nan")}, "finite"),
        ({"severity": "urgent"}, "severity"),
        ({"sae_sha256": "abc"}, "sae_sha256"),
        ({"token_span": {"start": 5, "end": 5}}, "greater than start"),
        ({"token_span": {"start": 1, "end": 5, "peak": 9}}, "peak"),
        ({"detector": "bad name/with slash"}, "detector"),
        ({"time": "2026-01-01T00:00:00"}, "timezone"),
    ],
)
def test_invalid_events_are_rejected(change, message):
    wire = json.loads(make_alert().to_json())
    wire.update(change)
    with pytest.raises(ValidationError, match=message):
        Alert.model_validate(wire)


def test_severity_order_and_parse():
    assert [s.rank for s in Severity] == [0, 1, 2, 3]
    assert Severity.parse("HIGH") is Severity.HIGH
    with pytest.raises(ValueError, match="low, medium, high, critical"):
        Severity.parse("severe")


def test_published_json_schema_is_current():
    """docs/alert.schema.json is what ``safety-monitor alerts schema`` writes now."""
    on_disk = json.loads((REPO / "docs" / "alert.schema.json").read_text())
    assert on_disk == json.loads(json.dumps(alert_json_schema()))
    assert on_disk["properties"]["schema"]["const"] == SCHEMA_ID
    assert set(on_disk["required"]) >= {"event_id", "model", "detector", "severity", "request_id", "score"}


def test_json_schema_accepts_events_and_rejects_bad_ones():
    import jsonschema  # a dependency of schemathesis (test extras)

    schema = alert_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    good = json.loads(make_alert(1).to_json())
    assert not list(validator.iter_errors(json.loads(make_alert(2, snippet="x").to_json())))
    good["a_future_field"] = 1
    assert not list(validator.iter_errors(good))
    bad = dict(good, severity="urgent")
    assert list(validator.iter_errors(bad))


_finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    score=_finite,
    threshold=_finite,
    start=st.integers(0, 10_000),
    length=st.integers(1, 500),
    severity=st.sampled_from(list(Severity)),
    request_id=st.text(min_size=1, max_size=40),
    label=st.none() | st.text(max_size=50),
)
def test_roundtrip_property(score, threshold, start, length, severity, request_id, label):
    alert = make_alert(
        score=score,
        severity=severity.value,
        request_id=request_id,
    ).model_copy(update={"threshold": threshold})
    alert = Alert.model_validate(
        dict(
            alert.to_dict(),
            token_span={"start": start, "end": start + length},
            top_latents=[{"latent": 5, "activation": score, "label": label}],
        )
    )
    assert Alert.from_json(alert.to_json()) == alert


def test_alerts_package_never_imports_torch():
    code = (
        "import sys, pkgutil, importlib, alerts\n"
        "for m in pkgutil.iter_modules(alerts.__path__):\n"
        "    if m.name != '__main__':\n"
        "        importlib.import_module('alerts.' + m.name)\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'monitor', 'detectors'))]\n"
        "assert not bad, bad\n"
        "print(len([m for m in sys.modules if m.startswith('alerts.')]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 10
