"""``ActivationTap``: a forward hook that copies one layer's residual stream off a running model.

The hook sits on ``model.model.layers[L]`` (SAELens ``blocks.L.hook_resid_post``). On every forward
call, prefill and each decode step of ``generate()``, it selects the rows that are real tokens of
tracked requests (padding and tokens after a request's end-of-sequence are dropped), copies them as
float16 with no autograd, and puts them on a bounded queue. A background thread turns queue items
into ``ActivationBatch`` records and hands them to the sink. When the queue is full the hook drops the
chunk and counts it: the model is never blocked by the monitor.

Usage::

    with ActivationTap(model, layer=15, sink=my_sink, model_id="smollm2-135m-instruct") as tap:
        with tap.track(["req-a", "req-b"], attention_mask=enc.attention_mask):
            model.generate(**enc, max_new_tokens=32)
"""

from __future__ import annotations

import itertools
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Self

import torch

from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from monitor.defaults import DEFAULT_MODULE_PATH, hook_name
from monitor.wire import ActivationBatch

Sink = Callable[[ActivationBatch], None]


def resolve_module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """Follow a dotted attribute path (``model.layers.15``) from ``model``; clear error if absent."""
    node: object = model
    for part in path.split("."):
        try:
            node = node[int(part)] if part.isdigit() else getattr(node, part)  # type: ignore[index]
        except (AttributeError, IndexError, KeyError, TypeError):
            raise ValueError(
                f"module path {path!r} does not exist on {type(model).__name__} (failed at {part!r}); "
                "set module_path to the decoder layer list of this architecture, e.g. 'transformer.h.{layer}'"
            ) from None
    if not isinstance(node, torch.nn.Module):
        raise ValueError(f"module path {path!r} names a {type(node).__name__}, not a module")  # noqa: TRY004 -- a config error
    return node


@dataclass
class TapStats:
    """Counters of what the tap saw and what it dropped."""

    tokens_seen: int = 0
    """Real tokens of tracked requests that passed the hook."""
    chunks_queued: int = 0
    """Forward calls whose activations were queued."""
    chunks_dropped: int = 0
    """Forward calls dropped because the queue was full."""
    tokens_dropped: int = 0
    """Tokens in the dropped chunks."""
    untracked_calls: int = 0
    """Forward calls outside any ``track()`` context (ignored)."""
    sink_errors: int = 0
    """Batches whose sink raised (the error is kept in ``last_sink_error``)."""


@dataclass
class _Tracking:
    request_ids: list[str]
    prefill_mask: torch.Tensor | None
    prefill_roles: torch.Tensor | None
    lengths: torch.Tensor  # [B] tokens emitted so far per request
    finished: torch.Tensor  # [B] bool
    eos_ids: torch.Tensor
    calls: int = 0


@dataclass
class _Chunk:
    activations: torch.Tensor
    token_ids: torch.Tensor
    positions: torch.Tensor
    roles: torch.Tensor
    counts: list[int]
    request_ids: list[str]
    final: bool


