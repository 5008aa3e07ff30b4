"""Shared fixtures: the default model (loaded once per session) and writers of small random SAEs.

The SAE writers produce each format from its published description (file names, tensor names and
orientation), independently of ``monitor.sae.formats``, so a reader that gets a format wrong fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

# The test machine has two cores and often a background job: one thread keeps runs predictable.
torch.set_num_threads(1)

D_IN = 16
D_SAE = 64
K = 8


@pytest.fixture(scope="session")
def default_model():
    """The embedded SmolLM2-135M-Instruct (float32), loaded once: ``monitor.lm.loading.LoadedModel``."""
    from monitor.lm.loading import load_model

    return load_model()


# --------------------------------------------------------------------------------------------- SAEs
def random_weights(arch: str, *, d_in: int = D_IN, d_sae: int = D_SAE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Canonical (SAELens-orientation) float32 weights whose latents fire on some, not all, inputs
    drawn from ``random_inputs``: ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``,
    plus ``threshold`` (jumprelu ``[d_sae]``, batchtopk ``[]``) or ``r_mag``/``b_mag`` (gated)."""
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.3 - 0.2,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.5,
    }
    if arch == "jumprelu":
        w["threshold"] = torch.rand(d_sae, generator=g) * 0.8 + 0.1
    elif arch == "batchtopk":
        w["threshold"] = torch.tensor(0.45)
    elif arch == "gated":
        w["r_mag"] = torch.randn(d_sae, generator=g) * 0.3
        w["b_mag"] = torch.randn(d_sae, generator=g) * 0.2
    return w


def random_inputs(n: int = 48, *, d_in: int = D_IN, seed: int = 1) -> torch.Tensor:
    """``[n, d_in]`` float32 inputs."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g)


@dataclass
class WrittenSAE:
    """An SAE written to disk in some format, with the tensors exactly as that format stores them."""

    path: Path
    fmt: str
    """``saelens``, ``saelens_flat``, ``sparsify``, ``gemmascope`` or ``dictionary_learning``."""
    native: dict[str, torch.Tensor]
    """Tensors under the format's own names and orientation."""
    cfg: dict = field(default_factory=dict)
    """The JSON config written next to them (empty for Gemma Scope)."""
    dict_class: str = ""
    """dictionary_learning class name."""


_SAELENS_NEW_ARCH = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk", "batchtopk": "batchtopk",
                     "gated": "gated"}


def write_saelens(path: Path, arch: str, w: dict[str, torch.Tensor], *, apply_b_dec: bool, k: int = K,
                  normalize: str = "none", log_threshold: bool = False, dtype=torch.float32) -> WrittenSAE:
    """SAELens >= 6: ``cfg.json`` with nested ``metadata`` + ``sae_weights.safetensors``.
    Gated SAEs store ``b_gate``, ``b_mag``, ``r_mag`` and no ``b_enc``."""
    path.mkdir(parents=True, exist_ok=True)
    native = {n: t.to(dtype) for n, t in w.items()}
    if arch == "gated":
        native["b_gate"] = native.pop("b_enc")
    if log_threshold:
        native["log_threshold"] = native.pop("threshold").log()
    cfg = {
        "architecture": _SAELENS_NEW_ARCH[arch], "d_in": w["W_enc"].shape[0], "d_sae": w["W_enc"].shape[1],
        "dtype": str(dtype).removeprefix("torch."), "device": "cpu", "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": normalize, "reshape_activations": "none",
        "metadata": {"model_name": "smollm2-135m-instruct", "hook_name": "blocks.15.hook_resid_post",
                     "sae_lens_version": "6.5.0", "dataset_path": "test"},
    }
    if arch in ("topk", "batchtopk"):
        cfg["k"] = k
    save_file(native, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg))
    return WrittenSAE(path, "saelens", native, cfg)


def write_saelens_flat(path: Path, arch: str, w: dict[str, torch.Tensor], *, apply_b_dec: bool,
                       k: int = K) -> WrittenSAE:
    """SAELens < 6: flat cfg (``activation_fn_str``, ``activation_fn_kwargs``, ``model_name`` …)."""
    path.mkdir(parents=True, exist_ok=True)
    native = dict(w)
    if arch == "gated":
        native["b_gate"] = native.pop("b_enc")
    cfg = {
        "architecture": "jumprelu" if arch == "jumprelu" else "gated" if arch == "gated" else "standard",
        "d_in": w["W_enc"].shape[0], "d_sae": w["W_enc"].shape[1], "dtype": "float32", "device": "cpu",
        "model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre", "hook_layer": 8, "hook_head_index": None,
        "activation_fn_str": "topk" if arch == "topk" else "relu", "apply_b_dec_to_input": apply_b_dec,
        "finetuning_scaling_factor": False, "sae_lens_training_version": "3.13.0", "prepend_bos": True,
        "dataset_path": "test", "context_size": 128, "normalize_activations": "none",
    }
    if arch == "topk":
        cfg["activation_fn_kwargs"] = {"k": k}
    save_file(native, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg))
    return WrittenSAE(path, "saelens_flat", native, cfg)


