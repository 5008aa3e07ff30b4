"""The tap on a CUDA device (skipped without one; ``bench/gpu_all.sh`` runs it on a GPU machine): no
synchronisation in the hook, the same bookkeeping as on the CPU, latents equal to the sidecar's encode."""

from __future__ import annotations

import pytest
import torch

from monitor.lm.tap import ActivationTap, CollectingSink
from monitor.sae import FrozenSAE, SAEConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LATENTS = (3, 17, 40, 99)


def tiny_llama(device, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, eos_token_id=2,
                      bos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    return model.to(device)


def sae_slice(device, dtype=torch.float32) -> FrozenSAE:
    g = torch.Generator().manual_seed(1)
    w = {"W_enc": torch.randn(64, len(LATENTS), generator=g) / 8, "b_enc": torch.zeros(len(LATENTS)),
         "b_dec": torch.zeros(64), "threshold": torch.full((len(LATENTS),), 0.05)}
    return FrozenSAE(SAEConfig(d_in=64, d_sae=128, architecture="jumprelu"), w, device=device, dtype=dtype,
                     loaded_latents=LATENTS, sha256="e" * 64)


def run(model, **tap_kw):
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = (ids != 0).long()
    sink = CollectingSink()
    dev = next(model.parameters()).device
    with ActivationTap(model, layer=1, sink=sink, **tap_kw) as tap:
        with tap.track(["a", "b"], attention_mask=mask):
            model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=4, min_new_tokens=4,
                           do_sample=False, pad_token_id=0)
        assert tap.flush(30) and tap.stats.delivery_errors == 0 and tap.stats.chunks_dropped == 0
    return sink.tokens_by_request()


def test_cuda_tap_bookkeeping_equals_the_cpu_tap():
    cpu, gpu = run(tiny_llama("cpu")), run(tiny_llama("cuda"))
    for rid in ("a", "b"):
        for name in ("token_ids", "positions", "roles"):
            assert torch.equal(getattr(cpu[rid], name), getattr(gpu[rid], name)), (rid, name)
        torch.testing.assert_close(gpu[rid].activations.float(), cpu[rid].activations.float(), rtol=2e-3, atol=2e-3)


def test_cuda_latent_tap_equals_encoding_its_raw_rows_on_the_device():
    model = tiny_llama("cuda")
    enc = sae_slice("cuda")
    raw, lat = run(model), run(model, encoder=enc, latents=LATENTS)
    for rid in ("a", "b"):
        want = enc.encode_latents(raw[rid].activations.cuda(), LATENTS).cpu()
        assert lat[rid].latent_ids.tolist() == list(LATENTS)
        torch.testing.assert_close(lat[rid].activations, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("encode", [False, True])
def test_the_hook_never_synchronises_with_the_device(encode):
    model = tiny_llama("cuda", torch.bfloat16)
    kw = {"encoder": sae_slice("cuda", torch.bfloat16), "latents": LATENTS} if encode else {}
    sink = CollectingSink()
    tap = ActivationTap(model, layer=1, sink=sink, **kw)
    try:
        hidden = torch.randn(2, 5, 64, device="cuda", dtype=torch.bfloat16)
        step = torch.randn(2, 1, 64, device="cuda", dtype=torch.bfloat16)
        with tap.track(["a", "b"], attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])):
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")  # any synchronising call in the hook raises
            try:
                tap._step_inputs = (torch.ones(2, 5, dtype=torch.long, device="cuda"), None)
                tap._on_layer_output(None, (), (hidden,))
                for _ in range(3):
                    tap._step_inputs = (torch.ones(2, 1, dtype=torch.long, device="cuda"), None)
                    tap._on_layer_output(None, (), (step,))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert tap.flush(30)
    finally:
        tap.close()
    assert [b.n_tokens for b in sink.batches] == [9, 2, 2, 2, 0]
    assert tap.stats.delivery_errors == 0