class ActivationTap:
    """Forward hook on one decoder layer that streams activations of tracked requests to a sink."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        layer: int,
        sink: Sink,
        model_id: str = "",
        module_path: str = DEFAULT_MODULE_PATH,
        dtype: torch.dtype = torch.float16,
        max_queue: int = 256,
        sae_sha256: str = "",
    ) -> None:
        """``model``: a HF ``*ForCausalLM``. ``layer``: decoder layer index. ``sink``: called from a
        background thread with each ``ActivationBatch``. ``max_queue``: forward calls buffered before
        the hook starts dropping."""
        self.model = model
        self.layer = layer
        self.sink = sink
        self.model_id = model_id or type(model).__name__
        self.hook = hook_name(layer)
        self.dtype = dtype
        self.sae_sha256 = sae_sha256
        self.stats = TapStats()
        self.last_sink_error: BaseException | None = None
        self._module = resolve_module(model, module_path.format(layer=layer))
        # Unbounded container, bounded by _enqueue for activation chunks only: the empty end-of-request
        # markers must never be dropped, or a consumer would wait for a final flag that never comes.
        self.max_queue = max_queue
        self._queue: queue.Queue[_Chunk | None] = queue.Queue()
        self._tracking: _Tracking | None = None
        self._step_inputs: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self._handles = [
            # The base model sees input_ids whether the caller runs the LM head or only the trunk.
            getattr(model, "base_model", model).register_forward_pre_hook(self._capture_inputs, with_kwargs=True),
            self._module.register_forward_hook(self._on_layer_output),
        ]
        self._worker = threading.Thread(target=self._drain, name="activation-tap", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------- request tracking
    @contextmanager
    def track(
        self,
        request_ids: Sequence[str] | None = None,
        *,
        batch_size: int | None = None,
        attention_mask: torch.Tensor | None = None,
        roles: torch.Tensor | None = None,
    ) -> Iterator[list[str]]:
        """Attribute the forward calls inside this block to requests, one per batch row.

        ``request_ids``: one id per row (or give ``batch_size`` and ids are generated).
        ``attention_mask [B, T]``: the prefill mask (left or right padding); padding is dropped.
        ``roles [B, T]``: role of each prefill token (default ``ROLE_PROMPT``); tokens generated
        after the prefill are ``ROLE_RESPONSE``. On exit every request gets a final (empty) chunk.
        Yields the request ids.
        """
        if request_ids is None:
            if batch_size is None:
                raise ValueError("give request_ids or batch_size")
            request_ids = [str(uuid.uuid4()) for _ in range(batch_size)]
        ids = list(request_ids)
        if self._tracking is not None:
            raise RuntimeError("track() blocks do not nest: one batch of requests per forward at a time")
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos_list = [eos] if isinstance(eos, int) else list(eos or [])
        self._tracking = _Tracking(
            request_ids=ids,
            prefill_mask=None if attention_mask is None else attention_mask.detach().to("cpu", torch.bool),
            prefill_roles=None if roles is None else roles.detach().to("cpu", torch.uint8),
            lengths=torch.zeros(len(ids), dtype=torch.int64),
            finished=torch.zeros(len(ids), dtype=torch.bool),
            eos_ids=torch.tensor(eos_list, dtype=torch.int64),
        )
        try:
            yield ids
        finally:
            self._tracking = None
            self._step_inputs = (None, None)
            empty = _Chunk(torch.empty(0, 0, dtype=self.dtype), torch.empty(0, dtype=torch.int32),
                           torch.empty(0, dtype=torch.int32), torch.empty(0, dtype=torch.uint8),
                           [0] * len(ids), ids, final=True)
            self._enqueue(empty, n_tokens=0)

    # ----------------------------------------------------------------- hooks (model thread)
    def _capture_inputs(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._step_inputs = (input_ids, kwargs.get("attention_mask"))

    @torch.no_grad()
    def _on_layer_output(self, module, args, output):
        tr = self._tracking
        if tr is None:
            self.stats.untracked_calls += 1
            return
        hidden = output[0] if isinstance(output, tuple) else output  # [B, t, d]
        input_ids, step_mask = self._step_inputs
        b, t, _ = hidden.shape
        if b != len(tr.request_ids):
            raise RuntimeError(f"track() named {len(tr.request_ids)} requests but the forward batch has {b} rows")
        ids = input_ids.detach().to("cpu") if input_ids is not None else torch.zeros(b, t, dtype=torch.int64)
        prefill = tr.calls == 0
        tr.calls += 1
        if prefill:
            mask = tr.prefill_mask if tr.prefill_mask is not None and tr.prefill_mask.shape == (b, t) else None
            if mask is None:
                mask = (step_mask[:, -t:].detach().to("cpu", torch.bool) if step_mask is not None
                        else torch.ones(b, t, dtype=torch.bool))
            roles = (tr.prefill_roles if tr.prefill_roles is not None and tr.prefill_roles.shape == (b, t)
                     else torch.full((b, t), ROLE_PROMPT, dtype=torch.uint8))
        else:
            # Decode step: rows that already produced end-of-sequence only emit padding now.
            mask = ~tr.finished[:, None].expand(b, t)
            roles = torch.full((b, t), ROLE_RESPONSE, dtype=torch.uint8)
            if tr.eos_ids.numel():
                tr.finished |= torch.isin(ids[:, -1], tr.eos_ids)
        counts = mask.sum(dim=1)
        n = int(counts.sum())
        starts = tr.lengths.clone()
        tr.lengths += counts
        if n == 0:
            return
        self.stats.tokens_seen += n
        # Positions within each request: running count of kept tokens.
        positions = (mask.cumsum(dim=1) - 1 + starts[:, None])[mask]
        flat_mask = mask.to(hidden.device)
        chunk = _Chunk(
            activations=hidden[flat_mask].detach().to("cpu", self.dtype),
            token_ids=ids[mask].to(torch.int32),
            positions=positions.to(torch.int32),
            roles=roles[mask],
            counts=counts.tolist(),
            request_ids=tr.request_ids,
            final=False,
        )
        self._enqueue(chunk, n_tokens=n)

    def _enqueue(self, chunk: _Chunk, n_tokens: int) -> None:
        if not chunk.final and self._queue.qsize() >= self.max_queue:
            self.stats.chunks_dropped += 1
            self.stats.tokens_dropped += n_tokens
            return
        self._queue.put_nowait(chunk)
        self.stats.chunks_queued += 1

    # ----------------------------------------------------------------- delivery (tap thread)
    def _drain(self) -> None:
        while True:
            chunk = self._queue.get()
            try:
                if chunk is None:
                    return
                self._deliver(chunk)
            finally:
                self._queue.task_done()

    def _deliver(self, chunk: _Chunk) -> None:
        keep = [i for i, c in enumerate(chunk.counts) if c > 0 or chunk.final]
        offsets = [0, *itertools.accumulate(chunk.counts[i] for i in keep)]
        activations = chunk.activations
        if activations.numel() == 0:
            d = int(getattr(getattr(self.model, "config", None), "hidden_size", 0))
            activations = torch.empty(0, d, dtype=self.dtype)
        batch = ActivationBatch(
            activations=activations,
            token_ids=chunk.token_ids,
            positions=chunk.positions,
            roles=chunk.roles,
            offsets=torch.tensor(offsets, dtype=torch.int64),
            request_ids=[chunk.request_ids[i] for i in keep],
            final=[chunk.final] * len(keep),
            model=self.model_id,
            hook=self.hook,
            sae_sha256=self.sae_sha256,
        )
        try:
            self.sink(batch)
        except Exception as exc:  # noqa: BLE001 -- a broken sink must not kill the tap thread
            self.stats.sink_errors += 1
            self.last_sink_error = exc

    # ----------------------------------------------------------------- lifecycle
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued chunk reached the sink. Returns False on timeout."""
        done = threading.Event()

        def waiter():
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Remove the hooks, deliver what is queued, stop the thread. Idempotent."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CollectingSink:
    """In-process sink that keeps every batch in memory (bounded), for tests and one-shot commands."""

    def __init__(self, max_batches: int = 100_000) -> None:
        self.batches: list[ActivationBatch] = []
        self.max_batches = max_batches
        self.dropped = 0
        self._lock = threading.Lock()

    def __call__(self, batch: ActivationBatch) -> None:
        with self._lock:
            if len(self.batches) >= self.max_batches:
                self.dropped += 1
                return
            self.batches.append(batch)

    def tokens_by_request(self) -> dict[str, ActivationBatch]:
        """All tokens of each request joined in arrival order: request id -> single-request batch."""
        parts: dict[str, list[ActivationBatch]] = {}
        with self._lock:
            batches = list(self.batches)
        for batch in batches:
            for rid, rows, final in batch.request_slices():
                parts.setdefault(rid, []).append(_select(batch, rid, rows, final))
        return {rid: ActivationBatch.concat(p) for rid, p in parts.items()}


def _select(batch: ActivationBatch, rid: str, rows: slice, final: bool) -> ActivationBatch:
    n = rows.stop - rows.start
    return ActivationBatch(
        activations=batch.activations[rows], token_ids=batch.token_ids[rows], positions=batch.positions[rows],
        roles=batch.roles[rows], offsets=torch.tensor([0, n], dtype=torch.int64), request_ids=[rid],
        final=[final], model=batch.model, hook=batch.hook, sae_sha256=batch.sae_sha256,
    )