def write_sparsify(path: Path, w: dict[str, torch.Tensor], *, k: int = K) -> WrittenSAE:
    """EleutherAI sparsify: ``cfg.json`` + ``sae.safetensors`` with ``encoder.weight [d_sae, d_in]``,
    ``encoder.bias``, ``W_dec [d_sae, d_in]``, ``b_dec``. TopK over relu(encoder(x - b_dec))."""
    path.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = w["W_enc"].shape
    native = {"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"].clone(),
              "W_dec": w["W_dec"].clone(), "b_dec": w["b_dec"].clone()}
    cfg = {"activation": "topk", "expansion_factor": d_sae // d_in, "normalize_decoder": True,
           "num_latents": d_sae, "k": k, "multi_topk": False, "skip_connection": False, "transcode": False,
           "d_in": d_in}
    save_file(native, str(path / "sae.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg))
    return WrittenSAE(path, "sparsify", native, cfg)


def write_gemmascope(path: Path, w: dict[str, torch.Tensor]) -> WrittenSAE:
    """Gemma Scope ``params.npz``: ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``,
    ``threshold`` (JumpReLU; the input is used as is, no ``b_dec`` subtraction)."""
    path.mkdir(parents=True, exist_ok=True)
    native = {n: w[n].clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    np.savez(path / "params.npz", **{n: t.numpy() for n, t in native.items()})
    return WrittenSAE(path, "gemmascope", native)


_DL_TRAINER = {"AutoEncoder": "StandardTrainer", "GatedAutoEncoder": "GatedSAETrainer",
               "AutoEncoderTopK": "TopKTrainer", "BatchTopKSAE": "BatchTopKTrainer",
               "JumpReluAutoEncoder": "JumpReluTrainer"}


def write_dictionary_learning(path: Path, dict_class: str, w: dict[str, torch.Tensor], *,
                              k: int = K) -> WrittenSAE:
    """saprmarks/dictionary_learning: ``ae.pt`` (the module's state dict) + ``config.json``.

    State dict keys, as the classes define them (``nn.Linear`` weights are ``[out, in]``):
    AutoEncoder ``encoder.weight [d_sae,d_in]``, ``encoder.bias``, ``decoder.weight [d_in,d_sae]``, ``bias``;
    GatedAutoEncoder ``decoder_bias``, ``r_mag``, ``gate_bias``, ``mag_bias``, ``encoder.weight``,
    ``decoder.weight`` (no encoder bias); AutoEncoderTopK / BatchTopKSAE ``b_dec``, ``encoder.weight``,
    ``encoder.bias``, ``decoder.weight``, buffers ``k`` and ``threshold``;
    JumpReluAutoEncoder ``W_enc [d_in,d_sae]``, ``b_enc``, ``W_dec [d_sae,d_in]``, ``b_dec``, ``threshold``.
    """
    path.mkdir(parents=True, exist_ok=True)
    enc_w, dec_w = w["W_enc"].T.contiguous(), w["W_dec"].T.contiguous()
    if dict_class == "AutoEncoder":
        native = {"bias": w["b_dec"], "encoder.weight": enc_w, "encoder.bias": w["b_enc"], "decoder.weight": dec_w}
    elif dict_class == "GatedAutoEncoder":
        native = {"decoder_bias": w["b_dec"], "r_mag": w["r_mag"], "gate_bias": w["b_enc"], "mag_bias": w["b_mag"],
                  "encoder.weight": enc_w, "decoder.weight": dec_w}
    elif dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        thr = w["threshold"].reshape(()) if "threshold" in w else torch.tensor(-1.0)
        native = {"b_dec": w["b_dec"], "encoder.weight": enc_w, "encoder.bias": w["b_enc"], "decoder.weight": dec_w,
                  "k": torch.tensor(k, dtype=torch.int64), "threshold": thr}
    elif dict_class == "JumpReluAutoEncoder":
        native = {n: w[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    else:
        raise ValueError(dict_class)
    native = {n: t.clone() for n, t in native.items()}
    torch.save(native, path / "ae.pt")
    d_in, d_sae = w["W_enc"].shape
    trainer = {"dict_class": dict_class, "trainer_class": _DL_TRAINER[dict_class], "activation_dim": d_in,
               "dict_size": d_sae, "lr": 1e-4, "lm_name": "EleutherAI/pythia-70m-deduped", "layer": 3,
               "submodule_name": "resid_post_layer_3", "device": "cpu", "seed": 0}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        trainer["k"] = k
    cfg = {"trainer": trainer, "buffer": {"d_submodule": d_in, "ctx_len": 128, "refresh_batch_size": 32}}
    (path / "config.json").write_text(json.dumps(cfg))
    return WrittenSAE(path, "dictionary_learning", native, cfg, dict_class)


@pytest.fixture(scope="session")
def kit():
    """The SAE helpers above, as a fixture: test modules must not ``import conftest`` (another
    ``conftest`` module, e.g. ``tests/alerts/conftest.py``, may own that name in ``sys.modules``)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        D_IN=D_IN, D_SAE=D_SAE, K=K, random_weights=random_weights, random_inputs=random_inputs,
        write_saelens=write_saelens, write_saelens_flat=write_saelens_flat, write_sparsify=write_sparsify,
        write_gemmascope=write_gemmascope, write_dictionary_learning=write_dictionary_learning,
    )
