"""What an SAE is, independent of any file format: its config, the canonical tensors it must have, its sha256.

Canonical tensors (SAELens names and orientation)::

    W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_in]   b_dec [d_in]
    threshold [d_sae] (JumpReLU) or [] (BatchTopK's global threshold)
    r_mag [d_sae], b_mag [d_sae] (gated; b_enc is the gate bias)

The format readers (``monitor.sae.formats``) produce these; ``monitor.sae.frozen.FrozenSAE`` encodes with them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch

ARCHITECTURES = ("relu", "jumprelu", "topk", "batchtopk", "gated")
NORMALIZATIONS = ("none", "constant_norm_rescale", "scale")


class SAELoadError(ValueError):
    """An SAE could not be loaded or is inconsistent; the message says what and how to fix it."""


@dataclass(frozen=True)
class SAEConfig:
    """What defines how an SAE encodes, plus descriptive metadata."""

    d_in: int
    """Width of the activations it reads (the model's ``d_model``)."""
    d_sae: int
    """Number of latents."""
    architecture: str
    """One of ``relu``, ``jumprelu``, ``topk``, ``batchtopk``, ``gated``."""
    k: int | None = None
    """Active latents per token for ``topk`` (and the training k of ``batchtopk``)."""
    apply_b_dec_to_input: bool = False
    """Subtract ``b_dec`` from the input before encoding (sparsify and dictionary_learning always do)."""
    normalize_activations: str = "none"
    """``none``; ``constant_norm_rescale`` (rows scaled to norm sqrt(d_in)); ``scale`` (times ``activation_scale``)."""
    activation_scale: float = 1.0
    """Input multiplier for ``normalize_activations == "scale"``; decode divides it back out."""
    model_name: str = ""
    """Model the SAE was trained on."""
    hook_name: str = ""
    """Hook point, SAELens naming (``blocks.15.hook_resid_post``)."""
    source_format: str = "saelens"
    """Format it was loaded from: ``saelens``, ``sparsify``, ``gemmascope``, ``dictionary_learning``."""
    metadata: dict = field(default_factory=dict, compare=False, hash=False)
    """Free-form description: dataset, training tokens, metrics."""

    def encoding_fields(self) -> dict:
        """The fields that change what ``encode`` returns (these enter the sha256)."""
        return {"architecture": self.architecture, "k": self.k, "apply_b_dec_to_input": self.apply_b_dec_to_input,
                "normalize_activations": self.normalize_activations, "activation_scale": self.activation_scale}


_REQUIRED = ("W_enc", "b_enc", "W_dec", "b_dec")
_OPTIONAL_BY_ARCH = {"jumprelu": ("threshold",), "batchtopk": ("threshold",), "gated": ("r_mag", "b_mag")}


def weights_sha256(weights: dict[str, torch.Tensor], cfg: SAEConfig) -> str:
    """sha256 over the canonical tensors (name, dtype, shape, bytes; sorted by name) and the encoding fields."""
    h = hashlib.sha256()
    h.update(json.dumps(cfg.encoding_fields(), sort_keys=True).encode())
    for name in sorted(weights):
        t = weights[name].detach().contiguous().cpu()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        # reshape(-1): a 0-d tensor (BatchTopK's global threshold) cannot be viewed as bytes directly.
        # hashlib reads the numpy buffer in place: no copy of tens of MB that would linger in the heap.
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def check_weights(cfg: SAEConfig, w: dict[str, torch.Tensor]) -> None:
    if cfg.architecture not in ARCHITECTURES:
        raise SAELoadError(f"unknown SAE architecture {cfg.architecture!r}; supported: {', '.join(ARCHITECTURES)}")
    if cfg.normalize_activations not in NORMALIZATIONS:
        raise SAELoadError(
            f"activation normalisation {cfg.normalize_activations!r} is not supported "
            f"(supported: {', '.join(NORMALIZATIONS)}); fold it into the weights first"
        )
    needed = _REQUIRED + _OPTIONAL_BY_ARCH.get(cfg.architecture, ())
    missing = [n for n in needed if n not in w]
    if missing:
        raise SAELoadError(f"{cfg.architecture} SAE is missing tensors {missing}")
    extra = set(w) - set(needed)
    if extra:
        raise SAELoadError(f"{cfg.architecture} SAE has unexpected tensors {sorted(extra)}")
    d_in, d_sae = cfg.d_in, cfg.d_sae
    expect = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
              "r_mag": (d_sae,), "b_mag": (d_sae,),
              "threshold": () if cfg.architecture == "batchtopk" else (d_sae,)}
    for name in needed:
        if tuple(w[name].shape) != expect[name]:
            raise SAELoadError(
                f"tensor {name} has shape {tuple(w[name].shape)}, expected {expect[name]} for d_in={d_in}, d_sae={d_sae}"
            )
        if not w[name].is_floating_point():
            raise SAELoadError(f"tensor {name} must be floating point, got {w[name].dtype}")
    if cfg.architecture == "topk" and not (cfg.k and 0 < cfg.k <= d_sae):
        raise SAELoadError(f"a TopK SAE needs 0 < k <= d_sae, got k={cfg.k}")
