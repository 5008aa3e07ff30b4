"""ActivationTap on the real default model: exact activations, correct attribution through batched
``generate()``, drop-and-count under back-pressure, and no hooks left behind."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from monitor.defaults import hook_name
from monitor.lm.tap import ActivationTap, CollectingSink, resolve_module
from monitor.wire import ActivationBatch

LAYER = 15
PROMPTS = ["Hi", "The capital of France is a city called", "Write a poem about the sea and"]


@pytest.fixture(scope="module")
def lm(default_model):
    return default_model


def _hooks(model) -> dict[str, tuple[tuple, tuple]]:
    """Every module's forward and forward-pre hook ids. (Transformers >= 5 installs its own
    output-capturing forward hooks on the layers the first time hidden states are requested, so
    "no hooks" means: none but those that were there before the tap.)"""
    return {name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
            for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks}


def _no_tap_hooks(model):
    # The tap's pre-hook is the only one on the base model; its layer hook is the only non-transformers one.
    layer_hooks = [h for m in model.model.layers for h in m._forward_hooks.values()]
    return not model.model._forward_pre_hooks and all("output_capturing_hook" in h.__qualname__ for h in layer_hooks)


def _collect(model, layer, run, request_ids, dtype=torch.float16, **track_kwargs) -> CollectingSink:
    sink = CollectingSink()
    with ActivationTap(model, layer=layer, sink=sink, dtype=dtype, model_id="smollm2-135m-instruct") as tap:
        with tap.track(request_ids, **track_kwargs):
            run()
        assert tap.flush(timeout=30)
        assert tap.stats.chunks_dropped == 0 and tap.stats.sink_errors == 0 and tap.stats.delivery_errors == 0
    return sink


@pytest.mark.parametrize("layer", [LAYER, 3])
def test_float32_tap_equals_output_hidden_states_exactly(lm, layer):
    enc = lm.tokenizer(["The capital of France is Paris, and the capital of Italy is"], return_tensors="pt")
    out = {}
    sink = _collect(lm.model, layer, lambda: out.setdefault("o", lm.model(**enc, output_hidden_states=True)),
                    ["r"], dtype=torch.float32)
    got = sink.tokens_by_request()["r"]
    want = out["o"].hidden_states[layer + 1][0]
    assert got.activations.dtype == torch.float32
    assert torch.equal(got.activations, want)
    assert got.hook == hook_name(layer) == f"blocks.{layer}.hook_resid_post"
    assert got.model == "smollm2-135m-instruct"
    assert got.token_ids.tolist() == enc.input_ids[0].tolist()
    assert got.positions.tolist() == list(range(enc.input_ids.shape[1]))
    assert (got.roles == ROLE_PROMPT).all()
    # Not the neighbouring layer's output: the equality above is specific.
    assert not torch.allclose(got.activations, out["o"].hidden_states[layer][0])


def test_float16_tap_within_fp16_tolerance_and_right_padding_dropped(lm):
    tok = lm.tokenizer
    tok.padding_side = "right"
    enc = tok(PROMPTS[1:], return_tensors="pt", padding=True)
    assert (enc.attention_mask == 0).any()  # the batch really is padded
    out = {}
    sink = _collect(lm.model, LAYER, lambda: out.setdefault("o", lm.model(**enc, output_hidden_states=True)),
                    ["b", "c"], attention_mask=enc.attention_mask)
    by_request = sink.tokens_by_request()
    for row, rid in enumerate(["b", "c"]):
        keep = enc.attention_mask[row].bool()
        got = by_request[rid]
        assert got.activations.dtype == torch.float16
        assert got.token_ids.tolist() == enc.input_ids[row][keep].tolist()
        want = out["o"].hidden_states[LAYER + 1][row][keep]
        # float16 keeps 11 significant bits: relative error <= 2^-11 (the attention-sink row is ~2e4).
        torch.testing.assert_close(got.activations.float(), want, rtol=2**-11, atol=1e-4)
        assert torch.equal(got.activations, want.half())


def test_batched_generate_attributes_tokens_to_the_right_requests(lm):
    tok, model = lm.tokenizer, lm.model
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert len(set(enc.attention_mask.sum(1).tolist())) == 3  # three different lengths
    max_new = 6
    out = {}
    ids = ["req-short", "req-long", "req-mid"]
    sink = _collect(model, LAYER,
                    lambda: out.setdefault("seq", model.generate(**enc, max_new_tokens=max_new, do_sample=False)),
                    ids, attention_mask=enc.attention_mask)
    seq, t_prompt = out["seq"], enc.input_ids.shape[1]
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos)
    by_request = sink.tokens_by_request()
    assert list(by_request) == ids
    for row, rid in enumerate(ids):
        got = by_request[rid]
        prompt = seq[row, :t_prompt][enc.attention_mask[row].bool()].tolist()
        generated = seq[row, t_prompt:].tolist()
        # The model reads every generated token but the last; after an end-of-sequence only padding.
        fed = []
        for t in generated[:-1]:
            fed.append(t)
            if t in eos:
                break
        assert got.token_ids.tolist() == prompt + fed, rid
        n_prompt = len(prompt)
        assert got.roles[:n_prompt].tolist() == [ROLE_PROMPT] * n_prompt
        assert got.roles[n_prompt:].tolist() == [ROLE_RESPONSE] * len(fed)
        assert got.positions.tolist() == list(range(n_prompt + len(fed)))
        # Compare with this request alone (no padding, no batch neighbours, one teacher-forced forward).
        ids_alone = got.token_ids.long()[None]
        alone = _collect(model, LAYER, lambda ids=ids_alone: model(input_ids=ids), [rid],
                         dtype=torch.float32).tokens_by_request()[rid]
        torch.testing.assert_close(got.activations.float(), alone.activations, rtol=2e-3, atol=5e-2)
    # Neighbouring requests' rows are far apart, so a swap could not pass the comparison above.
    a, b = by_request["req-long"].activations[1:3].float(), by_request["req-mid"].activations[1:3].float()
    assert (a - b).abs().max() > 1.0


def _final_flags_arrive_last(sink: CollectingSink, ids: list[str]) -> None:
    *body, last = sink.batches
    assert last.final == [True] * len(ids) and last.request_ids == ids and last.n_tokens == 0
    assert not any(any(b.final) for b in body)
    # The final (empty) chunk is a valid wire batch too.
    ActivationBatch.from_bytes(last.to_bytes())


def test_final_flag_arrives_at_the_end_of_track(lm):
    enc = lm.tokenizer(["one two three"], return_tensors="pt")
    sink = _collect(lm.model, LAYER, lambda: lm.model.generate(**enc, max_new_tokens=3, do_sample=False), ["x"])
    assert len(sink.batches) == 1 + 3  # prefill, two decode steps that feed tokens, final chunk
    _final_flags_arrive_last(sink, ["x"])
    assert [b.n_tokens for b in sink.batches] == [enc.input_ids.shape[1], 1, 1, 0]


def test_prefill_roles_are_passed_through(lm):
    enc = lm.tokenizer(["system says hello user asks"], return_tensors="pt")
    t = enc.input_ids.shape[1]
    roles = torch.tensor([[ROLE_PROMPT] * (t - 2) + [ROLE_RESPONSE] * 2], dtype=torch.uint8)
    sink = _collect(lm.model, LAYER, lambda: lm.model(**enc), ["r"], roles=roles)
    assert sink.tokens_by_request()["r"].roles.tolist() == roles[0].tolist()


def test_full_queue_drops_and_counts_without_blocking_the_forward(lm):
    model = lm.model
    enc = lm.tokenizer(["a short prompt here"], return_tensors="pt")
    n_tok = enc.input_ids.shape[1]
    entered, release = threading.Event(), threading.Event()
    delivered: list[ActivationBatch] = []

    def blocking_sink(batch):
        entered.set()
        release.wait(60)
        delivered.append(batch)

    watchdog = threading.Timer(60, release.set)  # never hang the suite if the hook did block
    watchdog.start()
    tap = ActivationTap(model, layer=LAYER, sink=blocking_sink, max_queue=1)
    try:
        with tap.track(["r"]):
            model(**enc)  # chunk 1: taken by the worker, which then blocks in the sink
            assert entered.wait(30)
            t0 = time.perf_counter()
            for _ in range(4):  # chunk 2 fills the queue; chunks 3-5 are dropped
                model(**enc)
            elapsed = time.perf_counter() - t0
        # The sink was still blocked the whole time: the forwards did not wait for it.
        assert not release.is_set()
        assert elapsed < 30
        s = tap.stats
        assert s.chunks_queued == 2 + 1  # two forwards and the end-of-request marker, which is never dropped
        assert s.chunks_dropped == 3
        release.set()
        assert tap.flush(timeout=30)
        # Token counts are kept by the delivery thread (the hook never reads the device): after the flush.
        assert s.tokens_dropped == 3 * n_tok
        assert s.tokens_seen == 5 * n_tok
        assert len(delivered) == 3 and all(b.n_tokens == n_tok for b in delivered[:2])
        assert delivered[-1].final == [True] and delivered[-1].n_tokens == 0
    finally:
        release.set()
        watchdog.cancel()
        tap.close()


def test_close_leaves_no_hooks_and_is_idempotent(lm):
    model = lm.model
    assert _no_tap_hooks(model)
    before = _hooks(model)
    sink = CollectingSink()
    tap = ActivationTap(model, layer=LAYER, sink=sink)
    during = _hooks(model)
    assert len(during["model"][1]) == 1  # the input-capturing pre-hook on the base model
    assert len(during[f"model.layers.{LAYER}"][0]) == len(before.get(f"model.layers.{LAYER}", ((), ()))[0]) + 1
    tap.close()
    assert _hooks(model) == before
    assert not model.model._forward_pre_hooks
    assert _no_tap_hooks(model)
    assert not tap._worker.is_alive()
    tap.close()
    model(**lm.tokenizer(["after close"], return_tensors="pt"))
    assert sink.batches == [] and tap.stats.untracked_calls == 0
    # The context manager closes too, also when the body raises.
    with pytest.raises(KeyError), ActivationTap(model, layer=LAYER, sink=sink):
        raise KeyError("boom")
    assert _no_tap_hooks(model)


def test_untracked_forwards_are_counted_and_ignored(lm):
    model = lm.model
    enc = lm.tokenizer(["nobody is tracking this"], return_tensors="pt")
    sink = CollectingSink()
    with ActivationTap(model, layer=LAYER, sink=sink) as tap:
        model(**enc)
        model(**enc)
        assert tap.flush(timeout=30)
        assert tap.stats.untracked_calls == 2
        assert tap.stats.tokens_seen == 0 and tap.stats.chunks_queued == 0
        assert sink.batches == []
        with tap.track(["t"]):
            model(**enc)
        assert tap.flush(timeout=30)
        assert tap.stats.untracked_calls == 2
        assert [b.n_tokens for b in sink.batches] == [enc.input_ids.shape[1], 0]


def test_track_arguments_and_module_path(lm):
    model = lm.model
    sink = CollectingSink()
    with ActivationTap(model, layer=3, sink=sink, module_path="model.layers.{layer}") as tap:
        with tap.track(batch_size=2) as ids:
            assert len(ids) == 2 and len(set(ids)) == 2
            with pytest.raises(RuntimeError, match="do not nest"), tap.track(["x"]):
                pass
        with pytest.raises(ValueError, match="request_ids or batch_size"), tap.track():
            pass
    with pytest.raises(ValueError, match=r"module path 'model.layers.99' does not exist .*failed at '99'"):
        resolve_module(model, "model.layers.99")
    with pytest.raises(ValueError, match="failed at 'transformer'"):
        ActivationTap(model, layer=1, sink=sink, module_path="transformer.h.{layer}")
    with pytest.raises(ValueError, match="not a module"):
        resolve_module(model, "config.hidden_size")
    assert _no_tap_hooks(model)


# ------------------------------------------------------------------------------------ encoding at the tap
def _random_sae(d_in: int, d_sae: int = 256, seed: int = 0):
    from monitor.sae import FrozenSAE, SAEConfig

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    weights = {"W_enc": w, "b_enc": torch.randn(d_sae, generator=g) * 0.1, "W_dec": w.T.contiguous(),
               "b_dec": torch.randn(d_in, generator=g), "threshold": torch.rand(d_sae, generator=g) * 0.5}
    return FrozenSAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu", apply_b_dec_to_input=True), weights)


def test_latent_tap_ships_the_latents_of_the_raw_tap(lm):
    """Encoding at the tap gives what the sidecar computes from the activation batch, to float32 rounding.

    The tap encodes each chunk (a prefill, then one token per request) and the sidecar the whole request:
    a BLAS kernel may round a row differently by the number of rows in the product (MKL on an AMD EPYC),
    so the last bits are not portable."""
    tok, model = lm.tokenizer, lm.model
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    sae = _random_sae(model.config.hidden_size)
    latents = [200, 3, 77, 150, 9]
    ids = ["a", "b", "c"]

    def gen():
        model.generate(**enc, max_new_tokens=5, do_sample=False)

    raw = _collect(model, LAYER, gen, ids, attention_mask=enc.attention_mask).tokens_by_request()
    sink = CollectingSink()
    with ActivationTap(model, layer=LAYER, sink=sink, model_id="smollm2-135m-instruct", encoder=sae,
                       latents=latents) as tap:
        with tap.track(ids, attention_mask=enc.attention_mask):
            gen()
        assert tap.flush(timeout=30)
        assert tap.stats.latent_tokens == sum(r.n_tokens for r in raw.values()) and tap.stats.raw_tokens == 0
    assert all(b.is_latents and b.sae_sha256 == sae.sha256 for b in sink.batches)
    got = sink.tokens_by_request()
    for rid in ids:
        r, z = raw[rid], got[rid]
        assert z.latent_ids.tolist() == latents and z.activations.dtype == torch.float32
        for name in ("token_ids", "positions", "roles"):
            assert torch.equal(getattr(r, name), getattr(z, name)), (rid, name)
        want = sae.encode_latents(r.activations, latents)
        assert torch.allclose(z.activations, want, rtol=1e-5, atol=1e-5), (rid, (z.activations - want).abs().max())
        assert (z.activations > 0).any()
    for b in sink.batches:
        ActivationBatch.from_bytes(b.to_bytes())  # valid wire batches
    # The end-of-request marker is a latent batch too.
    assert sink.batches[-1].final == [True] * 3 and sink.batches[-1].is_latents


def test_raw_share_ships_a_fixed_share_of_requests_as_activations(lm):
    from monitor.lm.tap import raw_share_pick

    enc = lm.tokenizer(["a few words here"] * 8, return_tensors="pt")
    ids = [f"req-{i}" for i in range(8)]
    raw_ids = {r for r in ids if raw_share_pick(r, 0.5)}
    assert 0 < len(raw_ids) < 8 and raw_ids == {r for r in ids if raw_share_pick(r, 0.5)}  # deterministic
    sae = _random_sae(lm.model.config.hidden_size)
    sink = CollectingSink()
    with ActivationTap(lm.model, layer=LAYER, sink=sink, encoder=sae, latents=[1, 2], raw_share=0.5) as tap:
        with tap.track(ids, attention_mask=enc.attention_mask):
            lm.model(**enc)
        assert tap.flush(timeout=30)
    kinds = {}
    for b in sink.batches:
        for rid in b.request_ids:
            kinds.setdefault(rid, set()).add(b.kind)
    assert {r for r, k in kinds.items() if k == {"activations"}} == raw_ids
    assert {r for r, k in kinds.items() if k == {"latents"}} == set(ids) - raw_ids
    raw_batch = next(b for b in sink.batches if not b.is_latents and b.n_tokens)
    assert raw_batch.d_in == lm.model.config.hidden_size and raw_batch.sae_sha256 == sae.sha256
    with pytest.raises(ValueError, match="together"):
        ActivationTap(lm.model, layer=LAYER, sink=sink, encoder=sae)
    assert _no_tap_hooks(lm.model)


class _RecordingCopier:
    """Stands in for the CUDA side-stream copier: records what the hook hands over, returns host zeros and an
    event that the delivery thread must wait on."""

    stream = "side"

    def __init__(self):
        self.handed: list[list] = []
        self.events: list[threading.Event] = []

    def copy(self, tensors):
        self.handed.append(tensors)
        waited = threading.Event()
        self.events.append(waited)

        class Event:
            def synchronize(self):
                waited.set()

        return [None if t is None else torch.zeros(t.shape, dtype=t.dtype) for t in tensors], Event()


@pytest.mark.parametrize("encode", [False, True])
def test_the_hook_never_reads_device_memory(encode):
    """The hook runs on meta tensors (no data at all: reading any value, a boolean mask index, .item(), .tolist()
    or a copy to the host raises), so it cannot synchronise with a device; the delivery thread waits on each
    chunk's event before it reads the rows."""
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList([torch.nn.Identity()])

    d, latents = 8, [5, 1, 6]
    sae = _random_sae(d, 16)
    if encode:
        from monitor.sae import FrozenSAE

        sae = FrozenSAE(sae.cfg, {n: t for n, t in sae.weights.items()}, device="meta", dtype=torch.float32)
        sae.sha256 = "c" * 64
    sink = CollectingSink()
    copier = _RecordingCopier()
    tap = ActivationTap(Tiny(), layer=0, sink=sink, model_id="tiny", **({"encoder": sae, "latents": latents}
                                                                          if encode else {}))
    tap.device, tap._copier = torch.device("meta"), copier
    try:
        mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
        with tap.track(["x", "y"], attention_mask=mask):
            tap._step_inputs = (torch.empty(2, 4, dtype=torch.int64, device="meta"), None)
            tap._on_layer_output(None, (), (torch.empty(2, 4, d, device="meta"),))  # prefill
            for _ in range(3):  # decode steps
                tap._step_inputs = (torch.empty(2, 1, dtype=torch.int64, device="meta"), None)
                tap._on_layer_output(None, (), torch.empty(2, 1, d, device="meta"))
        assert tap.flush(timeout=30)
    finally:
        tap.close()
    assert len(copier.handed) == 4 and all(e.is_set() for e in copier.events)
    ids_handed, _, rows = copier.handed[0]
    assert ids_handed.device.type == "meta" and rows.device.type == "meta"
    # The prefill's padding was dropped on the device (7 of 8 rows handed over), decode rows all handed.
    assert rows.shape == ((7, len(latents)) if encode else (7, d))
    assert [b.n_tokens for b in sink.batches] == [7, 2, 2, 2, 0]
    assert [b.positions.tolist() for b in sink.batches[:2]] == [[0, 1, 2, 0, 1, 2, 3], [3, 4]]
    assert all(b.is_latents == encode for b in sink.batches)


