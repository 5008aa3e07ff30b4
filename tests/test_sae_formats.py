"""SAE formats on disk: the same weights load identically from every format, our format round-trips,
and bad files are refused with a clear ``SAELoadError``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import (
    D_IN,
    D_SAE,
    K,
    random_inputs,
    random_weights,
    write_dictionary_learning,
    write_gemmascope,
    write_saelens,
    write_saelens_flat,
    write_sparsify,
)
from safetensors.torch import load_file, save_file

from monitor.sae import FrozenSAE, SAEConfig, SAELoadError, weights_sha256
from monitor.sae_formats import detect_format

# Per architecture: writers of the same canonical weights in every format that can express them,
# with the b_dec rule each format implies made to agree.
SAME_WEIGHTS = {
    "relu": [
        lambda p, w: write_saelens(p, "relu", w, apply_b_dec=True),
        lambda p, w: write_saelens_flat(p, "relu", w, apply_b_dec=True),
        lambda p, w: write_dictionary_learning(p, "AutoEncoder", w),
    ],
    "jumprelu": [
        lambda p, w: write_saelens(p, "jumprelu", w, apply_b_dec=False),
        lambda p, w: write_saelens_flat(p, "jumprelu", w, apply_b_dec=False),
        lambda p, w: write_gemmascope(p, w),
        lambda p, w: write_dictionary_learning(p, "JumpReluAutoEncoder", w),
    ],
    "topk": [
        lambda p, w: write_saelens(p, "topk", w, apply_b_dec=True),
        lambda p, w: write_saelens_flat(p, "topk", w, apply_b_dec=True),
        lambda p, w: write_sparsify(p, w),
        lambda p, w: write_dictionary_learning(p, "AutoEncoderTopK", w),
    ],
    "batchtopk": [
        lambda p, w: write_saelens(p, "batchtopk", w, apply_b_dec=True),
        lambda p, w: write_dictionary_learning(p, "BatchTopKSAE", w),
    ],
    "gated": [
        lambda p, w: write_saelens(p, "gated", w, apply_b_dec=True),
        lambda p, w: write_saelens_flat(p, "gated", w, apply_b_dec=True),
        lambda p, w: write_dictionary_learning(p, "GatedAutoEncoder", w),
    ],
}
EXPECTED_FORMAT = {"saelens": "saelens", "saelens_flat": "saelens", "sparsify": "sparsify",
                   "gemmascope": "gemmascope", "dictionary_learning": "dictionary_learning"}


@pytest.mark.parametrize("arch", list(SAME_WEIGHTS))
def test_same_weights_encode_identically_from_every_format(tmp_path, arch):
    w = random_weights(arch, seed=21)
    x = random_inputs(64, seed=22)
    saes = []
    for i, write in enumerate(SAME_WEIGHTS[arch]):
        written = write(tmp_path / str(i), w)
        sae = FrozenSAE.load(written.path)
        assert sae.cfg.source_format == EXPECTED_FORMAT[written.fmt]
        assert (sae.cfg.architecture, sae.cfg.d_in, sae.cfg.d_sae) == (arch, D_IN, D_SAE)
        saes.append(sae)
    first = saes[0].encode(x)
    assert (first > 0).any()
    for sae in saes[1:]:
        assert torch.equal(sae.encode(x), first), sae.cfg.source_format
        assert torch.equal(sae.decode(first), saes[0].decode(first))
        # Same canonical tensors and encoding rule -> same pin, whatever the file layout was.
        assert sae.sha256 == saes[0].sha256, sae.cfg.source_format


def test_log_threshold_loads_as_threshold(tmp_path):
    w = random_weights("jumprelu", seed=23)
    a = FrozenSAE.load(write_saelens(tmp_path / "a", "jumprelu", w, apply_b_dec=False).path)
    b = FrozenSAE.load(write_saelens(tmp_path / "b", "jumprelu", w, apply_b_dec=False, log_threshold=True).path)
    torch.testing.assert_close(b.weights["threshold"], w["threshold"], rtol=1e-6, atol=0)
    x = random_inputs(32)
    torch.testing.assert_close(a.encode(x), b.encode(x), rtol=0, atol=1e-5)


def test_metadata_is_read(tmp_path):
    w = random_weights("relu")
    sae = FrozenSAE.load(write_saelens(tmp_path / "a", "relu", w, apply_b_dec=True).path)
    assert sae.cfg.model_name == "smollm2-135m-instruct" and sae.cfg.hook_name == "blocks.15.hook_resid_post"
    flat = FrozenSAE.load(write_saelens_flat(tmp_path / "b", "relu", w, apply_b_dec=True).path)
    assert flat.cfg.model_name == "gpt2" and flat.cfg.hook_name == "blocks.8.hook_resid_pre"
    dl = FrozenSAE.load(write_dictionary_learning(tmp_path / "c", "AutoEncoder", w).path)
    assert dl.cfg.hook_name == "resid_post_layer_3"


@pytest.mark.parametrize("path_kind", ["dir", "file"])
def test_detect_format_from_dir_or_file(tmp_path, path_kind):
    w = random_weights("jumprelu")
    written = write_gemmascope(tmp_path / "g", w)
    path = written.path if path_kind == "dir" else written.path / "params.npz"
    assert detect_format(path) == ("gemmascope", written.path)
    assert FrozenSAE.load(path).cfg.source_format == "gemmascope"


# ------------------------------------------------------------------------------ save / load and sha256
@pytest.mark.parametrize("arch,fmt_index", [(a, i) for a, ws in SAME_WEIGHTS.items() for i in range(len(ws))])
def test_save_load_roundtrip_keeps_sha256_and_outputs(tmp_path, arch, fmt_index):
    sae = FrozenSAE.load(SAME_WEIGHTS[arch][fmt_index](tmp_path / "src", random_weights(arch, seed=31)).path)
    out = sae.save(tmp_path / "ours")
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    again = FrozenSAE.load(out)
    assert again.cfg.source_format == "saelens"
    assert again.sha256 == sae.sha256
    assert again.cfg.encoding_fields() == sae.cfg.encoding_fields()
    x = random_inputs(64, seed=32)
    assert torch.equal(again.encode(x), sae.encode(x))
    # Loading with the pin we just read works; the saved tensors are the canonical ones.
    FrozenSAE.load(out, expected_sha256=sae.sha256.upper())
    stored = load_file(str(out / "sae_weights.safetensors"))
    assert stored["W_enc"].shape == (D_IN, D_SAE) and stored["W_dec"].shape == (D_SAE, D_IN)


def test_float16_sae_saves_as_float16_and_keeps_its_sha256(tmp_path):
    """An SAE stored in float16 computes in float32 on CPU; saving it again must not silently change
    its stored dtype (and with it the sha256 that detectors are pinned to)."""
    w = random_weights("jumprelu", seed=33)
    src = write_saelens(tmp_path / "src", "jumprelu", w, apply_b_dec=False, dtype=torch.float16)
    sae = FrozenSAE.load(src.path)
    assert sae.dtype == torch.float32
    assert sae.sha256 == weights_sha256(load_file(str(src.path / "sae_weights.safetensors")), sae.cfg)
    again = FrozenSAE.load(sae.save(tmp_path / "out"))
    assert load_file(str(tmp_path / "out" / "sae_weights.safetensors"))["W_enc"].dtype == torch.float16
    assert again.sha256 == sae.sha256
    x = random_inputs(16)
    assert torch.equal(again.encode(x), sae.encode(x))
    # An explicit dtype converts, and the pin changes with the bytes.
    as32 = FrozenSAE.load(sae.save(tmp_path / "f32", dtype=torch.float32))
    assert as32.sha256 != sae.sha256
    assert torch.equal(as32.encode(x), sae.encode(x))


def test_sha256_changes_with_any_weight_or_encoding_field():
    w = random_weights("topk", seed=34)
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=K, apply_b_dec_to_input=True)
    base = FrozenSAE(cfg, w).sha256
    assert len(base) == 64 and int(base, 16) >= 0
    assert FrozenSAE(cfg, {n: t.clone() for n, t in w.items()}).sha256 == base
    bumped = {n: t.clone() for n, t in w.items()}
    bumped["b_dec"][3] += 1e-3
    assert FrozenSAE(cfg, bumped).sha256 != base
    assert FrozenSAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=K + 1, apply_b_dec_to_input=True),
                     w).sha256 != base
    assert FrozenSAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=K), w).sha256 != base
    # Descriptive metadata is not part of the pin.
    assert FrozenSAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=K, apply_b_dec_to_input=True,
                               model_name="x", metadata={"note": "y"}), w).sha256 == base


# ------------------------------------------------------------------------------ refusals
def test_expected_sha256_mismatch_names_both_hashes(tmp_path):
    written = write_saelens(tmp_path / "a", "relu", random_weights("relu"), apply_b_dec=True)
    actual = FrozenSAE.load(written.path).sha256
    wrong = "ab" * 32
    with pytest.raises(SAELoadError) as err:
        FrozenSAE.load(written.path, expected_sha256=wrong)
    assert actual in str(err.value) and wrong in str(err.value)


def test_d_model_mismatch_refused(tmp_path):
    written = write_saelens(tmp_path / "a", "relu", random_weights("relu"), apply_b_dec=True)
    assert FrozenSAE.load(written.path, d_model=D_IN).cfg.d_in == D_IN
    with pytest.raises(SAELoadError, match=r"d_in=16 but the model has d_model=576"):
        FrozenSAE.load(written.path, d_model=576)


def _rewrite(path, name, fn):
    st = load_file(str(path / name))
    fn(st)
    save_file(st, str(path / name))


@pytest.mark.parametrize("mutation,message", [
    (lambda st: st.__setitem__("W_dec", st["W_dec"][:, :-1].contiguous()), r"W_dec has shape \(64, 15\)"),
    (lambda st: st.__setitem__("b_enc", st["b_enc"][:-1].contiguous()), r"b_enc has shape \(63,\)"),
    (lambda st: st.__setitem__("b_dec", torch.zeros(D_IN + 2)), r"b_dec has shape \(18,\)"),
    (lambda st: st.__setitem__("threshold", torch.zeros(D_SAE, 2)), r"threshold has shape \(64, 2\)"),
    (lambda st: st.pop("threshold"), r"missing tensors \['threshold'\]"),
    (lambda st: st.__setitem__("W_skip", torch.zeros(D_IN, D_IN)), r"unexpected tensors \['W_skip'\]"),
    (lambda st: st.__setitem__("W_enc", st["W_enc"].to(torch.int32)), "must be floating point"),
    (lambda st: st.__setitem__("W_enc", torch.zeros(D_IN)), "no 2-D encoder matrix"),
])
def test_inconsistent_shapes_refused(tmp_path, mutation, message):
    written = write_saelens(tmp_path / "a", "jumprelu", random_weights("jumprelu"), apply_b_dec=False)
    _rewrite(written.path, "sae_weights.safetensors", mutation)
    with pytest.raises(SAELoadError, match=message):
        FrozenSAE.load(written.path)


def test_cfg_disagreeing_with_weights_refused(tmp_path):
    written = write_saelens(tmp_path / "a", "relu", random_weights("relu"), apply_b_dec=True)
    cfg = json.loads((written.path / "cfg.json").read_text())
    cfg["d_sae"] = 128
    (written.path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAELoadError, match=r"W_enc has shape \(16, 64\), expected \(16, 128\)"):
        FrozenSAE.load(written.path)


def test_sparsify_encoder_in_wrong_orientation_refused(tmp_path):
    written = write_sparsify(tmp_path / "s", random_weights("topk"))
    _rewrite(written.path, "sae.safetensors",
             lambda st: st.__setitem__("encoder.weight", st["encoder.weight"].T.contiguous()))
    with pytest.raises(SAELoadError, match="has shape"):
        FrozenSAE.load(written.path)


def test_unsupported_configurations_refused(tmp_path):
    w = random_weights("relu")
    a = write_saelens(tmp_path / "a", "relu", w, apply_b_dec=True)
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
    s = write_sparsify(tmp_path / "s", random_weights("topk"))
    (s.path / "cfg.json").write_text(json.dumps({**s.cfg, "transcode": True}))
    with pytest.raises(SAELoadError, match="transcoders"):
        FrozenSAE.load(s.path)
    d = write_dictionary_learning(tmp_path / "d", "BatchTopKSAE", {**random_weights("relu"),
                                                                   "threshold": torch.tensor(-1.0)})
    with pytest.raises(SAELoadError, match="threshold is negative"):
        FrozenSAE.load(d.path)
    cfg = json.loads((d.path / "config.json").read_text())
    cfg["trainer"]["dict_class"] = "CrossCoder"
    (d.path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SAELoadError, match="'CrossCoder' is not supported"):
        FrozenSAE.load(d.path)


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(SAELoadError, match="does not exist"):
        FrozenSAE.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAELoadError, match="no SAE found .*cfg.json \\+ sae_weights.safetensors"):
        FrozenSAE.load(tmp_path / "empty")
    # A SAELens cfg without its weights is not mistaken for anything else.
    a = write_saelens(tmp_path / "a", "relu", random_weights("relu"), apply_b_dec=True)
    (a.path / "sae_weights.safetensors").unlink()
    with pytest.raises(SAELoadError, match="no SAE found"):
        FrozenSAE.load(a.path)
    # dictionary_learning: ae.pt without config.json.
    d = write_dictionary_learning(tmp_path / "d", "AutoEncoder", random_weights("relu"))
    (d.path / "config.json").unlink()
    with pytest.raises(SAELoadError, match="no SAE found"):
        FrozenSAE.load(d.path)


def test_missing_tensors_inside_files_give_clear_errors(tmp_path):
    g = write_gemmascope(tmp_path / "g", random_weights("jumprelu"))
    np.savez(g.path / "params.npz", **{n: t.numpy() for n, t in g.native.items() if n != "threshold"})
    with pytest.raises(SAELoadError, match="gemmascope SAE .*threshold"):
        FrozenSAE.load(g.path)
    d = write_dictionary_learning(tmp_path / "d", "GatedAutoEncoder", random_weights("gated"))
    torch.save({n: t for n, t in d.native.items() if n != "mag_bias"}, d.path / "ae.pt")
    with pytest.raises(SAELoadError, match="dictionary_learning SAE .*mag_bias"):
        FrozenSAE.load(d.path)
    s = write_sparsify(tmp_path / "s", random_weights("topk"))
    _rewrite(s.path, "sae.safetensors", lambda st: st.pop("encoder.bias"))
    with pytest.raises(SAELoadError, match="sparsify SAE .*encoder.bias"):
        FrozenSAE.load(s.path)


@pytest.mark.parametrize("fmt,filename", [
    ("saelens", "sae_weights.safetensors"), ("saelens", "cfg.json"), ("sparsify", "sae.safetensors"),
    ("gemmascope", "params.npz"), ("dictionary_learning", "ae.pt"), ("dictionary_learning", "config.json"),
])
def test_corrupt_files_give_sae_load_error(tmp_path, fmt, filename):
    writer = {"saelens": lambda p: write_saelens(p, "relu", random_weights("relu"), apply_b_dec=True),
              "sparsify": lambda p: write_sparsify(p, random_weights("topk")),
              "gemmascope": lambda p: write_gemmascope(p, random_weights("jumprelu")),
              "dictionary_learning": lambda p: write_dictionary_learning(p, "AutoEncoder", random_weights("relu"))}
    written = writer[fmt](tmp_path / "x")
    (written.path / filename).write_bytes(b"\x00garbage, not a weights file\xff" * 3)
    with pytest.raises(SAELoadError, match=f"{fmt}|not valid JSON"):
        FrozenSAE.load(written.path)
