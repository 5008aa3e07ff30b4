"""The embedded default the product runs without configuration: which model, which layer is tapped, and
how hook points are named. Torch-free, so settings and the CLI parser can import it cheaply."""

from __future__ import annotations

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
"""Name of the embedded default model (SmolLM2-135M-Instruct, 30 layers, d_model 576)."""
DEFAULT_LAYER = 15
"""Decoder layer whose output (residual stream) is tapped by default: the middle of the 30."""
DEFAULT_MODULE_PATH = "model.layers.{layer}"
"""Attribute path of the tapped module inside a ``*ForCausalLM`` (``{layer}`` is substituted)."""


def hook_name(layer: int) -> str:
    """SAELens name of the residual stream after decoder layer ``layer`` (``blocks.15.hook_resid_post``)."""
    return f"blocks.{layer}.hook_resid_post"
