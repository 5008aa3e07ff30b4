"""Bad input: each gets a precise 4xx, is counted, and leaves the service healthy and scoring."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save as st_save
from sidecar_testkit import ADMIN_AUTH, INGEST_AUTH, SAFETENSORS, make_batch, make_settings

from monitor.service.app import create_app
from monitor.service.sidecar import Sidecar
from monitor.wire import SCHEMA_V1

POST = {**INGEST_AUTH, **SAFETENSORS}
MAX_TOKENS = 256
MAX_BODY = 256 * 1024
MAX_HEADER = 16 * 1024


@pytest.fixture()
def strict(tmp_path, sae_dir, detector_dir):
    settings = make_settings(tmp_path, sae_dir, detector_dir,
                             limits={"max_tokens_per_batch": MAX_TOKENS, "max_body_bytes": MAX_BODY,
                                     "max_header_bytes": MAX_HEADER, "max_requests_per_batch": 64})
    with TestClient(create_app(Sidecar.load(settings)), raise_server_exceptions=False) as client:
        yield client


def parts(batch):
    """The tensors and metadata of the batch in schema v1 (still accepted; JSON request list), to be corrupted
    one at a time."""
    tensors = {"activations": batch.activations, "token_ids": batch.token_ids, "positions": batch.positions,
               "roles": batch.roles, "offsets": batch.offsets}
    meta = {"schema": SCHEMA_V1, "model": batch.model, "hook": batch.hook, "sae_sha256": batch.sae_sha256,
            "requests": json.dumps([{"id": r, "final": f} for r, f in zip(batch.request_ids, batch.final)])}
    return tensors, meta


def raw(tensors, meta) -> bytes:
    return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)


def corrupt(**changes) -> bytes:
    tensors, meta = parts(make_batch([("r1", 4, False), ("r2", 2, False)]))
    for k, v in changes.items():
        if k in tensors:
            tensors[k] = v
        else:
            meta[k] = v
    return raw(tensors, meta)


def header_only(header: dict, pad: int = 0) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"\0" * pad


VALID = make_batch([("r1", 4, False), ("r2", 2, False)]).to_bytes()
NAN = torch.zeros(6, 16, dtype=torch.float16)
NAN[2, 3] = float("nan")
INF = torch.zeros(6, 16, dtype=torch.float16)
INF[0, 0] = float("inf")

CASES = {
    # name: (body, headers, status, error code, words in the detail)
    "garbage bytes": (b"\x07garbage that is not safetensors at all", POST, 400, "malformed_batch", "header"),
    "empty body": (b"", POST, 400, "malformed_batch", "shorter than"),
    "truncated body": (VALID[:-50], POST, 400, "malformed_batch", "data_offsets"),
    "truncated header": (VALID[:40], POST, 400, "malformed_batch", "header claims"),
    "header not json": (struct.pack("<Q", 4) + b"{{{{", POST, 400, "malformed_batch", "not valid JSON"),
    "wrong content type": (VALID, {**INGEST_AUTH, "Content-Type": "application/json"}, 415,
                           "unsupported_media_type", "application/json"),
    "no content type": (VALID, INGEST_AUTH, 415, "unsupported_media_type", "no Content-Type"),
    "token_ids shorter than activations": (corrupt(token_ids=torch.zeros(5, dtype=torch.int32)), POST, 400,
                                           "malformed_batch", "token_ids must be [n_tokens=6]"),
    "activations not 2-d": (corrupt(activations=torch.zeros(6, 16, 1, dtype=torch.float16)), POST, 400,
                            "malformed_batch", "shape"),
    "offsets past the end": (corrupt(offsets=torch.tensor([0, 4, 9])), POST, 400, "malformed_batch", "offsets"),
    "decreasing offsets": (corrupt(offsets=torch.tensor([0, 5, 4])), POST, 400, "malformed_batch", "offsets"),
    "activations float64": (corrupt(activations=torch.zeros(6, 16, dtype=torch.float64)), POST, 400,
                            "malformed_batch", "F64"),
    "NaN activations": (corrupt(activations=NAN), POST, 400, "malformed_batch", "NaN or Inf"),
    "Inf activations": (corrupt(activations=INF), POST, 400, "malformed_batch", "NaN or Inf"),
    "roles out of range": (corrupt(roles=torch.full((6,), 7, dtype=torch.uint8)), POST, 400, "malformed_batch", "roles"),
    "negative positions": (corrupt(positions=torch.full((6,), -1, dtype=torch.int32)), POST, 400, "malformed_batch",
                           "non-negative"),
    "duplicate request ids": (corrupt(requests=json.dumps([{"id": "r1"}, {"id": "r1"}])), POST, 400,
                              "malformed_batch", "unique"),
    "requests not json": (corrupt(requests="[{"), POST, 400, "malformed_batch", "requests is not valid JSON"),
    "wrong schema": (corrupt(schema="v0"), POST, 400, "malformed_batch", "schema"),
    "extra tensor": (raw({**parts(make_batch([("r1", 2, False)]))[0], "x": torch.zeros(1)},
                         parts(make_batch([("r1", 2, False)]))[1]), POST, 400, "malformed_batch", "unknown tensors"),
    "a billion-token header": (header_only({"activations": {"dtype": "F16", "shape": [1_000_000_000, 16],
                                                            "data_offsets": [0, 32_000_000_000]}}), POST, 413,
                               "too_large", "1000000000 tokens"),
    "too many real tokens": (make_batch([("r1", MAX_TOKENS + 1, False)]).to_bytes(), POST, 413, "too_large",
                             f"{MAX_TOKENS + 1} tokens"),
    "too many requests": (make_batch([(f"r{i}", 1, False) for i in range(65)]).to_bytes(), POST, 413, "too_large",
                          "65 requests"),
    "huge metadata": (corrupt(junk="x" * (MAX_HEADER + 10)), POST, 413, "too_large", "header of"),
    "body over the limit": (b"\0" * (MAX_BODY + 1), POST, 413, "too_large", "limit"),
    "unknown request on a final flag": (make_batch([("never-seen", 0, True)]).to_bytes(), POST, 404,
                                        "unknown_request", "'never-seen'"),
    "other model": (make_batch([("r1", 2, False)], model="gpt2").to_bytes(), POST, 409, "mismatch", "'gpt2'"),
    "other hook": (make_batch([("r1", 2, False)], hook="blocks.9.hook_resid_post").to_bytes(), POST, 409,
                   "mismatch", "blocks.9"),
    "other SAE": (make_batch([("r1", 2, False)], sae_sha256="ab" * 32).to_bytes(), POST, 409, "mismatch",
                  "sae_sha256"),
    "other width": (make_batch([("r1", 2, False)], d_in=32).to_bytes(), POST, 409, "mismatch", "d_in 32"),
    "missing token": (VALID, SAFETENSORS, 401, "unauthorized", "missing bearer token"),
    "wrong token": (VALID, {**SAFETENSORS, "Authorization": "Bearer wrong-token-wrong-token"}, 403, "forbidden",
                    "not valid"),
    "admin token for ingest": (VALID, {**SAFETENSORS, **ADMIN_AUTH}, 403, "forbidden", "ingest"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_a_precise_4xx_and_changes_nothing(strict, name):
    body, headers, status, code, words = CASES[name]
    r = strict.post("/v1/activations", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code
    assert words in r.json()["detail"], r.json()["detail"]
    if code == "unknown_request":
        assert r.json()["request_ids"] == ["never-seen"]
    # Still alive, ready and scoring.
    assert strict.get("/healthz").status_code == 200
    assert strict.get("/readyz").json()["ready"] is True
    ok = strict.post("/v1/activations", content=VALID, headers=POST)
    assert ok.status_code == 202 and ok.json()["accepted_tokens"] == 6
    metrics = strict.get("/metrics").text
    assert "safety_monitor_tokens_ingested_total 6.0" in metrics  # the bad call added nothing


def test_a_streamed_body_without_content_length_is_cut_at_the_limit(strict):
    def chunks():
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"\0" * 4096

    r = strict.post("/v1/activations", content=chunks(), headers=POST)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert strict.get("/healthz").status_code == 200


def test_an_oversized_content_length_is_refused_before_reading(strict):
    r = strict.post("/v1/activations", content=VALID, headers={**POST, "Content-Length": str(MAX_BODY + 1)})
    assert r.status_code in (413, 400)  # the transport may refuse the lie itself; the API must not 5xx
