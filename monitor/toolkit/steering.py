"""Steering: generate with one SAE latent clamped or amplified, beside the unsteered generation.

On every forward step a hook on layer L adds ``(target - current) * W_dec[latent]`` to the residual
stream at every position (except the attention sink), where ``current`` is the latent's value on that
token. That is the residual the SAE would reconstruct with the latent set to ``target`` (the
research's clamping), plus the reconstruction error, which is left as it was. Re-encoding the
steered residual moves the latent toward ``target``; it need not land on it exactly, because encoder
and decoder directions are not exact inverses.
This is how a detector's latents are shown to be causal, not merely correlated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monitor.lm.chat import render_chat
from monitor.lm.tap import resolve_module


@dataclass
class SteeringResult:
    prompt: str
    latent: int
    target: float
    unsteered: str
    steered: str


class LatentClamp:
    """Forward hook on a decoder layer: clamps one latent to ``target`` on every token."""

    def __init__(self, sae, latent: int, target: float) -> None:
        self.sae, self.latent, self.target = sae, latent, target
        self.direction = sae.weights["W_dec"][latent]

    def __call__(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        b, t, d = hidden.shape
        flat = hidden.reshape(-1, d)
        current = self.sae.encode_latents(flat, [self.latent])[:, 0].to(hidden.dtype)
        delta = (self.target - current)[:, None] * self.direction.to(hidden.dtype)
        delta = delta.reshape(b, t, d)
        if t > 1:
            delta[:, 0] = 0  # leave the attention sink alone
        new = hidden + delta
        return (new, *output[1:]) if isinstance(output, tuple) else new


@torch.no_grad()
def steer(lm, sae, prompt: str, *, latent: int, target: float, layer: int = 15, max_new_tokens: int = 48,
          chat: bool = True) -> SteeringResult:
    """Greedy generations of ``prompt`` without and with ``latent`` clamped to ``target``."""
    if chat:
        ids = render_chat(lm.tokenizer, [{"role": "user", "content": prompt}]).input_ids
        ids = torch.cat([ids, torch.tensor(lm.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)
                                           ["input_ids"])])[None]
    else:
        ids = torch.tensor(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])[None]
    kw = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": lm.tokenizer.pad_token_id,
              "attention_mask": torch.ones_like(ids)}
    plain = lm.model.generate(ids, **kw)[0, ids.shape[1]:]
    handle = resolve_module(lm.model, f"model.layers.{layer}").register_forward_hook(LatentClamp(sae, latent, target))
    try:
        steered = lm.model.generate(ids, **kw)[0, ids.shape[1]:]
    finally:
        handle.remove()
    dec = lambda t: lm.tokenizer.decode(t, skip_special_tokens=True).strip()
    return SteeringResult(prompt, latent, target, dec(plain), dec(steered))
