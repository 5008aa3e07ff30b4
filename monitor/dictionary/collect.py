"""``safety-monitor sae collect``: layer-L activations of the token stream, as resumable float16 shards.

Layout of ``OUT/``::

    manifest.json             config, next document index, shards with their token counts
    acts-00000.npy            float16 [capacity, d_in] memory-mapped; rows [0, n_tokens) are valid
    meta-00000.npy            int32 [capacity, 3]: token id, document index, position in document

Left out: position 0 of every document (the attention-sink token, whose norm is ~100x the others;
SmolLM2's tokenizer adds no BOS, so this is the first real token), padding and special tokens
(``<|im_start|>``, ``<|im_end|>``). The manifest is rewritten after every batch, after the shards are
flushed, so a killed run resumes at the last recorded document and overwrites anything past it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from monitor.defaults import hook_name
from monitor.dictionary.corpus import Document
from monitor.lm.loading import LoadedModel
from monitor.lm.runner import tap_sequences
from monitor.wire import ActivationBatch

MANIFEST = "manifest.json"


@dataclass
class CollectConfig:
    """What to collect and where."""

    layer: int = 15
    """Decoder layer whose output (resid_post) is tapped."""
    target_tokens: int = 3_200_000
    """Stop once this many activations are stored."""
    batch_size: int = 16
    """Documents per forward call."""
    shard_tokens: int = 262_144
    """Rows per shard file."""
    split: str = "train"
    """Only documents of this split are read."""
    compute_dtype: str = "float32"
    """float32, or bfloat16: matrix products under bf16 autocast, ~2.5x faster on AVX512-BF16 CPUs, 2.6-5.5x
    slower on others."""


class ShardWriter:
    """Appends token rows to fixed-capacity memory-mapped shards."""

    def __init__(self, out: Path, d_in: int, shard_tokens: int, shards: list[dict]) -> None:
        self.out, self.d_in, self.capacity = out, d_in, shard_tokens
        self.shards = shards
        self._acts = self._meta = None
        if shards and shards[-1]["n_tokens"] < shard_tokens:
            self._open(len(shards) - 1, create=False)

    @property
    def total(self) -> int:
        return sum(s["n_tokens"] for s in self.shards)

    def _open(self, index: int, create: bool) -> None:
        mode = "w+" if create else "r+"
        acts = self.out / f"acts-{index:05d}.npy"
        meta = self.out / f"meta-{index:05d}.npy"
        if create:
            self._acts = np.lib.format.open_memmap(acts, mode=mode, dtype=np.float16, shape=(self.capacity, self.d_in))
            self._meta = np.lib.format.open_memmap(meta, mode=mode, dtype=np.int32, shape=(self.capacity, 3))
            self.shards.append({"acts": acts.name, "meta": meta.name, "n_tokens": 0})
        else:
            self._acts = np.load(acts, mmap_mode="r+")
            self._meta = np.load(meta, mmap_mode="r+")

    def append(self, acts: np.ndarray, meta: np.ndarray) -> None:
        i = 0
        while i < len(acts):
            if self._acts is None or self.shards[-1]["n_tokens"] >= self.capacity:
                self._open(len(self.shards), create=True)
            shard = self.shards[-1]
            n = min(len(acts) - i, self.capacity - shard["n_tokens"])
            self._acts[shard["n_tokens"] : shard["n_tokens"] + n] = acts[i : i + n]
            self._meta[shard["n_tokens"] : shard["n_tokens"] + n] = meta[i : i + n]
            shard["n_tokens"] += n
            i += n

    def flush(self) -> None:
        if self._acts is not None:
            self._acts.flush()
            self._meta.flush()


def _write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)


def collect(lm: LoadedModel, docs: list[Document], out: Path, cfg: CollectConfig, *, progress: bool = True) -> dict:
    """Run ``lm`` over ``docs`` (those of ``cfg.split``), writing activations to ``out``. Resumes when
    ``out/manifest.json`` exists with the same config. Returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / MANIFEST
    manifest = json.loads(mpath.read_text()) if mpath.exists() else None
    if manifest is not None and manifest["config"] != asdict(cfg) | {"target_tokens": manifest["config"]["target_tokens"]}:
        raise ValueError(f"{out} holds a collection with a different config; choose another --out or delete it")
    if manifest is None:
        manifest = {"config": asdict(cfg), "model": lm.model_id, "hook": hook_name(cfg.layer),
                    "d_in": lm.d_model, "next_doc": 0, "shards": [], "dtype": "float16",
                    "excluded": "position 0 of each document (attention sink), padding, special tokens",
                    "bos_kept": False}
    manifest["config"]["target_tokens"] = cfg.target_tokens
    writer = ShardWriter(out, lm.d_model, cfg.shard_tokens, manifest["shards"])
    special = torch.tensor(sorted(set(lm.tokenizer.all_special_ids)), dtype=torch.int64)
    docs_split = [(i, d) for i, d in enumerate(docs) if d.split == cfg.split]
    start = next((j for j, (i, _) in enumerate(docs_split) if i >= manifest["next_doc"]), len(docs_split))
    bar = tqdm(total=cfg.target_tokens, initial=writer.total, unit="tok", unit_scale=True, disable=not progress,
               desc=f"collect layer {cfg.layer}")
    t0, n0 = time.perf_counter(), writer.total
    todo = docs_split[start:]
    for results in tap_sequences(lm, cfg.layer, [d.input_ids for _, d in todo], batch_size=cfg.batch_size,
                                 compute_dtype=cfg.compute_dtype):
        if writer.total >= cfg.target_tokens:
            break
        acts, meta = _select_rows([(todo[i][0], batch) for i, batch in results], special)
        writer.append(acts, meta)
        writer.flush()
        manifest["next_doc"] = todo[results[-1][0]][0] + 1
        _write_manifest(out, manifest)
        bar.update(len(acts))
        rate = (writer.total - n0) / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(tok_s=f"{rate:,.0f}")
    bar.close()
    manifest["complete"] = writer.total >= cfg.target_tokens
    _write_manifest(out, manifest)
    return manifest


def _select_rows(docs: list[tuple[int, ActivationBatch]], special: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows to keep of each document's tokens: ``(acts [n, d] float16, meta [n, 3] int32)``."""
    acts, metas = [], []
    for doc_index, b in docs:
        tok = b.token_ids.to(torch.int64)
        keep = (b.positions > 0) & ~torch.isin(tok, special)
        acts.append(b.activations[keep].numpy())
        m = torch.stack([tok[keep], torch.full_like(tok[keep], doc_index), b.positions[keep].to(torch.int64)], dim=1)
        metas.append(m.to(torch.int32).numpy())
    return np.concatenate(acts), np.concatenate(metas)


def open_activations(out: Path) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Memory-mapped views of a collection: per shard, ``acts [n, d_in]`` and ``meta [n, 3]``."""
    manifest = json.loads((out / MANIFEST).read_text())
    acts, metas = [], []
    for s in manifest["shards"]:
        acts.append(np.load(out / s["acts"], mmap_mode="r")[: s["n_tokens"]])
        metas.append(np.load(out / s["meta"], mmap_mode="r")[: s["n_tokens"]])
    return acts, metas, manifest
