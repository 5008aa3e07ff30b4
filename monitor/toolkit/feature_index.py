"""The feature toolkit: what a latent responds to, which latents are alike, which fire on a text.

``FeatureIndex`` is built once per SAE from held-out documents (``safety-monitor sae index``): for
every latent its maximum activation, firing density and top-activating contexts, plus the token ids of
the documents those contexts come from. It is small (a few MB) and ships beside the SAE as
``feature_index.npz``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

INDEX_FILE = "feature_index.npz"


@dataclass
class FeatureIndex:
    """Per-latent statistics over held-out tokens."""

    max_activation: np.ndarray
    """``[d_sae]`` float32."""
    density: np.ndarray
    """``[d_sae]`` float32: share of tokens where the latent is active."""
    top_values: np.ndarray
    """``[d_sae, k]`` float32, descending (0 where fewer than k activations exist)."""
    top_doc: np.ndarray
    """``[d_sae, k]`` int32: document of each top activation (-1 = none)."""
    top_pos: np.ndarray
    """``[d_sae, k]`` int32: token position inside that document."""
    doc_tokens: list[np.ndarray]
    """Token ids of each document."""
    n_tokens: int
    """Tokens the statistics cover."""
    sae_sha256: str

    def save(self, path: Path) -> Path:
        lengths = np.array([len(t) for t in self.doc_tokens], dtype=np.int64)
        np.savez_compressed(path, max_activation=self.max_activation, density=self.density,
                            top_values=self.top_values.astype(np.float16), top_doc=self.top_doc,
                            top_pos=self.top_pos.astype(np.int16), doc_lengths=lengths,
                            doc_tokens=np.concatenate(self.doc_tokens).astype(np.int32) if self.doc_tokens
                            else np.zeros(0, np.int32), n_tokens=self.n_tokens, sae_sha256=self.sae_sha256)
        return path

    @staticmethod
    def load(path: Path) -> FeatureIndex:
        z = np.load(path)
        ends = np.cumsum(z["doc_lengths"])
        tokens = np.split(z["doc_tokens"], ends[:-1]) if len(ends) else []
        return FeatureIndex(z["max_activation"], z["density"], z["top_values"].astype(np.float32), z["top_doc"],
                            z["top_pos"].astype(np.int32), tokens, int(z["n_tokens"]), str(z["sae_sha256"]))


def build_index(sae, doc_tokens: list[np.ndarray], doc_acts: list[np.ndarray], *, top_k: int = 16,
                max_norm_ratio: float = 10.0, progress: bool = True) -> FeatureIndex:
    """Index ``sae`` over documents: ``doc_acts[i] [n_i, d_in]`` are the layer activations of
    ``doc_tokens[i]`` (position 0 included; it is skipped)."""
    d = sae.cfg.d_sae
    max_act = torch.zeros(d)
    fired = torch.zeros(d)
    top_v = torch.zeros(d, top_k)
    top_d = torch.full((d, top_k), -1, dtype=torch.int32)
    top_p = torch.zeros(d, top_k, dtype=torch.int32)
    n_tok = 0
    for i, acts in enumerate(tqdm(doc_acts, disable=not progress, desc="feature index", unit="doc")):
        if len(acts) < 2:
            continue
        x = torch.from_numpy(np.asarray(acts[1:], dtype=np.float32))
        # Like training: leave out sink-like outlier tokens (norm > 10x the document's median), which
        # otherwise take over the top contexts of many latents.
        norms = x.norm(dim=1)
        kept = (norms <= max_norm_ratio * norms.median()).nonzero().squeeze(1)
        x = x[kept]
        z = sae.encode(x)  # [n, d]
        n_tok += z.shape[0]
        fired += (z > 0).sum(0)
        vals, pos = z.max(dim=0)  # best token of this document per latent
        max_act = torch.maximum(max_act, vals)
        # merge this document's best token into each latent's top-k (one context per document)
        cand_v = torch.cat([top_v, vals[:, None]], 1)
        cand_d = torch.cat([top_d, torch.full((d, 1), i, dtype=torch.int32)], 1)
        cand_p = torch.cat([top_p, (kept[pos] + 1).to(torch.int32)[:, None]], 1)
        order = cand_v.argsort(dim=1, descending=True)[:, :top_k]
        top_v, top_d, top_p = cand_v.gather(1, order), cand_d.gather(1, order), cand_p.gather(1, order)
    top_d = torch.where(top_v > 0, top_d, torch.full_like(top_d, -1))
    return FeatureIndex(max_act.numpy(), (fired / max(n_tok, 1)).numpy(), top_v.numpy(), top_d.numpy(),
                        top_p.numpy(), [np.asarray(t, dtype=np.int32) for t in doc_tokens], n_tok, sae.sha256)


@dataclass
class Context:
    """A top-activating context of a latent: tokens around the peak with the latent's value on each."""

    value: float
    tokens: list[str]
    values: list[float]
    peak: int
    """Index of the peak token in ``tokens``."""


