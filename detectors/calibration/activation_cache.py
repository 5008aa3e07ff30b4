"""Layer-L activations of labelled examples, computed once through the tap and cached on disk.

The cache only stores and loads: the job that fills it passes in the function that runs the model
(``ensure(examples, compute)``), so this package never runs one. Raw activations (not latents) are cached, keyed by model, layer, context and the example's content
hash, so a new SAE only needs re-encoding (milliseconds) and the dense-probe baseline reads the same
tokens. Layout of ``ROOT/<model>-layer<L>-ctx<C>[-bfloat16]/`` (the suffix when the model ran its
matrix products in bf16, see ``monitor.lm.runner.tap_sequences``): ``shard-NNNNN.npy`` float16 ``[n, d]``,
``shard-NNNNN-meta.npy`` int32 ``[n, 3]`` (token id, role, position), and ``index.json``
(key -> shard, start, length). Shards are appended every ``flush_every`` examples, so an interrupted
run keeps what it finished; several jobs may fill one cache at once (``_append`` takes a lock).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detectors.calibration.data import Example


@dataclass
class TokenActivations:
    """The tapped tokens of one example."""

    acts: np.ndarray
    """``[n, d_in]`` float16."""
    token_ids: np.ndarray
    """``[n]`` int32."""
    roles: np.ndarray
    """``[n]`` uint8 (``ROLE_PROMPT`` / ``ROLE_RESPONSE``)."""
    positions: np.ndarray
    """``[n]`` int32 position in the sequence (0 = attention sink)."""


ComputeActivations = Callable[[list[Example]], Iterable[tuple[int, TokenActivations]]]
"""Runs the model over examples: ``compute(todo)`` yields ``(index into todo, its tapped tokens)``."""


class ActivationCache:
    """See the module docstring."""

    def __init__(self, root: Path, model_id: str, layer: int, context: int = 256, *,
                 compute_dtype: str = "float32") -> None:
        suffix = "" if compute_dtype == "float32" else f"-{compute_dtype}"
        # "-live": only the final assistant turn has the response role, as in live traffic; "-recent": a
        # conversation longer than the context keeps its latest turns.
        self.dir = Path(root) / f"{model_id.replace('/', '_')}-layer{layer}-ctx{context}{suffix}-live-recent"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.layer, self.context, self.compute_dtype = layer, context, compute_dtype
        index_path = self.dir / "index.json"
        self.index: dict[str, list[int]] = json.loads(index_path.read_text()) if index_path.exists() else {}
        self._shards: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._shards:
            self._shards[i] = (np.load(self.dir / f"shard-{i:05d}.npy", mmap_mode="r"),
                               np.load(self.dir / f"shard-{i:05d}-meta.npy", mmap_mode="r"))
        return self._shards[i]

    def get(self, key: str) -> TokenActivations:
        shard, start, n = self.index[key]
        acts, meta = self._shard(shard)
        m = meta[start : start + n]
        return TokenActivations(acts[start : start + n], m[:, 0], m[:, 1].astype(np.uint8), m[:, 2])

    def missing(self, examples: list[Example]) -> list[Example]:
        seen, out = set(self.index), []
        for e in examples:
            if e.key not in seen:
                seen.add(e.key)
                out.append(e)
        return out

    def ensure(self, examples: list[Example], compute: ComputeActivations, *, flush_every: int = 1024,
               progress: bool = True) -> None:
        """Store the activations of every example not cached yet. ``compute(todo)`` runs the model: it yields
        ``(i, tokens)`` for each ``todo[i]``, in any order (``monitor.cli.detector_jobs.example_activations``)."""
        todo = self.missing(examples)
        if not todo:
            return
        pending: list[tuple[str, np.ndarray, np.ndarray]] = []
        bar = tqdm(total=len(todo), unit="ex", disable=not progress, desc=f"activations layer {self.layer}")
        for i, t in compute(todo):
            meta = np.stack([t.token_ids, t.roles, t.positions], axis=1).astype(np.int32)
            pending.append((todo[i].key, np.asarray(t.acts), meta))
            bar.update(1)
            if len(pending) >= flush_every:
                self._append(pending)
                pending = []
        self._append(pending)
        bar.close()

    def _append(self, items: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """Write ``items`` as a new shard and add them to the index. Under an exclusive lock on the folder,
        the index is re-read and merged first, so jobs filling one cache at once (two ``calibrate`` runs, an
        ``eval`` beside one) never take the same shard number or drop each other's entries."""
        if not items:
            return
        with self._locked():
            index_path = self.dir / "index.json"
            if index_path.exists():
                self.index.update(json.loads(index_path.read_text()))
            shard = 1 + max((s for s, _, _ in self.index.values()), default=-1)
            acts = np.concatenate([a for _, a, _ in items]).astype(np.float16)
            meta = np.concatenate([m for _, _, m in items])
            np.save(self.dir / f"shard-{shard:05d}.npy", acts)
            np.save(self.dir / f"shard-{shard:05d}-meta.npy", meta)
            start = 0
            for key, a, _ in items:
                self.index[key] = [shard, start, len(a)]
                start += len(a)
            tmp = self.dir / f"index.json.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(self.index))
            os.replace(tmp, index_path)

    @contextmanager
    def _locked(self):
        with open(self.dir / "index.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
