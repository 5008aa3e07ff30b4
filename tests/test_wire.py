"""The activation wire format: random valid batches round-trip; anything malformed raises
``WireFormatError`` (and only that) with a message that says what was wrong."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from monitor.wire import SCHEMA, SCHEMA_V1, ActivationBatch, WireFormatError, WireLimits

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
FLOAT_WIDTH = {torch.float16: 16, torch.bfloat16: 32, torch.float32: 32}
# bfloat16 has float32's range, but values near float32's max can round up to inf.
FLOAT_MAX = {torch.float16: 65504.0, torch.bfloat16: 2.0**126, torch.float32: 2.0**127}
text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=24)
request_id = st.text(st.characters(codec="utf-8", blacklist_characters="\n"), min_size=1, max_size=24)


# ------------------------------------------------------------------------------------ strategies
@st.composite
def batches(draw, max_requests: int = 5, max_tokens_per_request: int = 6) -> ActivationBatch:
    dtype = draw(st.sampled_from(DTYPES), label="dtype")
    d_in = draw(st.integers(1, 8), label="d_in")
    ids = draw(st.lists(request_id, max_size=max_requests, unique=True), label="ids")
    counts = [draw(st.integers(0, max_tokens_per_request)) for _ in ids]
    n = sum(counts)
    values = draw(st.lists(st.floats(-FLOAT_MAX[dtype], FLOAT_MAX[dtype], width=FLOAT_WIDTH[dtype]),
                           min_size=n * d_in, max_size=n * d_in), label="values")
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    positions = [p for c in counts for p in range(draw(st.integers(0, 1000)), 10**9)[:c]]
    return ActivationBatch(
        activations=torch.tensor(values, dtype=torch.float32).reshape(n, d_in).to(dtype),
        token_ids=torch.tensor(draw(st.lists(st.integers(0, 2**31 - 1), min_size=n, max_size=n)),
                               dtype=torch.int32),
        positions=torch.tensor(positions, dtype=torch.int32),
        roles=torch.tensor(draw(st.lists(st.sampled_from([ROLE_PROMPT, ROLE_RESPONSE]), min_size=n, max_size=n)),
                           dtype=torch.uint8),
        offsets=torch.tensor(offsets, dtype=torch.int64),
        request_ids=ids,
        final=draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids))),
        model=draw(text, label="model"),
        hook=draw(text, label="hook"),
        sae_sha256=draw(st.one_of(st.just(""), st.text("0123456789abcdef", min_size=64, max_size=64))),
        extra_metadata=draw(st.dictionaries(text.filter(lambda k: k not in ("schema", "model", "hook",
                                                                             "sae_sha256", "requests")),
                                            st.text(st.characters(codec="utf-8"), max_size=10), max_size=3)),
    )


def assert_same(a: ActivationBatch, b: ActivationBatch) -> None:
    assert (a.latent_ids is None) == (b.latent_ids is None)
    for name in ("activations", "token_ids", "positions", "roles", "offsets", "latent_ids"):
        ta, tb = getattr(a, name), getattr(b, name)
        if ta is None:
            continue
        assert ta.dtype == tb.dtype, name
        assert ta.shape == tb.shape, name
        # Bitwise: -0.0 and subnormals survive too.
        assert torch.equal(ta.view(-1).view(torch.uint8) if ta.numel() else ta,
                           tb.view(-1).view(torch.uint8) if tb.numel() else tb), name
    assert (a.request_ids, a.final, a.model, a.hook, a.sae_sha256, a.extra_metadata) == \
        (b.request_ids, b.final, b.model, b.hook, b.sae_sha256, b.extra_metadata)


def valid_batch(n_per_request=(3, 0, 2), d_in: int = 4, dtype=torch.float16, **overrides) -> ActivationBatch:
    n = sum(n_per_request)
    offsets = [0]
    for c in n_per_request:
        offsets.append(offsets[-1] + c)
    fields = {
        "activations": torch.arange(n * d_in, dtype=torch.float32).reshape(n, d_in).to(dtype) / 7,
        "token_ids": torch.arange(n, dtype=torch.int32) + 100,
        "positions": torch.tensor([p for c in n_per_request for p in range(c)], dtype=torch.int32),
        "roles": torch.tensor([ROLE_PROMPT] * (n - 1) + [ROLE_RESPONSE] if n else [], dtype=torch.uint8),
        "offsets": torch.tensor(offsets, dtype=torch.int64),
        "request_ids": [f"req-{i}" for i in range(len(n_per_request))],
        "final": [i % 2 == 0 for i in range(len(n_per_request))],
        "model": "smollm2-135m-instruct", "hook": "blocks.15.hook_resid_post", "sae_sha256": "",
    }
    fields.update(overrides)
    return ActivationBatch(**fields)


def raw_body(batch: ActivationBatch, *, tensors: dict | None = None, metadata: dict | None = None,
             drop_metadata: tuple[str, ...] = ()) -> bytes:
    """Serialise with safetensors directly, skipping ``validate`` (to build semantically bad bodies), in the
    older schema v1 (JSON request list): its validation is the same, and it checks that v1 still decodes."""
    t = {"activations": batch.activations, "token_ids": batch.token_ids, "positions": batch.positions,
         "roles": batch.roles, "offsets": batch.offsets}
    t.update(tensors or {})
    t = {k: v for k, v in t.items() if v is not None}
    meta = {"schema": SCHEMA_V1, "model": batch.model, "hook": batch.hook, "sae_sha256": batch.sae_sha256,
            "requests": json.dumps([{"id": r, "final": f} for r, f in zip(batch.request_ids, batch.final)])}
    meta.update(metadata or {})
    meta = {k: v for k, v in meta.items() if k not in drop_metadata}
    return st_save({k: v.contiguous() for k, v in t.items()}, metadata=meta)


def body_from_header(header: object, data: bytes = b"", *, header_len: int | None = None) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


def split_body(body: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", body[:8])
    return json.loads(body[8:8 + n]), body[8 + n:]


def rejects(data, match: str, limits: WireLimits | None = None) -> WireFormatError:
    with pytest.raises(WireFormatError, match=match) as err:
        ActivationBatch.from_bytes(data, limits)
    return err.value


# ------------------------------------------------------------------------------------ round trips
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_roundtrip_random_batches(batch):
    data = batch.to_bytes()
    back = ActivationBatch.from_bytes(data)
    assert_same(batch, back)
    assert back.n_tokens == batch.n_tokens and back.n_requests == batch.n_requests
    assert [(r, s.stop - s.start, f) for r, s, f in back.request_slices()] == \
        [(r, s.stop - s.start, f) for r, s, f in batch.request_slices()]
    # bytes, bytearray and memoryview bodies are all accepted.
    assert_same(ActivationBatch.from_bytes(bytearray(data)), batch)
    assert_same(ActivationBatch.from_bytes(memoryview(data)), batch)


def test_roundtrip_edge_cases():
    empty = valid_batch((), request_ids=[], final=[], roles=torch.empty(0, dtype=torch.uint8),
                        positions=torch.empty(0, dtype=torch.int32))
    assert_same(ActivationBatch.from_bytes(empty.to_bytes()), empty)
    only_empty_requests = valid_batch((0, 0), roles=torch.empty(0, dtype=torch.uint8), final=[True, True])
    back = ActivationBatch.from_bytes(only_empty_requests.to_bytes())
    assert back.final == [True, True] and back.n_tokens == 0 and back.d_in == 4
    for dtype in DTYPES:
        b = valid_batch(dtype=dtype, sae_sha256="f" * 64, extra_metadata={"x-trace": "abc"})
        back = ActivationBatch.from_bytes(b.to_bytes())
        assert back.activations.dtype == dtype
        assert_same(back, b)


def test_decoded_tensors_do_not_alias_the_body():
    data = bytearray(valid_batch().to_bytes())
    batch = ActivationBatch.from_bytes(data)
    before = batch.activations.clone()
    data[-200:] = b"\xff" * 200
    assert torch.equal(batch.activations, before)


# ------------------------------------------------------------------------------------ fuzzing
def only_wire_errors(data) -> ActivationBatch | None:
    """Decode; a malformed body may only raise ``WireFormatError`` (anything else fails the test)."""
    try:
        return ActivationBatch.from_bytes(data)
    except WireFormatError as exc:
        assert str(exc)
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
@example(b"")
@example(b"\x00" * 8)
@example(b"\xff" * 16)
@example(struct.pack("<Q", 2) + b"{}")
@example(struct.pack("<Q", 4) + b"null")
@example(struct.pack("<Q", 2) + b"[]")
@example(struct.pack("<Q", 3) + b"\xff\xfe{")
def test_random_bytes_only_raise_wire_format_error(data):
    assert only_wire_errors(data) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(max_requests=3, max_tokens_per_request=3), st.data())
def test_mutated_valid_bodies_only_raise_wire_format_error(batch, data):
    body = bytearray(batch.to_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "append", "splice", "header_len"]), label="kind")
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(body) - 1))
            body[i] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    elif kind == "append":
        body += data.draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":
        i = data.draw(st.integers(0, len(body)))
        j = data.draw(st.integers(i, len(body)))
        body[i:j] = data.draw(st.binary(max_size=32))
    else:
        body[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    decoded = only_wire_errors(bytes(body))
    if decoded is not None:  # a mutation that kept the body valid must still decode to valid data
        decoded.validate()


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                             st.dictionaries(st.text(max_size=5), c, max_size=3)),
                           max_leaves=8)
dtype_names = st.one_of(st.sampled_from(["F16", "BF16", "F32", "F64", "I32", "I64", "U8", "I8", "BOOL", "F8_E4M3"]),
                        json_values)
shapes = st.one_of(st.lists(st.integers(-2, 10**10), max_size=3), st.lists(st.integers(0, 6), max_size=3),
                   json_values)
data_offsets = st.one_of(st.lists(st.integers(-10, 10**12), min_size=2, max_size=2),
                         st.tuples(st.integers(0, 64), st.integers(0, 256)).map(list), json_values)
entries = st.fixed_dictionaries({"dtype": dtype_names, "shape": shapes, "data_offsets": data_offsets},
                                optional={"extra": json_values})
requests_json = st.one_of(
    st.lists(st.fixed_dictionaries({"id": st.one_of(text, json_values)},
                                   optional={"final": st.one_of(st.booleans(), json_values)}), max_size=3)
    .map(json.dumps),
    json_values.map(json.dumps), st.text(max_size=16))
metadata = st.one_of(
    st.fixed_dictionaries({"schema": st.sampled_from([SCHEMA, SCHEMA_V1, "safety-monitor.activations/v0"]),
                           "model": st.one_of(text, st.just("")), "hook": text, "requests": requests_json},
                          optional={"sae_sha256": st.one_of(st.text(max_size=4), json_values),
                                    "other": json_values}),
    json_values)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.dictionaries(st.sampled_from(["activations", "token_ids", "positions", "roles", "offsets",
                                               "latents", "latent_ids", "request_ids", "final", "bogus"]),
                              entries, min_size=0, max_size=9),
       meta=st.one_of(st.none(), metadata), payload=st.binary(max_size=256))
def test_hand_built_headers_only_raise_wire_format_error(header, meta, payload):
    if meta is not None:
        header["__metadata__"] = meta
    only_wire_errors(body_from_header(header, payload))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(max_requests=3, max_tokens_per_request=3), st.data())
def test_plausible_headers_with_one_wrong_field_only_raise_wire_format_error(batch, data):
    """Start from a valid header and replace one field of one tensor (or the metadata) with junk."""
    header, payload = split_body(batch.to_bytes())
    target = data.draw(st.sampled_from(sorted(header)), label="target")
    if target == "__metadata__":
        key = data.draw(st.sampled_from(["schema", "model", "hook", "requests", "sae_sha256"]), label="key")
        header[target][key] = data.draw(st.one_of(requests_json, json_values), label="value")
    else:
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]), label="field")
        header[target][field] = data.draw({"dtype": dtype_names, "shape": shapes,
                                           "data_offsets": data_offsets}[field], label="value")
    decoded = only_wire_errors(body_from_header(header, payload))
    if decoded is not None:
        decoded.validate()


# ------------------------------------------------------------------------------------ explicit cases
def test_garbage_and_truncated_bodies():
    rejects(b"", "shorter than the 8-byte")
    rejects(b"hello", "shorter than the 8-byte")
    rejects(b"hello world, this is not safetensors", "header claims")
    rejects(body_from_header(b"{not json"), "not valid JSON")
    rejects(body_from_header(b"\xff\xfe\xfd"), "not valid JSON")
    rejects(body_from_header([1, 2]), "must be a JSON object")
    good = valid_batch().to_bytes()
    rejects(good[:-1], "data_offsets .* body size")
    rejects(good[:20], "header claims")


def test_pathological_json_in_header():
    rejects(body_from_header(b"[" * 50_000 + b"]" * 50_000), "JSON")
    rejects(body_from_header(b'{"a": ' + b"9" * 5000 + b"}"), "JSON")
    batch = valid_batch()
    rejects(raw_body(batch, metadata={"requests": "[" * 50_000 + "]" * 50_000}), "requests")
    rejects(raw_body(batch, metadata={"requests": '[{"id": "a", "final": ' + "1" * 5000 + "}]"}), "requests")


def test_wrong_dtypes():
    batch = valid_batch()
    rejects(raw_body(batch, tensors={"activations": batch.activations.double()}), r"activations dtype 'F64'")
    rejects(raw_body(batch, tensors={"activations": batch.activations.to(torch.int32)}),
            r"activations dtype 'I32' unsupported; use F16, BF16 or F32")
    rejects(raw_body(batch, tensors={"token_ids": batch.token_ids.long()}), r"'token_ids' must be I32, got 'I64'")
    rejects(raw_body(batch, tensors={"roles": batch.roles.to(torch.int32)}), r"'roles' must be U8")
    rejects(raw_body(batch, tensors={"offsets": batch.offsets.int()}), r"'offsets' must be I64")
    header, payload = split_body(batch.to_bytes())
    for junk in (["F16"], {"F16": 1}, None, 16):
        header["activations"]["dtype"] = junk
        rejects(body_from_header(header, payload), "'activations': dtype must be a string|activations dtype")


def test_wrong_and_inconsistent_shapes():
    batch = valid_batch()
    rejects(raw_body(batch, tensors={"activations": batch.activations.reshape(-1)}),
            r"'activations' must have a shape of 2 non-negative integers")
    rejects(raw_body(batch, tensors={"activations": batch.activations[None]}), "shape of 2")
    rejects(raw_body(batch, tensors={"token_ids": batch.token_ids[:-1]}), r"token_ids must be \[n_tokens=5\]")
    rejects(raw_body(batch, tensors={"positions": torch.zeros(6, dtype=torch.int32)}),
            r"positions must be \[n_tokens=5\], got shape \(6,\)")
    rejects(raw_body(batch, tensors={"roles": batch.roles.reshape(5, 1)}), "'roles' must have a shape of 1")
    rejects(raw_body(batch, tensors={"offsets": torch.tensor([0, 5], dtype=torch.int64)}),
            r"offsets must be \[n_requests \+ 1 = 4\]")
    header, payload = split_body(batch.to_bytes())
    for bad in ([5, -4], [5.0, 4], [True, 4], "5x4", [[5], 4]):
        h = json.loads(json.dumps(header))
        h["activations"]["shape"] = bad
        rejects(body_from_header(h, payload), "must have a shape of 2 non-negative integers")
    h = json.loads(json.dumps(header))
    h["activations"]["shape"] = [10, 2]  # same byte count, different shape: caught by the other tensors
    rejects(body_from_header(h, payload), r"token_ids must be \[n_tokens=10\]")


def test_header_entries_and_tensor_set():
    batch = valid_batch()
    rejects(raw_body(batch, tensors={"positions": None}), "missing tensor 'positions'")
    rejects(raw_body(batch, tensors={"extra": torch.zeros(2)}), r"unknown tensors \['extra'\]")
    header, payload = split_body(batch.to_bytes())
    header["roles"]["note"] = "x"
    rejects(body_from_header(header, payload), "exactly dtype, shape and data_offsets")
    header, payload = split_body(batch.to_bytes())
    header["roles"] = [1, 2, 3]
    rejects(body_from_header(header, payload), "'roles': header entry")


def test_data_offsets_out_of_range():
    header, payload = split_body(valid_batch().to_bytes())
    for bad in ([-8, 32], [0, 41], [len(payload), len(payload) + 40], [0, 10**12], [40, 0], [0], "0-40", [0.0, 40]):
        h = json.loads(json.dumps(header))
        h["activations"]["data_offsets"] = bad
        rejects(body_from_header(h, payload), "'activations': data_offsets")


def test_request_offsets_out_of_range_or_decreasing():
    batch = valid_batch()  # offsets [0, 3, 3, 5]
    for bad, why in (([1, 3, 3, 5], "start at 0"), ([0, 3, 3, 6], "end at n_tokens=5"),
                     ([0, 4, 3, 5], "never decrease"), ([0, 3, 3, 4], "end"), ([0, -1, 3, 5], "never decrease"),
                     ([0, 3, 99, 5], "never decrease")):
        rejects(raw_body(batch, tensors={"offsets": torch.tensor(bad, dtype=torch.int64)}),
                "offsets must start at 0, end at n_tokens=5 and never decrease")
    no_requests = valid_batch((), request_ids=[], final=[], roles=torch.empty(0, dtype=torch.uint8),
                              positions=torch.empty(0, dtype=torch.int32))
    rejects(raw_body(no_requests, tensors={"offsets": torch.tensor([7], dtype=torch.int64)}), "start at 0")


def test_nan_and_inf_rejected():
    for dtype in DTYPES:
        for bad in (float("nan"), float("inf"), float("-inf")):
            batch = valid_batch(dtype=dtype)
            acts = batch.activations.clone()
            acts[4, 2] = bad
            rejects(raw_body(batch, tensors={"activations": acts}), "NaN or Inf")
    with pytest.raises(WireFormatError, match="NaN or Inf"):
        valid_batch(activations=torch.full((5, 4), float("nan"))).to_bytes()


def test_too_many_tokens_fails_fast_without_allocating():
    """A header claiming a billion tokens is refused from the header alone."""
    batch = valid_batch()
    header, payload = split_body(batch.to_bytes())
    header["activations"]["shape"] = [10**9, 576]
    header["activations"]["data_offsets"] = [0, 10**9 * 576 * 2]
    body = body_from_header(header, payload)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        err = rejects(body, r"activations shape \[1000000000, 576\] exceeds the limits \(65536 tokens")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 0.5
    assert peak < 1 << 20, peak
    assert "65536" in str(err)
    # The same claim on an index tensor is refused by its byte count.
    header, payload = split_body(batch.to_bytes())
    header["token_ids"]["shape"] = [10**9]
    rejects(body_from_header(header, payload), "'token_ids': data_offsets")
    # And a limit below the batch size applies to real bodies.
    rejects(batch.to_bytes(), r"activations shape \[5, 4\] exceeds the limits \(4 tokens", WireLimits(max_tokens=4))
    rejects(batch.to_bytes(), r"d_in 3\)", WireLimits(max_d_in=3))
    with pytest.raises(WireFormatError, match="5 tokens in one batch; the limit is 4"):
        batch.validate(WireLimits(max_tokens=4))


def test_too_many_bytes_requests_or_header():
    data = valid_batch().to_bytes()
    rejects(data, f"body is {len(data)} bytes; the limit is 100", WireLimits(max_bytes=100))
    assert ActivationBatch.from_bytes(data, WireLimits(max_bytes=len(data))).n_tokens == 5
    rejects(data, "header claims .* the limit is 64", WireLimits(max_header_bytes=64))
    rejects(body_from_header(b"{}", header_len=2**63), "header claims")
    rejects(data, "3 requests in one batch; the limit is 2", WireLimits(max_requests=2))
    rejects(raw_body(valid_batch()), "at most 2 requests", WireLimits(max_requests=2))  # schema v1


def test_missing_or_bad_metadata():
    batch = valid_batch()
    header, payload = split_body(batch.to_bytes())
    del header["__metadata__"]
    rejects(body_from_header(header, payload), "missing __metadata__")
    for key in ("model", "hook", "requests"):
        rejects(raw_body(batch, drop_metadata=(key,)), rf"__metadata__.{key} is missing or empty")
        rejects(raw_body(batch, metadata={key: ""}), rf"__metadata__.{key} is missing or empty")
    rejects(raw_body(batch, drop_metadata=("schema",)), "__metadata__.schema must be 'safety-monitor.activations/v2'")
    rejects(raw_body(batch, metadata={"schema": "safety-monitor.activations/v3"}), "got 'safety-monitor.activations/v3'")
    header, payload = split_body(batch.to_bytes())
    header["__metadata__"]["model"] = 5
    rejects(body_from_header(header, payload), "values must all be strings")
    header["__metadata__"] = ["not", "a", "dict"]
    rejects(body_from_header(header, payload), "missing __metadata__")
    rejects(raw_body(batch, metadata={"requests": "{"}), "requests is not valid JSON")
    rejects(raw_body(batch, metadata={"requests": '{"id": "a"}'}), "must be a list")
    rejects(raw_body(batch, metadata={"requests": '["a", "b", "c"]'}), r'each request must be \{"id": str')
    rejects(raw_body(batch, metadata={"requests": '[{"id": 1}, {"id": "b"}, {"id": "c"}]'}), "each request")
    rejects(raw_body(batch, metadata={"requests": '[{"id": "a", "final": 1}, {"id": "b"}, {"id": "c"}]'}),
            "each request")
    # "final" defaults to false.
    ok = ActivationBatch.from_bytes(raw_body(batch, metadata={"requests": '[{"id":"a"},{"id":"b"},{"id":"c"}]'}))
    assert ok.final == [False, False, False]


def test_request_ids():
    batch = valid_batch()
    rejects(raw_body(batch, metadata={"requests": json.dumps([{"id": "a"}, {"id": "b"}, {"id": "a"}])}),
            "request ids must be unique")
    with pytest.raises(WireFormatError, match="unique"):
        valid_batch(request_ids=["x", "x", "y"]).to_bytes()
    rejects(raw_body(batch, metadata={"requests": json.dumps([{"id": ""}, {"id": "b"}, {"id": "c"}])}),
            "non-empty and at most 256")
    rejects(raw_body(batch, metadata={"requests": json.dumps([{"id": "a" * 257}, {"id": "b"}, {"id": "c"}])}),
            "non-empty and at most 256")
    rejects(raw_body(batch, metadata={"requests": json.dumps([{"id": "a"}, {"id": "b"}])}),
            r"offsets must be \[n_requests \+ 1 = 3\]")
    tokens_without_requests = valid_batch(request_ids=[], final=[], offsets=torch.tensor([0], dtype=torch.int64))
    rejects(raw_body(tokens_without_requests), "at least one request")


def test_bad_index_values():
    batch = valid_batch()
    rejects(raw_body(batch, tensors={"roles": torch.tensor([0, 1, 2, 0, 1], dtype=torch.uint8)}),
            r"roles must be 0 \(prompt\) or 1 \(response\)")
    rejects(raw_body(batch, tensors={"token_ids": torch.tensor([1, -2, 3, 4, 5], dtype=torch.int32)}),
            "non-negative")
    rejects(raw_body(batch, tensors={"positions": torch.tensor([0, 1, -1, 0, 1], dtype=torch.int32)}),
            "non-negative")


def test_validate_checks_python_side_objects():
    with pytest.raises(WireFormatError, match="final flags for 3 requests"):
        valid_batch(final=[True]).validate()
    with pytest.raises(WireFormatError, match="activations dtype torch.float64 unsupported"):
        valid_batch(activations=torch.zeros(5, 4, dtype=torch.float64)).validate()
    with pytest.raises(WireFormatError, match=r"activations must be \[n_tokens, d_in\]"):
        valid_batch(activations=torch.zeros(5, dtype=torch.float16)).validate()


@settings(max_examples=50, deadline=None)
@given(st.lists(batches(max_requests=3), min_size=1, max_size=4))
def test_concat_keeps_every_request(parts):
    d_in = parts[0].d_in
    parts = [p for p in parts if p.d_in == d_in]
    ids = [r for p in parts for r in p.request_ids]
    assume(len(set(ids)) == len(ids))
    parts = [ActivationBatch(**{**p.__dict__, "model": "m", "hook": "h", "sae_sha256": "",
                                "activations": p.activations.float()}) for p in parts]
    joined = ActivationBatch.from_bytes(ActivationBatch.concat(parts).to_bytes())
    assert joined.request_ids == ids
    assert joined.final == [f for p in parts for f in p.final]
    rows = {rid: joined.activations[s] for rid, s, _ in joined.request_slices()}
    for p in parts:
        for rid, s, _ in p.request_slices():
            assert torch.equal(rows[rid], p.activations[s])


# ------------------------------------------------------------------------------------ schema v2: columns, latents
def latent_batch(n_per_request=(3, 0, 2), latents=(7, 3, 900), dtype=torch.float32, **overrides) -> ActivationBatch:
    n = sum(n_per_request)
    fields = {"activations": torch.rand(n, len(latents)).to(dtype), "latent_ids": torch.tensor(latents, dtype=torch.int32),
              "sae_sha256": "a" * 64}
    fields.update(overrides)
    return valid_batch(n_per_request, **fields)


def test_v1_and_v2_bodies_decode_to_the_same_batch():
    batch = valid_batch(sae_sha256="f" * 64, extra_metadata={"x-trace": "abc"})
    v2 = batch.to_bytes()
    header, _ = split_body(v2)
    assert header["__metadata__"]["schema"] == SCHEMA and "requests" not in header["__metadata__"]
    assert header["request_ids"]["dtype"] == "U8" and header["final"]["shape"] == [3]
    v1 = raw_body(batch, metadata={"x-trace": "abc"})
    assert_same(ActivationBatch.from_bytes(v1), ActivationBatch.from_bytes(v2))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=6, unique=True))
def test_latent_batches_round_trip(batch, latents):
    n = batch.n_tokens
    lat = ActivationBatch(**{**batch.__dict__, "activations": torch.rand(n, len(latents)).to(batch.activations.dtype),
                             "latent_ids": torch.tensor(latents, dtype=torch.int32), "sae_sha256": "b" * 64})
    back = ActivationBatch.from_bytes(lat.to_bytes())
    assert back.is_latents and back.kind == "latents" and back.kind_key() == tuple(latents)
    assert_same(lat, back)


def test_latent_batch_refusals():
    ok = latent_batch()
    header, payload = split_body(ok.to_bytes())
    assert set(header) - {"__metadata__"} == {"latents", "latent_ids", "token_ids", "positions", "roles", "offsets",
                                              "request_ids", "final"}
    with pytest.raises(WireFormatError, match="must name the SAE"):
        latent_batch(sae_sha256="").to_bytes()
    with pytest.raises(WireFormatError, match="distinct non-negative"):
        latent_batch(latents=(1, 1, 2)).to_bytes()
    with pytest.raises(WireFormatError, match="distinct non-negative"):
        latent_batch(latents=(1, -1, 2)).to_bytes()
    with pytest.raises(WireFormatError, match="names 2 latents but latents has 3 columns"):
        latent_batch(latent_ids=torch.tensor([1, 2], dtype=torch.int32)).to_bytes()
    with pytest.raises(WireFormatError, match="latents contain NaN"):
        latent_batch(activations=torch.full((5, 3), float("nan"))).to_bytes()
    # Both row tensors, or latents without their ids, are refused.
    both = dict(header, activations=header["latents"])
    rejects(body_from_header(both, payload), "unknown tensors")
    no_ids = {k: v for k, v in header.items() if k != "latent_ids"}
    rejects(body_from_header(no_ids, payload), "missing tensor 'latent_ids'")
    bad = json.loads(json.dumps(header))
    bad["latent_ids"]["dtype"] = "I64"
    rejects(body_from_header(bad, payload), "'latent_ids' must be I32")
    rejects(ok.to_bytes(), r"latents shape \[5, 3\] exceeds the limits \(65536 tokens, n_latents 2\)",
            WireLimits(max_d_in=2))


def test_columnar_request_table_refusals():
    batch = valid_batch()
    body = batch.to_bytes()
    header, payload = split_body(body)
    ids_at = header["request_ids"]["data_offsets"][0]
    final_at = header["final"]["data_offsets"][0]

    def patched(at: int, data: bytes) -> bytes:
        p = bytearray(payload)
        p[at : at + len(data)] = data
        return body_from_header(header, bytes(p))

    rejects(patched(ids_at, b"\xff"), "request_ids is not valid UTF-8")
    rejects(patched(ids_at + 5, b"-"), "2 line-separated ids for 3 final flags")  # "req-0-req-1\nreq-2"
    rejects(patched(final_at, b"\x02"), "final flags must be 0 or 1")
    rejects(patched(ids_at + 4, b"1"), "unique")  # "req-1\nreq-1\nreq-2"
    with pytest.raises(WireFormatError, match="must not contain a line break"):
        valid_batch(request_ids=["a\nb", "c", "d"]).to_bytes()
    no_final = {k: v for k, v in header.items() if k != "final"}
    rejects(body_from_header(no_final, payload), "missing tensor 'final'")


def test_coalesce_and_split_keep_the_kind():
    from monitor.wire.merge import coalesce, split

    a = latent_batch((2, 1), request_ids=["x", "y"], final=[False, False])
    b = latent_batch((1, 3), request_ids=["y", "z"], final=[True, False])
    merged = coalesce([a, b])
    assert merged.kind_key() == (7, 3, 900) and merged.request_ids == ["x", "y", "z"] and merged.final == [
        False, True, False]
    assert all(p.kind_key() == (7, 3, 900) for p in split(merged, 2))
    with pytest.raises(ValueError, match="kinds"):
        coalesce([a, latent_batch((1,), latents=(7, 3, 901), request_ids=["w"], final=[False])])
    with pytest.raises(ValueError, match="kinds"):
        coalesce([a, valid_batch((1,), d_in=3, request_ids=["w"], final=[False], sae_sha256="a" * 64)])
