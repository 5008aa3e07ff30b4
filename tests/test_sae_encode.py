"""FrozenSAE encodings against direct reference computations of the published formulas.

Each reference reads the tensors exactly as the source format stores them (its names, its
orientation) and follows that project's own forward pass, so it checks the reader's renaming,
transposition and ``b_dec`` rule as well as the encoding itself.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.sae import FrozenSAE, SAEConfig

ATOL = 1e-5


# ------------------------------------------------------------------------------------ references
def topk_mask(post: torch.Tensor, k: int) -> torch.Tensor:
    vals, idx = post.topk(k, dim=-1)
    return torch.zeros_like(post).scatter(-1, idx, vals)


def ref_saelens(n: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """SAELens: sae_in = x - b_dec * apply_b_dec_to_input; then per architecture on sae_in @ W_enc."""
    arch = cfg["architecture"]
    if cfg.get("activation_fn_str") == "topk":
        arch = "topk"
    sae_in = x - n["b_dec"] * float(cfg["apply_b_dec_to_input"])
    if arch == "gated":
        gate = (sae_in @ n["W_enc"] + n["b_gate"]) > 0
        mag = torch.relu(sae_in @ (n["W_enc"] * n["r_mag"].exp()) + n["b_mag"])
        return gate * mag
    hidden_pre = sae_in @ n["W_enc"] + n["b_enc"]
    if arch == "standard":
        return torch.relu(hidden_pre)
    if arch == "jumprelu":
        thr = n["threshold"] if "threshold" in n else n["log_threshold"].exp()
        return torch.relu(hidden_pre) * (hidden_pre > thr)
    if arch == "topk":
        k = cfg.get("k") or cfg["activation_fn_kwargs"]["k"]
        return topk_mask(torch.relu(hidden_pre), k)
    if arch == "batchtopk":  # inference: a global threshold on the post-ReLU values
        post = torch.relu(hidden_pre)
        return post * (post > n["threshold"])
    raise AssertionError(arch)


def ref_sparsify(n: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """sparsify: relu(F.linear(x - b_dec, encoder.weight, encoder.bias)), keep the top k."""
    pre = F.linear(x - n["b_dec"], n["encoder.weight"], n["encoder.bias"])
    return topk_mask(torch.relu(pre), cfg["k"])


def ref_gemmascope(n: dict, x: torch.Tensor) -> torch.Tensor:
    """Gemma Scope JumpReLU: pre = x @ W_enc + b_enc (no b_dec); mask(pre > threshold) * relu(pre)."""
    pre = x @ n["W_enc"] + n["b_enc"]
    return (pre > n["threshold"]) * torch.relu(pre)


def ref_dictionary_learning(n: dict, cls: str, x: torch.Tensor) -> torch.Tensor:
    """dictionary_learning forward passes, class by class."""
    if cls == "AutoEncoder":
        return torch.relu(F.linear(x - n["bias"], n["encoder.weight"], n["encoder.bias"]))
    if cls == "GatedAutoEncoder":
        x_enc = F.linear(x - n["decoder_bias"], n["encoder.weight"])
        f_gate = (x_enc + n["gate_bias"] > 0).float()
        f_mag = torch.relu(n["r_mag"].exp() * x_enc + n["mag_bias"])
        return f_gate * f_mag
    if cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        post = torch.relu(F.linear(x - n["b_dec"], n["encoder.weight"], n["encoder.bias"]))
        if cls == "BatchTopKSAE":  # encode(use_threshold=True), the inference path
            return post * (post > n["threshold"])
        return topk_mask(post, int(n["k"]))
    if cls == "JumpReluAutoEncoder":  # apply_b_dec_to_input is False by default
        pre = x @ n["W_enc"] + n["b_enc"]
        return torch.relu(pre * (pre > n["threshold"]))
    raise AssertionError(cls)


# (id, architecture, writer in the kit, its arguments) — every format and class the readers support.
CASES = [
    ("saelens-relu-bdec", "relu", "write_saelens", {"arch": "relu", "apply_b_dec": True}),
    ("saelens-relu-nobdec", "relu", "write_saelens", {"arch": "relu", "apply_b_dec": False}),
    ("saelens-jumprelu", "jumprelu", "write_saelens", {"arch": "jumprelu", "apply_b_dec": False}),
    ("saelens-jumprelu-bdec", "jumprelu", "write_saelens", {"arch": "jumprelu", "apply_b_dec": True}),
    ("saelens-jumprelu-logthr", "jumprelu", "write_saelens",
     {"arch": "jumprelu", "apply_b_dec": False, "log_threshold": True}),
    ("saelens-topk", "topk", "write_saelens", {"arch": "topk", "apply_b_dec": True}),
    ("saelens-batchtopk", "batchtopk", "write_saelens", {"arch": "batchtopk", "apply_b_dec": True}),
    ("saelens-gated", "gated", "write_saelens", {"arch": "gated", "apply_b_dec": True}),
    ("saelens-gated-nobdec", "gated", "write_saelens", {"arch": "gated", "apply_b_dec": False}),
    ("saelens_flat-relu", "relu", "write_saelens_flat", {"arch": "relu", "apply_b_dec": True}),
    ("saelens_flat-topk", "topk", "write_saelens_flat", {"arch": "topk", "apply_b_dec": False}),
    ("saelens_flat-jumprelu", "jumprelu", "write_saelens_flat", {"arch": "jumprelu", "apply_b_dec": False}),
    ("sparsify", "topk", "write_sparsify", {}),
    ("gemmascope", "jumprelu", "write_gemmascope", {}),
    ("dl-AutoEncoder", "relu", "write_dictionary_learning", {"dict_class": "AutoEncoder"}),
    ("dl-GatedAutoEncoder", "gated", "write_dictionary_learning", {"dict_class": "GatedAutoEncoder"}),
    ("dl-AutoEncoderTopK", "topk", "write_dictionary_learning", {"dict_class": "AutoEncoderTopK"}),
    ("dl-BatchTopKSAE", "batchtopk", "write_dictionary_learning", {"dict_class": "BatchTopKSAE"}),
    ("dl-JumpReluAutoEncoder", "jumprelu", "write_dictionary_learning", {"dict_class": "JumpReluAutoEncoder"}),
]


def reference(written, x: torch.Tensor) -> torch.Tensor:
    if written.fmt in ("saelens", "saelens_flat"):
        return ref_saelens(written.native, written.cfg, x)
    if written.fmt == "sparsify":
        return ref_sparsify(written.native, written.cfg, x)
    if written.fmt == "gemmascope":
        return ref_gemmascope(written.native, x)
    return ref_dictionary_learning(written.native, written.dict_class, x)


@pytest.mark.parametrize("case_id,arch,writer,kwargs", CASES, ids=[c[0] for c in CASES])
def test_encode_matches_reference(kit, tmp_path, case_id, arch, writer, kwargs):
    w = kit.random_weights(arch, seed=3)
    written = getattr(kit, writer)(tmp_path / case_id, w=w, **kwargs)
    sae = FrozenSAE.load(written.path)
    assert sae.cfg.architecture == arch
    x = kit.random_inputs(64)
    want = reference(written, x)
    got = sae.encode(x)
    assert got.shape == (64, kit.D_SAE) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    # The comparison means something only if some, but not all, latents are active.
    active = (want > 0).float().mean().item()
    assert 0.02 < active < 0.9, active
    if arch == "topk":
        assert ((want > 0).sum(-1) <= kit.K).all() and ((want > 0).sum(-1) == kit.K).float().mean() > 0.5


def test_thresholds_and_b_dec_matter(kit, tmp_path):
    """The fixtures are strong enough to tell the rules apart: a JumpReLU threshold changes values that a
    plain ReLU keeps, and subtracting b_dec or not changes the encoding (so the b_dec rule is tested)."""
    w = kit.random_weights("jumprelu", seed=3)
    x = kit.random_inputs(64)
    pre = x @ w["W_enc"] + w["b_enc"]
    assert ((pre > 0) & (pre <= w["threshold"])).any()
    with_bdec = FrozenSAE.load(kit.write_saelens(tmp_path / "a", "jumprelu", w, apply_b_dec=True).path)
    without = FrozenSAE.load(kit.write_saelens(tmp_path / "b", "jumprelu", w, apply_b_dec=False).path)
    with_bdec, without = with_bdec.encode(x), without.encode(x)
    assert (with_bdec - without).abs().max() > 0.1
    gemma = FrozenSAE.load(kit.write_gemmascope(tmp_path / "g", w).path)
    assert not gemma.cfg.apply_b_dec_to_input
    torch.testing.assert_close(gemma.encode(x), without, rtol=0, atol=ATOL)
    sparsify = FrozenSAE.load(kit.write_sparsify(tmp_path / "s", kit.random_weights("topk", seed=3)).path)
    assert sparsify.cfg.apply_b_dec_to_input and sparsify.cfg.k == kit.K


def test_normalisation_constant_norm_rescale(kit, tmp_path):
    """SAELens ``constant_norm_rescale``: rows are scaled to norm sqrt(d_in) before anything else, and
    ``reconstruct`` undoes the scaling."""
    w = kit.random_weights("relu", seed=5)
    written = kit.write_saelens(tmp_path / "n", "relu", w, apply_b_dec=True,
                                normalize="constant_norm_rescale")
    sae = FrozenSAE.load(written.path)
    x = kit.random_inputs(32) * 7.0
    xs = x * math.sqrt(kit.D_IN) / x.norm(dim=-1, keepdim=True)
    want = torch.relu((xs - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    torch.testing.assert_close(sae.encode(x), want, rtol=0, atol=ATOL)
    torch.testing.assert_close(sae.encode(x), sae.encode(x * 3.0), rtol=0, atol=ATOL)  # scale invariant
    recon = (want @ w["W_dec"] + w["b_dec"]) * x.norm(dim=-1, keepdim=True) / math.sqrt(kit.D_IN)
    torch.testing.assert_close(sae.reconstruct(x), recon, rtol=1e-5, atol=1e-4)


def test_normalisation_scale_roundtrips_through_save(kit, tmp_path):
    """``scale`` normalisation multiplies inputs by ``activation_scale``; it survives save/load."""
    w = kit.random_weights("relu", seed=6)
    cfg = SAEConfig(d_in=kit.D_IN, d_sae=kit.D_SAE, architecture="relu", apply_b_dec_to_input=True,
                    normalize_activations="scale", activation_scale=0.25)
    sae = FrozenSAE(cfg, w)
    x = kit.random_inputs(32) * 4
    want = torch.relu((x * 0.25 - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    torch.testing.assert_close(sae.encode(x), want, rtol=0, atol=ATOL)
    again = FrozenSAE.load(sae.save(tmp_path / "s"))
    assert again.cfg.normalize_activations == "scale" and again.cfg.activation_scale == 0.25
    assert again.sha256 == sae.sha256
    torch.testing.assert_close(again.encode(x), want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk", "batchtopk", "gated"])
def test_decode_and_reconstruct(kit, arch):
    w = kit.random_weights(arch, seed=7)
    cfg = SAEConfig(d_in=kit.D_IN, d_sae=kit.D_SAE, architecture=arch, k=kit.K, apply_b_dec_to_input=True)
    sae = FrozenSAE(cfg, w)
    z = torch.relu(torch.randn(10, kit.D_SAE))
    torch.testing.assert_close(sae.decode(z), z @ w["W_dec"] + w["b_dec"], rtol=0, atol=ATOL)
    x = kit.random_inputs(10)
    torch.testing.assert_close(sae.reconstruct(x), sae.decode(sae.encode(x)), rtol=0, atol=ATOL)


# ------------------------------------------------------------------------------------ sliced encoding
SLICE_ARCHS = ["relu", "jumprelu", "batchtopk", "gated", "topk"]


def _sae(kit, arch: str, seed: int = 11) -> FrozenSAE:
    cfg = SAEConfig(d_in=kit.D_IN, d_sae=kit.D_SAE, architecture=arch, k=kit.K, apply_b_dec_to_input=True)
    return FrozenSAE(cfg, kit.random_weights(arch, seed=seed))


@pytest.mark.parametrize("arch", SLICE_ARCHS)
def test_encode_latents_equals_dense_columns(kit, arch):
    sae = _sae(kit, arch)
    assert sae.supports_sliced_encoding == (arch != "topk")
    x = kit.random_inputs(128, seed=12)
    dense = sae.encode(x)
    assert (dense > 0).any()
    for latents in ([0], [5, 3, 63, 3], list(range(kit.D_SAE)), torch.tensor([40, 2, 17])):
        cols = latents.tolist() if isinstance(latents, torch.Tensor) else latents
        got = sae.encode_latents(x, latents)
        assert got.shape == (128, len(cols))
        torch.testing.assert_close(got, dense[:, cols], rtol=0, atol=ATOL)
    # The columns that fire in the dense encoding also fire in the sliced one (the test is not all zeros).
    fired = [int(i) for i in (dense > 0).any(0).nonzero().flatten()[:8]]
    assert (sae.encode_latents(x, fired) > 0).any(0).all()


@pytest.mark.parametrize("arch", SLICE_ARCHS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_encode_latents_any_subset(kit, arch, data):
    sae = _sae(kit, arch, seed=13)
    latents = data.draw(st.lists(st.integers(0, kit.D_SAE - 1), min_size=1, max_size=20), label="latents")
    n = data.draw(st.integers(0, 40), label="n")
    x = torch.randn(n, kit.D_IN, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 2**31))))
    x = x.to(data.draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), label="dtype"))
    torch.testing.assert_close(sae.encode_latents(x, latents), sae.encode(x)[:, latents], rtol=0, atol=ATOL)


def test_encode_latents_rejects_bad_ids_and_shapes(kit):
    sae = _sae(kit, "jumprelu")
    x = kit.random_inputs(4)
    with pytest.raises(ValueError, match=r"latent ids must lie in \[0, 64\)"):
        sae.encode_latents(x, [64])
    with pytest.raises(ValueError, match="latent ids"):
        sae.encode_latents(x, [-1])
    with pytest.raises(ValueError, match=r"expected activations \[n, d_in=16\]"):
        sae.encode(torch.zeros(4, kit.D_IN + 1))
    with pytest.raises(ValueError, match="d_in=16"):
        sae.encode_latents(torch.zeros(kit.D_IN), [1])