def latent_contexts(index: FeatureIndex, sae, lm, latent: int, *, n: int = 8, window: int = 12,
                    layer: int = 15) -> list[Context]:
    """Top contexts of ``latent``, re-run through the model so every token of the window gets its value."""
    from monitor.toolkit.encode_text import tap_text

    out = []
    for j in range(min(n, index.top_values.shape[1])):
        doc = int(index.top_doc[latent, j])
        if doc < 0:
            break
        ids = index.doc_tokens[doc]
        pos = int(index.top_pos[latent, j])
        lo, hi = max(0, pos - window), min(len(ids), pos + 4)
        batch = tap_text(lm, layer, torch.from_numpy(ids[:hi].astype(np.int64)))
        vals = sae.encode_latents(batch.activations, [latent])[:, 0]
        vals[0] = 0  # the attention sink is never encoded
        toks = [lm.tokenizer.decode([int(t)]) for t in ids[lo:hi]]
        out.append(Context(float(index.top_values[latent, j]), toks, vals[lo:hi].tolist(), pos - lo))
    return out


def render_terminal(ctx: Context, vmax: float) -> str:
    """Tokens with an orange background whose intensity follows the latent's value (24-bit ANSI)."""
    parts = []
    for tok, v in zip(ctx.tokens, ctx.values):
        a = max(0.0, min(1.0, v / vmax)) if vmax > 0 else 0.0
        if a <= 0:
            parts.append(tok)
        else:
            r, g, b = 255, int(255 - 120 * a), int(255 - 255 * a)
            parts.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{tok}\x1b[0m")
    return "".join(parts).replace("\n", "⏎")


def render_html(latent: int, contexts: list[Context], vmax: float, *, neighbors: list[tuple[int, float]] = (),
                density: float | None = None) -> str:
    """A page like the research's feature views: each context with tokens shaded orange by activation."""
    rows = []
    for c in contexts:
        spans = []
        for tok, v in zip(c.tokens, c.values):
            a = max(0.0, min(1.0, v / vmax)) if vmax > 0 else 0.0
            style = f"background: rgba(255, 140, 0, {a:.2f})" if a > 0 else ""
            spans.append(f'<span title="{v:.3f}" style="{style}">{html.escape(tok)}</span>')
        rows.append(f'<tr><td class="v">{c.value:.2f}</td><td class="ctx">{"".join(spans)}</td></tr>')
    nb = ", ".join(f"{i} ({s:.2f})" for i, s in neighbors)
    dens = "" if density is None else f" · fires on {density:.3%} of tokens"
    return f"""<!doctype html><meta charset="utf-8"><title>latent {latent}</title>
<style>body{{font:14px system-ui;margin:2em}} td.v{{color:#888;padding-right:1em;vertical-align:top}}
td.ctx{{font-family:ui-monospace,monospace;white-space:pre-wrap}} span{{border-radius:2px}}</style>
<h1>Latent {latent}</h1><p>max activation {vmax:.2f}{dens}</p>
<p>nearest latents by decoder cosine: {nb or "–"}</p><table>{"".join(rows)}</table>"""


def neighbors(sae, latent: int, n: int = 10) -> list[tuple[int, float]]:
    """Latents whose decoder directions are closest to ``latent``'s (cosine similarity)."""
    w = sae.weights["W_dec"]
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = w @ w[latent]
    sims[latent] = -2
    vals, idx = sims.topk(n)
    return [(int(i), float(v)) for v, i in zip(vals, idx)]


def search(sae, lm, text: str, *, layer: int = 15, n: int = 10) -> list[tuple[int, float, str]]:
    """Latents most active on ``text``: ``(latent, max activation, token where it peaks)``."""
    from monitor.toolkit.encode_text import tap_text

    ids = torch.tensor(lm.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.int64)
    batch = tap_text(lm, layer, ids)
    z = sae.encode(batch.activations[1:])
    vals, pos = z.max(dim=0)
    top = vals.topk(min(n, len(vals)))
    return [(int(i), float(v), lm.tokenizer.decode([int(ids[1 + int(pos[i])])])) for v, i in zip(top.values, top.indices)
            if v > 0]
