"""Run many token sequences through the model to layer L with the real tap, in padded batches.

Offline jobs (activation collection, detector activations, the feature index) all need the same
thing: the layer-L activations of each of many sequences. This runs the trunk only up to layer L
(``monitor.lm.loading.truncated``), attributes rows to sequences through ``ActivationTap.track`` and yields each
sequence's tokens as a single-request ``ActivationBatch``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from monitor.lm.loading import LoadedModel, truncated
from monitor.lm.tap import ActivationTap, CollectingSink
from monitor.wire import ActivationBatch

COMPUTE_DTYPES = ("float32", "bfloat16")
"""Precisions offline jobs may run the model in."""


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX). Elsewhere bf16 autocast is
    emulated and 2.6-5.5x slower than float32 (docs/performance.md). True where it cannot tell (no
    ``/proc/cpuinfo``)."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


_warned_slow_bf16 = False


def _warn_if_bf16_is_slow(device: str, compute_dtype: str) -> None:
    global _warned_slow_bf16
    if compute_dtype == "bfloat16" and device == "cpu" and not _warned_slow_bf16 and not cpu_has_fast_bf16():
        _warned_slow_bf16 = True
        print("[activations] this CPU has no AVX512-BF16 or AMX: bfloat16 is emulated here and 2.6-5.5x slower "
              "than float32 (--compute-dtype float32; the precision also names the activation cache)", file=sys.stderr)


def tap_sequences(lm: LoadedModel, layer: int, sequences: Sequence[torch.Tensor], *,
                  roles: Sequence[torch.Tensor] | None = None, batch_size: int = 16,
                  order: Sequence[int] | None = None,
                  dtype: torch.dtype = torch.float16,
                  compute_dtype: str = "float32",
                  max_batch_tokens: int | None = None) -> Iterator[list[tuple[int, ActivationBatch]]]:
    """For each padded batch, ``[(sequence index, its tokens), ...]``. ``order``: the order in which
    sequences are batched (e.g. sorted by length to reduce padding); default: as given.
    ``max_batch_tokens``: a batch also ends before its padded size (rows x longest row) would pass this, so
    long sequences go a few at a time (a sequence longer than it goes alone): at 16 x 1,280 tokens a
    forward's intermediates are large enough that the allocator maps and faults in fresh pages at every
    op (a third of the CPU time in the kernel; ``bench/bench_batch_tokens.py``).
    ``compute_dtype="bfloat16"`` runs the matrix products under bf16 autocast (the residual stream
    itself stays float32): about 2.5x faster on CPUs with AVX512-BF16 (2.6-5.5x slower without it: a warning
    says so), at a 0.5 % mean relative error of the layer-15 activations (6e-5 of their variance;
    ``docs/performance.md``)."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, not {compute_dtype!r}")
    device = next(lm.model.parameters()).device.type
    _warn_if_bf16_is_slow(device, compute_dtype)
    order = list(range(len(sequences))) if order is None else list(order)
    pad = lm.tokenizer.pad_token_id or 0
    sink = CollectingSink()
    with truncated(lm.model, layer) as trunk, ActivationTap(lm.model, layer=layer, sink=sink, model_id=lm.model_id,
                                                             dtype=dtype, max_queue=1 << 20) as tap:
        for idx in _batches(order, [len(x) for x in sequences], batch_size, max_batch_tokens):
            width = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.int64)
            mask = torch.zeros(len(idx), width, dtype=torch.int64)
            role = torch.zeros(len(idx), width, dtype=torch.uint8)
            for r, i in enumerate(idx):
                n = len(sequences[i])
                ids[r, :n], mask[r, :n] = sequences[i], 1
                if roles is not None:
                    role[r, :n] = roles[i]
            with torch.inference_mode(), tap.track([str(i) for i in idx], attention_mask=mask, roles=role), \
                    torch.autocast(device, dtype=torch.bfloat16, enabled=compute_dtype == "bfloat16"):
                trunk(input_ids=ids, attention_mask=mask, use_cache=False)
            tap.flush()
            if tap.stats.chunks_dropped:
                raise RuntimeError("the tap dropped activations; raise max_queue")
            by_request = sink.tokens_by_request()
            sink.batches.clear()
            yield [(i, by_request[str(i)]) for i in idx]


def _batches(order: Sequence[int], lengths: Sequence[int], batch_size: int,
             max_tokens: int | None) -> Iterator[list[int]]:
    """``order`` cut into batches of at most ``batch_size`` sequences and, padded, ``max_tokens`` tokens."""
    batch: list[int] = []
    width = 0
    for i in order:
        grown = max(width, lengths[i])
        if batch and (len(batch) == batch_size or (max_tokens is not None and grown * (len(batch) + 1) > max_tokens)):
            yield batch
            batch, grown = [], lengths[i]
        batch.append(i)
        width = grown
    if batch:
        yield batch
