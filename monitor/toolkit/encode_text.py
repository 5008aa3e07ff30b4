"""Run the model with the tap over a text and encode each token through an SAE (``safety-monitor encode``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monitor.lm.chat import render_chat
from monitor.lm.loading import LoadedModel
from monitor.lm.tap import ActivationTap, CollectingSink
from monitor.sae import FrozenSAE


@dataclass
class TokenLatents:
    """The strongest latents on one token."""

    position: int
    """Position in the sequence."""
    token: str
    """Decoded token text."""
    latents: list[tuple[int, float]]
    """``(latent id, activation)``, strongest first."""


def tap_text(lm: LoadedModel, layer: int, input_ids: torch.Tensor, roles: torch.Tensor | None = None):
    """Layer-``layer`` activations of one sequence through the real tap: ``ActivationBatch`` of its tokens."""
    sink = CollectingSink()
    with ActivationTap(lm.model, layer=layer, sink=sink, model_id=lm.model_id, dtype=torch.float32) as tap:
        ids = input_ids[None]
        with torch.inference_mode(), tap.track(["text"], roles=None if roles is None else roles[None]):
            lm.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        tap.flush()
    return sink.tokens_by_request()["text"]


def encode_text(lm: LoadedModel, sae: FrozenSAE, text: str, *, layer: int, top: int = 5,
                chat: bool = False) -> list[TokenLatents]:
    """Per token of ``text`` (or of a one-turn chat with it when ``chat``), the ``top`` active latents.
    Position 0 (the attention sink) is reported without latents."""
    if chat:
        ids = render_chat(lm.tokenizer, [{"role": "user", "content": text}]).input_ids
    else:
        ids = torch.tensor(lm.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.int64)
    if ids.numel() == 0:
        raise ValueError("the text has no tokens")
    batch = tap_text(lm, layer, ids)
    z = sae.encode(batch.activations)
    out = []
    for i in range(batch.n_tokens):
        pos = int(batch.positions[i])
        vals, idx = z[i].topk(min(top, z.shape[1]))
        lat = [] if pos == 0 else [(int(j), round(float(v), 4)) for v, j in zip(vals, idx) if v > 0]
        out.append(TokenLatents(pos, lm.tokenizer.decode([int(batch.token_ids[i])]), lat))
    return out