def test_dropped_calls_keep_later_positions_right():
    """A call dropped for a full queue still advances its requests' positions (its bookkeeping is queued)."""
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList([torch.nn.Identity()])

    entered, release = threading.Event(), threading.Event()
    delivered: list[ActivationBatch] = []

    def blocking_sink(batch):
        if not delivered:
            entered.set()
            release.wait(30)
        delivered.append(batch)

    tap = ActivationTap(Tiny(), layer=0, sink=blocking_sink, max_queue=1)
    tap.device, tap._copier = torch.device("meta"), _RecordingCopier()
    try:
        with tap.track(["x"], attention_mask=torch.ones(1, 4, dtype=torch.long)):
            tap._step_inputs = (torch.empty(1, 4, dtype=torch.int64, device="meta"), None)
            tap._on_layer_output(None, (), (torch.empty(1, 4, 8, device="meta"),))  # prefill: delivered, sink blocks
            assert entered.wait(30)
            for _ in range(3):  # the first is queued, the next two are dropped
                tap._step_inputs = (torch.empty(1, 1, dtype=torch.int64, device="meta"), None)
                tap._on_layer_output(None, (), torch.empty(1, 1, 8, device="meta"))
            assert tap.stats.chunks_dropped == 2
            release.set()
            assert tap.flush(30)
            tap._on_layer_output(None, (), torch.empty(1, 1, 8, device="meta"))  # after the drops
        assert tap.flush(30)
    finally:
        release.set()
        tap.close()
    assert [b.positions.tolist() for b in delivered] == [[0, 1, 2, 3], [4], [7], []]
    assert tap.stats.tokens_dropped == 2 and tap.stats.tokens_seen == 8
