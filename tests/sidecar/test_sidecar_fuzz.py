"""Fuzzing the API: hypothesis against the ingest endpoint, schemathesis against the OpenAPI document.
No input may produce a 5xx or hurt the service."""

from __future__ import annotations

import json
import struct

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sidecar_testkit import ADMIN, INGEST, INGEST_AUTH, SAFETENSORS, make_batch

from monitor.service.app import create_app
from monitor.service.sidecar import Sidecar

POST = {**INGEST_AUTH, **SAFETENSORS}
ALLOWED = {202, 400, 404, 409, 413}
VALID = make_batch([("r1", 3, False), ("r2", 2, True)], hot=2.0).to_bytes()


def _header(body: bytes) -> dict:
    (n,) = struct.unpack("<Q", body[:8])
    return json.loads(body[8 : 8 + n])


def _with_header(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


_DATA = VALID[8 + struct.unpack("<Q", VALID[:8])[0] :]
_ints = st.one_of(st.integers(-3, 40), st.integers(-(2**63), 2**63 - 1), st.just(10**9))
_json_values = st.recursive(st.none() | st.booleans() | _ints | st.text(max_size=8),
                            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                            max_leaves=12)


@st.composite
def mutated_bodies(draw) -> bytes:
    """A valid batch with bytes flipped, cut, or inserted; or its header fields replaced."""
    kind = draw(st.sampled_from(["flip", "cut", "insert", "field", "tensor_entry", "metadata", "random"]))
    body = bytearray(VALID)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(body) - 1))
            body[i] = draw(st.integers(0, 255))
    elif kind == "cut":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif kind == "insert":
        i = draw(st.integers(0, len(body)))
        body[i:i] = draw(st.binary(min_size=1, max_size=64))
    elif kind in ("field", "tensor_entry"):
        header = _header(VALID)
        name = draw(st.sampled_from(["activations", "token_ids", "positions", "roles", "offsets"]))
        if kind == "field":
            key = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
            header[name][key] = draw(_json_values | st.lists(_ints, min_size=1, max_size=3))
        else:
            header[name] = draw(_json_values)
        return _with_header(header, _DATA)
    elif kind == "metadata":
        header = _header(VALID)
        key = draw(st.sampled_from(["schema", "model", "hook", "sae_sha256", "requests", "extra"]))
        value = draw(st.one_of(st.text(max_size=40), _json_values.map(json.dumps)))
        header["__metadata__"][key] = value if draw(st.booleans()) else draw(_json_values)
        return _with_header(header, _DATA)
    else:
        return draw(st.binary(max_size=2048))
    return bytes(body)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=mutated_bodies())
def test_hypothesis_fuzzed_batches_never_cause_a_5xx(client, body):
    r = client.post("/v1/activations", content=body, headers=POST)
    assert r.status_code in ALLOWED, (r.status_code, r.text)
    assert r.json().get("error") or r.status_code == 202


def test_the_service_is_healthy_after_fuzzing(client):
    import random

    rng = random.Random(0)
    for _ in range(300):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        assert client.post("/v1/activations", content=body, headers=POST).status_code in ALLOWED
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["ready"] is True
    assert client.post("/v1/activations", content=VALID, headers=POST).status_code == 202


# ------------------------------------------------------------------------------------- schemathesis
def _openapi_document() -> dict:
    """The app's OpenAPI document (it does not depend on the SAE or detectors a sidecar loads)."""
    import shutil
    import tempfile
    from pathlib import Path

    from sidecar_testkit import make_sae, make_settings

    tmp = Path(tempfile.mkdtemp(prefix="sidecar-openapi-"))
    try:
        make_sae(tmp / "sae")
        sidecar = Sidecar.load(make_settings(tmp, tmp / "sae", None))
        doc = create_app(sidecar).openapi()
        sidecar.close()
        return doc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


schemathesis.serializer.alias("application/vnd.safetensors", "application/octet-stream")
schema = schemathesis.openapi.from_dict(_openapi_document())


@pytest.mark.parametrize("token", ["ingest", "admin"])
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_errors_or_undocumented_answers(case, token, live_url):
    """Every operation, called with the ingest token and with the admin token against a live server: no 5xx, and
    every answer (status code, content type, body, headers) is one the OpenAPI document declares, including the
    401/403 of an operation that needs the other token."""
    from schemathesis.checks import positive_data_acceptance

    secret = {"ingest": INGEST, "admin": ADMIN}[token]
    # Random bytes are valid "binary" for the schema but not valid batches: a 400 there is right.
    case.call_and_validate(base_url=live_url, headers={"Authorization": f"Bearer {secret}"},
                           excluded_checks=[positive_data_acceptance])


def test_the_openapi_document_declares_the_dashboard_and_its_auth(client):
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["AdminBasic"] == {"type": "http", "scheme": "basic", "description": schemes["AdminBasic"]["description"]}
    assert schemes["DashboardSession"]["in"] == "cookie"
    page = spec["paths"]["/dashboard"]["get"]
    assert "text/html" in page["responses"]["200"]["content"]
    for path in ["/dashboard", "/v1/dashboard/summary", "/v1/dashboard/alerts", "/v1/dashboard/rates",
                 "/v1/dashboard/thresholds", "/v1/dashboard/health"]:
        op = spec["paths"][path]["get"]
        assert op["security"] == [{"AdminToken": []}, {"AdminBasic": []}, {"DashboardSession": []}], path
        assert {"401", "403"} <= set(op["responses"]), path
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"], path
    ingest = spec["paths"]["/v1/activations"]["post"]["responses"]
    for code in ("400", "413"):
        assert ingest[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "Retry-After" in ingest["429"]["headers"]
