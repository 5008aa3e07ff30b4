"""SAE formats on disk: the same weights load identically from every format, our format round-trips,
and bad files are refused with a clear ``SAELoadError``."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from monitor.sae import FrozenSAE, SAEConfig, SAELoadError, weights_sha256
from monitor.sae.formats import detect_format

# Per architecture: writers of the same canonical weights in every format that can express them,
# with the b_dec rule each format implies made to agree.
SAME_WEIGHTS = {
    "relu": [
        lambda kit, p, w: kit.write_saelens(p, "relu", w, apply_b_dec=True),
        lambda kit, p, w: kit.write_saelens_flat(p, "relu", w, apply_b_dec=True),
        lambda kit, p, w: kit.write_dictionary_learning(p, "AutoEncoder", w),
    ],
    "jumprelu": [
        lambda kit, p, w: kit.write_saelens(p, "jumprelu", w, apply_b_dec=False),
        lambda kit, p, w: kit.write_saelens_flat(p, "jumprelu", w, apply_b_dec=False),
        lambda kit, p, w: kit.write_gemmascope(p, w),
        lambda kit, p, w: kit.write_dictionary_learning(p, "JumpReluAutoEncoder", w),
    ],
    "topk": [
        lambda kit, p, w: kit.write_saelens(p, "topk", w, apply_b_dec=True),
        lambda kit, p, w: kit.write_saelens_flat(p, "topk", w, apply_b_dec=True),
        lambda kit, p, w: kit.write_sparsify(p, w),
        lambda kit, p, w: kit.write_dictionary_learning(p, "AutoEncoderTopK", w),
    ],
    "batchtopk": [
        lambda kit, p, w: kit.write_saelens(p, "batchtopk", w, apply_b_dec=True),
        lambda kit, p, w: kit.write_dictionary_learning(p, "BatchTopKSAE", w),
    ],
    "gated": [
        lambda kit, p, w: kit.write_saelens(p, "gated", w, apply_b_dec=True),
        lambda kit, p, w: kit.write_saelens_flat(p, "gated", w, apply_b_dec=True),
        lambda kit, p, w: kit.write_dictionary_learning(p, "GatedAutoEncoder", w),
    ],
}
EXPECTED_FORMAT = {"saelens": "saelens", "saelens_flat": "saelens", "sparsify": "sparsify",
                   "gemmascope": "gemmascope", "dictionary_learning": "dictionary_learning"}


@pytest.mark.parametrize("arch", list(SAME_WEIGHTS))
def test_same_weights_encode_identically_from_every_format(kit, tmp_path, arch):
    w = kit.random_weights(arch, seed=21)
    x = kit.random_inputs(64, seed=22)
    saes = []
    for i, write in enumerate(SAME_WEIGHTS[arch]):
        written = write(kit, tmp_path / str(i), w)
        sae = FrozenSAE.load(written.path)
        assert sae.cfg.source_format == EXPECTED_FORMAT[written.fmt]
        assert (sae.cfg.architecture, sae.cfg.d_in, sae.cfg.d_sae) == (arch, kit.D_IN, kit.D_SAE)
        saes.append(sae)
    first = saes[0].encode(x)
    assert (first > 0).any()
    for sae in saes[1:]:
        assert torch.equal(sae.encode(x), first), sae.cfg.source_format
        assert torch.equal(sae.decode(first), saes[0].decode(first))
        # Same canonical tensors and encoding rule -> same pin, whatever the file layout was.
        assert sae.sha256 == saes[0].sha256, sae.cfg.source_format


def test_log_threshold_loads_as_threshold(kit, tmp_path):
    w = kit.random_weights("jumprelu", seed=23)
    a = FrozenSAE.load(kit.write_saelens(tmp_path / "a", "jumprelu", w, apply_b_dec=False).path)
    b = FrozenSAE.load(kit.write_saelens(tmp_path / "b", "jumprelu", w, apply_b_dec=False,
                                         log_threshold=True).path)
    torch.testing.assert_close(b.weights["threshold"], w["threshold"], rtol=1e-6, atol=0)
    x = kit.random_inputs(32)
    torch.testing.assert_close(a.encode(x), b.encode(x), rtol=0, atol=1e-5)


def test_metadata_is_read(kit, tmp_path):
    w = kit.random_weights("relu")
    sae = FrozenSAE.load(kit.write_saelens(tmp_path / "a", "relu", w, apply_b_dec=True).path)
    assert sae.cfg.model_name == "smollm2-135m-instruct" and sae.cfg.hook_name == "blocks.15.hook_resid_post"
    flat = FrozenSAE.load(kit.write_saelens_flat(tmp_path / "b", "relu", w, apply_b_dec=True).path)
    assert flat.cfg.model_name == "gpt2" and flat.cfg.hook_name == "blocks.8.hook_resid_pre"
    dl = FrozenSAE.load(kit.write_dictionary_learning(tmp_path / "c", "AutoEncoder", w).path)
    assert dl.cfg.hook_name == "resid_post_layer_3"


@pytest.mark.parametrize("path_kind", ["dir", "file"])
def test_detect_format_from_dir_or_file(kit, tmp_path, path_kind):
    w = kit.random_weights("jumprelu")
    written = kit.write_gemmascope(tmp_path / "g", w)
    path = written.path if path_kind == "dir" else written.path / "params.npz"
    assert detect_format(path) == ("gemmascope", written.path)
    assert FrozenSAE.load(path).cfg.source_format == "gemmascope"


# ------------------------------------------------------------------------------ save / load and sha256
@pytest.mark.parametrize("arch,fmt_index", [(a, i) for a, ws in SAME_WEIGHTS.items() for i in range(len(ws))])
def test_save_load_roundtrip_keeps_sha256_and_outputs(kit, tmp_path, arch, fmt_index):
    written = SAME_WEIGHTS[arch][fmt_index](kit, tmp_path / "src", kit.random_weights(arch, seed=31))
    sae = FrozenSAE.load(written.path)
    out = sae.save(tmp_path / "ours")
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    again = FrozenSAE.load(out)
    assert again.cfg.source_format == "saelens"
    assert again.sha256 == sae.sha256
    assert again.cfg.encoding_fields() == sae.cfg.encoding_fields()
    x = kit.random_inputs(64, seed=32)
    assert torch.equal(again.encode(x), sae.encode(x))
    # Loading with the pin we just read works; the saved tensors are the canonical ones.
    FrozenSAE.load(out, expected_sha256=sae.sha256.upper())
    stored = load_file(str(out / "sae_weights.safetensors"))
    assert stored["W_enc"].shape == (kit.D_IN, kit.D_SAE) and stored["W_dec"].shape == (kit.D_SAE, kit.D_IN)


def test_float16_sae_saves_as_float16_and_keeps_its_sha256(kit, tmp_path):
    """An SAE stored in float16 computes in float32 on CPU; saving it again must not silently change
    its stored dtype (and with it the sha256 that detectors are pinned to)."""
    w = kit.random_weights("jumprelu", seed=33)
    src = kit.write_saelens(tmp_path / "src", "jumprelu", w, apply_b_dec=False, dtype=torch.float16)
    sae = FrozenSAE.load(src.path)
    assert sae.dtype == torch.float32
    assert sae.sha256 == weights_sha256(load_file(str(src.path / "sae_weights.safetensors")), sae.cfg)
    again = FrozenSAE.load(sae.save(tmp_path / "out"))
    assert load_file(str(tmp_path / "out" / "sae_weights.safetensors"))["W_enc"].dtype == torch.float16
    assert again.sha256 == sae.sha256
    x = kit.random_inputs(16)
    assert torch.equal(again.encode(x), sae.encode(x))
    # An explicit dtype converts, and the pin changes with the bytes.
    as32 = FrozenSAE.load(sae.save(tmp_path / "f32", dtype=torch.float32))
    assert as32.sha256 != sae.sha256
    assert torch.equal(as32.encode(x), sae.encode(x))


def test_sha256_changes_with_any_weight_or_encoding_field(kit):
    w = kit.random_weights("topk", seed=34)
    cfg = SAEConfig(d_in=kit.D_IN, d_sae=kit.D_SAE, architecture="topk", k=kit.K, apply_b_dec_to_input=True)
    base = FrozenSAE(cfg, w).sha256
    assert len(base) == 64 and int(base, 16) >= 0
    assert FrozenSAE(cfg, {n: t.clone() for n, t in w.items()}).sha256 == base
    bumped = {n: t.clone() for n, t in w.items()}
    bumped["b_dec"][3] += 1e-3
    assert FrozenSAE(cfg, bumped).sha256 != base
    assert FrozenSAE(replace(cfg, k=kit.K + 1), w).sha256 != base
    assert FrozenSAE(replace(cfg, apply_b_dec_to_input=False), w).sha256 != base
    # Descriptive metadata is not part of the pin.
    assert FrozenSAE(replace(cfg, model_name="x", hook_name="h", metadata={"note": "y"}), w).sha256 == base


# ------------------------------------------------------------------------------ refusals
def test_expected_sha256_mismatch_names_both_hashes(kit, tmp_path):
    written = kit.write_saelens(tmp_path / "a", "relu", kit.random_weights("relu"), apply_b_dec=True)
    actual = FrozenSAE.load(written.path).sha256
    wrong = "ab" * 32
    with pytest.raises(SAELoadError) as err:
        FrozenSAE.load(written.path, expected_sha256=wrong)
    assert actual in str(err.value) and wrong in str(err.value)


def test_d_model_mismatch_refused(kit, tmp_path):
    written = kit.write_saelens(tmp_path / "a", "relu", kit.random_weights("relu"), apply_b_dec=True)
    assert FrozenSAE.load(written.path, d_model=kit.D_IN).cfg.d_in == kit.D_IN
    with pytest.raises(SAELoadError, match=r"d_in=16 but the model has d_model=576"):
        FrozenSAE.load(written.path, d_model=576)


def _rewrite(path, name, fn):
    st = load_file(str(path / name))
    fn(st)
    save_file(st, str(path / name))


@pytest.mark.parametrize("mutation,message", [
    (lambda st: st.__setitem__("W_dec", st["W_dec"][:, :-1].contiguous()), r"W_dec has shape \(64, 15\)"),
    (lambda st: st.__setitem__("b_enc", st["b_enc"][:-1].contiguous()), r"b_enc has shape \(63,\)"),
    (lambda st: st.__setitem__("b_dec", torch.zeros(st["b_dec"].shape[0] + 2)), r"b_dec has shape \(18,\)"),
    (lambda st: st.__setitem__("threshold", torch.zeros(st["b_enc"].shape[0], 2)),
     r"threshold has shape \(64, 2\)"),
    (lambda st: st.pop("threshold"), r"missing tensors \['threshold'\]"),
    (lambda st: st.__setitem__("W_skip", torch.zeros(2, 2)), r"unexpected tensors \['W_skip'\]"),
    (lambda st: st.__setitem__("W_enc", st["W_enc"].to(torch.int32)), "must be floating point"),
    (lambda st: st.__setitem__("W_enc", torch.zeros(st["b_dec"].shape[0])), "no 2-D encoder matrix"),
])
def test_inconsistent_shapes_refused(kit, tmp_path, mutation, message):
    written = kit.write_saelens(tmp_path / "a", "jumprelu", kit.random_weights("jumprelu"), apply_b_dec=False)
    _rewrite(written.path, "sae_weights.safetensors", mutation)
    with pytest.raises(SAELoadError, match=message):
        FrozenSAE.load(written.path)


def test_cfg_disagreeing_with_weights_refused(kit, tmp_path):
    written = kit.write_saelens(tmp_path / "a", "relu", kit.random_weights("relu"), apply_b_dec=True)
    cfg = json.loads((written.path / "cfg.json").read_text())
    cfg["d_sae"] = 128
    (written.path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAELoadError, match=r"W_enc has shape \(16, 64\), expected \(16, 128\)"):
        FrozenSAE.load(written.path)


def test_sparsify_encoder_in_wrong_orientation_refused(kit, tmp_path):
    written = kit.write_sparsify(tmp_path / "s", kit.random_weights("topk"))
    _rewrite(written.path, "sae.safetensors",
             lambda st: st.__setitem__("encoder.weight", st["encoder.weight"].T.contiguous()))
    with pytest.raises(SAELoadError, match="has shape"):
        FrozenSAE.load(written.path)


def test_unsupported_configurations_refused(kit, tmp_path):
    w = kit.random_weights("relu")
    a = kit.write_saelens(tmp_path / "a", "relu", w, apply_b_dec=True)
    cfg = json.loads((a.path / "cfg.json").read_text())
    (a.path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "matryoshka"}))
    with pytest.raises(SAELoadError, match="architecture 'matryoshka' is not supported"):
        FrozenSAE.load(a.path)
    (a.path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(SAELoadError, match="'layer_norm' is not supported"):
        FrozenSAE.load(a.path)
    (a.path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "expected_average_only_in"}))
    with pytest.raises(SAELoadError, match="fold"):
        FrozenSAE.load(a.path)
    (a.path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "topk"}))
    with pytest.raises(SAELoadError, match="needs k"):
        FrozenSAE.load(a.path)
    s = kit.write_sparsify(tmp_path / "s", kit.random_weights("topk"))
    (s.path / "cfg.json").write_text(json.dumps({**s.cfg, "transcode": True}))
    with pytest.raises(SAELoadError, match="transcoders"):
        FrozenSAE.load(s.path)
    d = kit.write_dictionary_learning(tmp_path / "d", "BatchTopKSAE", {**kit.random_weights("relu"),
                                                                   "threshold": torch.tensor(-1.0)})
    with pytest.raises(SAELoadError, match="threshold is negative"):
        FrozenSAE.load(d.path)
    cfg = json.loads((d.path / "config.json").read_text())
    cfg["trainer"]["dict_class"] = "CrossCoder"
    (d.path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SAELoadError, match="'CrossCoder' is not supported"):
        FrozenSAE.load(d.path)


def test_missing_files_give_clear_errors(kit, tmp_path):
    with pytest.raises(SAELoadError, match="does not exist"):
        FrozenSAE.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAELoadError, match="no SAE found .*cfg.json \\+ sae_weights.safetensors"):
        FrozenSAE.load(tmp_path / "empty")
    # A SAELens cfg without its weights is not mistaken for anything else.
    a = kit.write_saelens(tmp_path / "a", "relu", kit.random_weights("relu"), apply_b_dec=True)
    (a.path / "sae_weights.safetensors").unlink()
    with pytest.raises(SAELoadError, match="no SAE found"):
        FrozenSAE.load(a.path)
    # dictionary_learning: ae.pt without config.json.
    d = kit.write_dictionary_learning(tmp_path / "d", "AutoEncoder", kit.random_weights("relu"))
    (d.path / "config.json").unlink()
    with pytest.raises(SAELoadError, match="no SAE found"):
        FrozenSAE.load(d.path)


def test_missing_tensors_inside_files_give_clear_errors(kit, tmp_path):
    g = kit.write_gemmascope(tmp_path / "g", kit.random_weights("jumprelu"))
    np.savez(g.path / "params.npz", **{n: t.numpy() for n, t in g.native.items() if n != "threshold"})
    with pytest.raises(SAELoadError, match="gemmascope SAE .*threshold"):
        FrozenSAE.load(g.path)
    d = kit.write_dictionary_learning(tmp_path / "d", "GatedAutoEncoder", kit.random_weights("gated"))
    torch.save({n: t for n, t in d.native.items() if n != "mag_bias"}, d.path / "ae.pt")
    with pytest.raises(SAELoadError, match="dictionary_learning SAE .*mag_bias"):
        FrozenSAE.load(d.path)
    s = kit.write_sparsify(tmp_path / "s", kit.random_weights("topk"))
    _rewrite(s.path, "sae.safetensors", lambda st: st.pop("encoder.bias"))
    with pytest.raises(SAELoadError, match="sparsify SAE .*encoder.bias"):
        FrozenSAE.load(s.path)


@pytest.mark.parametrize("fmt,filename", [
    ("saelens", "sae_weights.safetensors"), ("saelens", "cfg.json"), ("sparsify", "sae.safetensors"),
    ("gemmascope", "params.npz"), ("dictionary_learning", "ae.pt"), ("dictionary_learning", "config.json"),
])
def test_corrupt_files_give_sae_load_error(kit, tmp_path, fmt, filename):
    relu, topk, jumprelu = (kit.random_weights(a) for a in ("relu", "topk", "jumprelu"))
    writer = {"saelens": lambda p: kit.write_saelens(p, "relu", relu, apply_b_dec=True),
              "sparsify": lambda p: kit.write_sparsify(p, topk),
              "gemmascope": lambda p: kit.write_gemmascope(p, jumprelu),
              "dictionary_learning": lambda p: kit.write_dictionary_learning(p, "AutoEncoder", relu)}
    written = writer[fmt](tmp_path / "x")
    (written.path / filename).write_bytes(b"\x00garbage, not a weights file\xff" * 3)
    with pytest.raises(SAELoadError, match=f"{fmt}|not valid JSON"):
        FrozenSAE.load(written.path)


# ------------------------------------------------------------------------------------ sliced loading
@pytest.mark.parametrize("arch", list(SAME_WEIGHTS))
def test_sliced_load_equals_the_full_sae_from_every_format(kit, tmp_path, arch):
    w = kit.random_weights(arch, seed=31)
    x = kit.random_inputs(40, seed=32)
    latents = [kit.D_SAE - 1, 0, 7, 3, 7]
    for i, write in enumerate(SAME_WEIGHTS[arch]):
        written = write(kit, tmp_path / str(i), w)
        full = FrozenSAE.load(written.path)
        part = FrozenSAE.load(written.path, latents=latents, expected_sha256=full.sha256)
        assert part.sha256 == full.sha256, written.fmt  # the pin covers the whole SAE, not the slice
        for ask in ([3, 7], [kit.D_SAE - 1, 0, 3], latents):
            assert torch.equal(part.encode_latents(x, ask), full.encode_latents(x, ask)), (written.fmt, ask)
        if arch == "topk":  # needs every column to pick the k largest: loaded whole
            assert part.loaded_latents is None
            continue
        assert part.loaded_latents == (0, 3, 7, kit.D_SAE - 1)
        assert part.weights["W_enc"].shape == (kit.D_IN, 4) and "W_dec" not in part.weights
        with pytest.raises(ValueError, match=r"latents \[5\] were not loaded"):
            part.encode_latents(x, [3, 5])
        for call in (lambda p=part: p.encode(x), lambda p=part: p.decode(torch.zeros(1, kit.D_SAE)),
                     lambda p=part: p.save(tmp_path / "again")):
            with pytest.raises(RuntimeError, match="loaded with only 4 of its"):
                call()


def test_sliced_load_of_a_log_threshold_file_keeps_the_pin(kit, tmp_path):
    w = kit.random_weights("jumprelu", seed=33)
    path = kit.write_saelens(tmp_path / "a", "jumprelu", w, apply_b_dec=False, log_threshold=True).path
    full = FrozenSAE.load(path)
    part = FrozenSAE.load(path, latents=[1, 2])
    assert part.sha256 == full.sha256
    x = kit.random_inputs(16)
    assert torch.equal(part.encode_latents(x, [2, 1]), full.encode_latents(x, [2, 1]))


def test_sliced_load_hashes_what_it_does_not_keep(kit, tmp_path):
    """A changed decoder weight (never loaded by a slice) still changes the pin: the expected hash refuses it."""
    w = kit.random_weights("jumprelu", seed=34)
    path = kit.write_saelens(tmp_path / "a", "jumprelu", w, apply_b_dec=False).path
    pinned = FrozenSAE.load(path).sha256
    weights_file = next(p for p in path.iterdir() if p.suffix == ".safetensors") if path.is_dir() else path
    tensors = load_file(str(weights_file))
    tensors["W_dec"][5, 3] += 1e-3
    save_file(tensors, str(weights_file))
    with pytest.raises(SAELoadError, match=f"but {pinned} was expected"):
        FrozenSAE.load(path, latents=[1, 2], expected_sha256=pinned)
    assert FrozenSAE.load(path, latents=[1, 2]).sha256 == FrozenSAE.load(path).sha256 != pinned
    with pytest.raises(SAELoadError, match="latents must lie in"):
        FrozenSAE.load(path, latents=[kit.D_SAE])
    # A truncated file is refused, not half-read.
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[:-100])
    with pytest.raises(SAELoadError, match="truncated"):
        FrozenSAE.load(path, latents=[1, 2])


def test_sliced_load_streams_the_file(tmp_path):
    """Peak Python-heap use while slicing a 64 MB SAE stays at one read chunk, whatever the dictionary size."""
    import tracemalloc

    from monitor.sae.formats import write_saelens

    d_in, d_sae = 256, 65_536
    g = torch.Generator().manual_seed(0)
    w_enc = (torch.randn(d_in, d_sae, generator=g) * 0.05).half()
    weights = {"W_enc": w_enc, "b_enc": torch.zeros(d_sae, dtype=torch.float16), "W_dec": w_enc.T.contiguous(),
               "b_dec": torch.zeros(d_in, dtype=torch.float16), "threshold": torch.full((d_sae,), 0.1).half()}
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu")
    write_saelens(tmp_path / "big", cfg, weights)
    want = weights_sha256(weights, cfg)
    cols = w_enc[:, [5, 60_000]].float()
    del weights, w_enc
    tracemalloc.start()
    try:
        part = FrozenSAE.load(tmp_path / "big", latents=[60_000, 5])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert part.sha256 == want
    assert torch.equal(part.weights["W_enc"], cols)
    assert peak < 20 << 20, peak  # the file is 64 MB
