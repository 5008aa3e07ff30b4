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
        assert tap.stats.chunks_dropped == 0 and tap.stats.sink_errors == 0
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
        assert s.tokens_dropped == 3 * n_tok
        assert s.tokens_seen == 5 * n_tok
        release.set()
        assert tap.flush(timeout=30)
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
