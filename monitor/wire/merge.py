"""Merging tap chunks into one wire batch, and splitting a batch that is over a token limit.

The tap emits one small batch per forward call (a prefill, then one token per request per decode
step). ``coalesce`` joins many of them into one batch in which each request appears once, its rows
in arrival order (the wire format wants unique request ids per batch). ``split`` cuts a batch into
pieces of at most ``max_tokens`` rows; a request cut in two carries its final flag on its last piece.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from monitor.wire.batch import ActivationBatch


def coalesce(batches: Sequence[ActivationBatch]) -> ActivationBatch:
    """One batch holding every row of ``batches``, grouped by request (first appearance order).

    All batches must share model, hook, SAE, kind (activations or latents, and then the latent ids) and
    width. A request is final if any of its chunks is.
    """
    if not batches:
        raise ValueError("coalesce needs at least one batch")
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    parts: dict[str, list[tuple[int, int, int]]] = {}
    final: dict[str, bool] = {}
    bases = [0, *itertools.accumulate(b.n_tokens for b in batches)]
    for bi, b in enumerate(batches):
        if not b.same_stream(first):
            raise ValueError("cannot coalesce batches from different models, hooks, SAEs or kinds")
        bounds = b.offsets.tolist()
        for i, rid in enumerate(b.request_ids):
            parts.setdefault(rid, []).append((bases[bi], bounds[i], bounds[i + 1]))
            final[rid] = final.get(rid, False) or b.final[i]
    rows: list[int] = []
    offsets = [0]
    for rid_parts in parts.values():
        for base, start, stop in rid_parts:
            rows.extend(range(base + start, base + stop))
        offsets.append(len(rows))
    full = [b for b in batches if b.n_tokens]
    if full:
        acts = torch.cat([b.activations for b in full])
        token_ids = torch.cat([b.token_ids for b in full])
        positions = torch.cat([b.positions for b in full])
        roles = torch.cat([b.roles for b in full])
        if rows != list(range(len(rows))):
            perm = torch.tensor(rows, dtype=torch.long)
            acts, token_ids, positions, roles = (t.index_select(0, perm) for t in (acts, token_ids, positions, roles))
    else:
        acts = first.activations[:0]
        token_ids, positions, roles = first.token_ids[:0], first.positions[:0], first.roles[:0]
    return ActivationBatch(
        activations=acts, token_ids=token_ids, positions=positions, roles=roles,
        offsets=torch.tensor(offsets, dtype=torch.int64), request_ids=list(parts), final=[final[r] for r in parts],
        model=first.model, hook=first.hook, sae_sha256=first.sae_sha256, latent_ids=first.latent_ids,
    )


def split(batch: ActivationBatch, max_tokens: int) -> list[ActivationBatch]:
    """Pieces of at most ``max_tokens`` rows, in order; each request's rows stay in order and only the
    last piece of a request carries its final flag."""
    if batch.n_tokens <= max_tokens:
        return [batch]
    bounds = batch.offsets.tolist()
    pieces: list[ActivationBatch] = []
    cur: list[tuple[str, int, int, bool]] = []  # (request id, start row, stop row, final)
    used = 0
    for i, rid in enumerate(batch.request_ids):
        start, stop = bounds[i], bounds[i + 1]
        while True:
            take = min(stop - start, max_tokens - used)
            last = start + take == stop
            if take > 0 or last:
                cur.append((rid, start, start + take, batch.final[i] and last))
            used += take
            start += take
            if used >= max_tokens:
                pieces.append(_piece(batch, cur))
                cur, used = [], 0
            if last:
                break
    if cur:
        pieces.append(_piece(batch, cur))
    return pieces


def _piece(batch: ActivationBatch, segs: list[tuple[str, int, int, bool]]) -> ActivationBatch:
    a, b = segs[0][1], segs[-1][2]  # segments are consecutive rows of the parent batch
    offsets = [0, *itertools.accumulate(stop - start for _, start, stop, _ in segs)]
    return ActivationBatch(
        activations=batch.activations[a:b], token_ids=batch.token_ids[a:b], positions=batch.positions[a:b],
        roles=batch.roles[a:b], offsets=torch.tensor(offsets, dtype=torch.int64),
        request_ids=[s[0] for s in segs], final=[s[3] for s in segs], model=batch.model, hook=batch.hook,
        sae_sha256=batch.sae_sha256, latent_ids=batch.latent_ids,
    )
