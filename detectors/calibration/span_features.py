"""Per-example features for discovery and probing: latents (or raw activations) aggregated over a span.

For every example the cached layer-L tokens are selected by span (``detectors.spans.span_mask``: position 0,
the attention sink, is never used, exactly as in the sidecar) and aggregated per feature by ``max`` or ``mean``. These are
the same numbers ``detectors.scoring.RequestScores`` computes live, so a threshold set on them holds
in the sidecar.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from detectors.calibration.activation_cache import ActivationCache
from detectors.calibration.data import Example
from detectors.scoring import aggregate
from detectors.spans import span_mask
from detectors.spec import AGGREGATIONS, DEFAULT_WINDOW


def latent_features(cache: ActivationCache, sae, examples: list[Example], *, span: str,
                    aggregations: tuple[str, ...] = AGGREGATIONS, latents: list[int] | None = None,
                    window: int = DEFAULT_WINDOW, progress: bool = True) -> dict[str, np.ndarray]:
    """``{aggregation: [n_examples, n_latents] float32}``: every latent (or just ``latents``) of ``sae``,
    aggregated over the span of each example."""
    out = {a: [] for a in aggregations}
    for e in tqdm(examples, disable=not progress, desc=f"latents ({span})", unit="ex"):
        t = cache.get(e.key)
        x = torch.from_numpy(np.asarray(t.acts[span_mask(t.roles, t.positions, span)], dtype=np.float32))
        z = sae.encode(x) if latents is None else sae.encode_latents(x, latents)
        for a in aggregations:
            out[a].append(aggregate(z, a, window))
    return {a: torch.stack(v).numpy() for a, v in out.items()}


def dense_features(cache: ActivationCache, examples: list[Example], *, span: str, aggregation: str = "mean") -> np.ndarray:
    """Raw activations aggregated over the span: ``[n_examples, d_in]`` float32 (dense-probe input)."""
    rows = []
    for e in examples:
        t = cache.get(e.key)
        x = torch.from_numpy(np.asarray(t.acts[span_mask(t.roles, t.positions, span)], dtype=np.float32))
        rows.append(aggregate(x, aggregation, DEFAULT_WINDOW))
    return torch.stack(rows).numpy()


def span_has_tokens(cache: ActivationCache, examples: list[Example], span: str) -> np.ndarray:
    """``[n_examples]`` bool: the example has tokens in ``span`` (a reply detector has nothing to read in a
    conversation without a reply; live, such a request is never scored and never alerts)."""
    return np.array([bool(span_mask(t.roles, t.positions, span).any()) for t in (cache.get(e.key) for e in examples)])
