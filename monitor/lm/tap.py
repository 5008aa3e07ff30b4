"""``ActivationTap``: a forward hook that ships one layer's residual stream, or its SAE latents, off a running model.

The hook sits on ``model.model.layers[L]`` (SAELens ``blocks.L.hook_resid_post``). On every forward
call, prefill and each decode step of ``generate()``, it takes the rows of tracked requests and queues
them; a background thread turns queue items into ``ActivationBatch`` records and hands them to the sink.
When the queue is full the hook drops the chunk and counts it: the model is never blocked by the monitor.

What the hook does, and why (measured on an H200, Llama-3-8B shape: a hook that read anything back to
the host cost 13-27 % of the forward; the same copy issued on a side stream 3 %):

* It never synchronises with the device. Which rows to copy is decided from what the host already
  knows: the prefill ``attention_mask`` given to ``track()`` (uploaded once, then rows are selected on the
  model's device) or, without one, all rows. Everything that needs token ids (which rows follow an
  end-of-sequence, positions, dropping padding the host could not know about) is done by the delivery
  thread once the copy has landed.
* On CUDA the device-to-host copy goes into pinned host buffers on a side stream that first waits for the
  model's stream; an event recorded after the copy is what the delivery thread waits on. On the CPU the
  same path runs without streams or events.
* With an ``encoder`` (the SAE's monitored slice, e.g. ``FrozenSAE.load(path, latents=S, device=...)``)
  the hook computes the monitored latents on the model's device and ships ``[n_tokens, |S|]`` latent
  batches: 64 latents instead of 4,096 activations per token at Llama-3-8B width. The rows are first
  rounded to the raw wire dtype (``dtype``), so the latents are exactly what a sidecar would compute from
  the activation batch on the same device and dtype. ``raw_share`` ships the activations of that share of
  requests (chosen by a hash of the request id, so a request is always one kind) instead, for
  calibration and drift work.

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
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, Self

import torch

from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from monitor.defaults import DEFAULT_MODULE_PATH, hook_name
from monitor.wire import ActivationBatch

Sink = Callable[[ActivationBatch], None]

RAW, LATENT = "activations", "latents"


class LatentEncoder(Protocol):
    """What the tap needs of an SAE to encode at the tap (``monitor.sae.FrozenSAE`` is one)."""

    sha256: str

    def encode_latents(self, x: torch.Tensor, latents: Sequence[int]) -> torch.Tensor:
        """``x [n, d_in]`` -> ``[n, len(latents)]``, on ``x``'s device."""
        ...


def layer_device(model: torch.nn.Module, module: torch.nn.Module) -> torch.device:
    """Where ``module`` (a layer of ``model``) runs: with a model split over devices, not necessarily the
    device of the model's first parameter; the model's when the module has none, else the CPU."""
    first = next(module.parameters(), None)
    first = first if first is not None else next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


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


def raw_share_pick(request_id: str, share: float) -> bool:
    """Whether ``request_id`` is in the ``share`` of requests shipped raw: a hash, so the same every time."""
    return share > 0 and zlib.crc32(request_id.encode()) < share * 2**32


@dataclass
class TapStats:
    """Counters of what the tap saw and what it dropped (token counts are updated by the delivery thread)."""

    tokens_seen: int = 0
    """Real tokens of tracked requests that passed the hook."""
    chunks_queued: int = 0
    """Forward calls whose rows were queued."""
    chunks_dropped: int = 0
    """Forward calls whose rows were dropped because the queue was full."""
    tokens_dropped: int = 0
    """Tokens in the dropped chunks."""
    untracked_calls: int = 0
    """Forward calls outside any ``track()`` context (ignored)."""
    sink_errors: int = 0
    """Batches whose sink raised (the error is kept in ``last_sink_error``)."""
    delivery_errors: int = 0
    """Chunks the delivery thread failed to turn into batches (a bug; the error is in ``last_sink_error``)."""
    latent_tokens: int = 0
    """Tokens shipped as latents."""
    raw_tokens: int = 0
    """Tokens shipped as activations."""


@dataclass
class _Group:
    """The requests (batch rows) of a ``track()`` block shipped as one kind."""

    kind: str
    rows: list[int]
    """Batch rows, ascending."""
    row_index: torch.Tensor
    """``rows`` as an int64 tensor on the host."""
    device_index: dict[tuple[int, bool], torch.Tensor] = field(default_factory=dict)
    """Flat row indices on the model's device, per (sequence length, prefill), built once."""


@dataclass
class _Tracking:
    request_ids: list[str]
    groups: list[_Group]
    prefill_mask: torch.Tensor | None  # [B, T] bool, host
    prefill_roles: torch.Tensor | None  # [B, T] uint8, host
    eos_ids: torch.Tensor
    calls: int = 0  # forward calls seen (model thread)
    # Owned by the delivery thread:
    lengths: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    finished: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))


@dataclass
class _Chunk:
    """One forward call as queued: host tensors (on CUDA possibly still being copied until ``ready``)."""

    tracking: _Tracking
    prefill: bool
    shape: tuple[int, int]  # (B, t)
    input_ids: torch.Tensor | None  # [B, t]
    step_mask: torch.Tensor | None  # [B, t], only when the host did not know the prefill mask
    rows: dict[str, torch.Tensor | None]  # kind -> [n_rows, width] payload for the group's rows (None: dropped)
    host_mask: bool  # the rows of each group were selected by tracking.prefill_mask
    ready: torch.cuda.Event | None = None
    reserved: bool = False  # holds one of the max_queue payload slots
    final: bool = False


class _DeviceToHost:
    """Copies of device tensors into host memory that never make the model's stream wait."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None

    def copy(self, tensors: list[torch.Tensor | None]) -> tuple[list[torch.Tensor | None], torch.cuda.Event | None]:
        """Host copies of ``tensors`` and the event that marks them complete (None: complete already)."""
        if not self.cuda:
            # CPU: the tensors are already host memory; copy what could alias the model's own buffers.
            return [t if t is None or t.device.type == "cpu" else t.to("cpu") for t in tensors], None
        stream = self.stream
        assert stream is not None
        stream.wait_stream(torch.cuda.current_stream(self.device))  # copy what the hook's kernels produce
        out: list[torch.Tensor | None] = []
        with torch.cuda.stream(stream):
            for t in tensors:
                if t is None:
                    out.append(None)
                    continue
                if not t.is_cuda:  # e.g. a mask the caller kept on the host
                    out.append(t.clone())
                    continue
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                t.record_stream(stream)  # the allocator must not hand t's memory out before the copy ran
                out.append(host)
            event = torch.cuda.Event()
            event.record(stream)
        return out, event


class ActivationTap:
    """Forward hook on one decoder layer that streams activations (or SAE latents) of tracked requests."""

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
        encoder: LatentEncoder | None = None,
        latents: Sequence[int] | None = None,
        latent_dtype: torch.dtype | None = None,
        raw_share: float = 0.0,
    ) -> None:
        """``model``: a HF ``*ForCausalLM``. ``layer``: decoder layer index. ``sink``: called from a
        background thread with each ``ActivationBatch``. ``dtype``: wire dtype of activations.
        ``max_queue``: forward calls buffered before the hook starts dropping.

        ``encoder`` and ``latents``: ship latent batches of these SAE latents (the detectors' union),
        computed on the model's device by ``encoder.encode_latents``; ``sae_sha256`` defaults to the
        encoder's. ``latent_dtype``: wire dtype of the latents (default: what the encoder returns, float32
        for a CPU ``FrozenSAE``; float16 halves the bytes but the scores then differ from the sidecar's own
        encode by the rounding). ``raw_share``: share of requests whose activations are shipped instead."""
        if (encoder is None) != (latents is None):
            raise ValueError("give encoder and latents together (the SAE slice and the latent ids it computes)")
        if not 0.0 <= raw_share <= 1.0:
            raise ValueError(f"raw_share must lie in [0, 1], got {raw_share}")
        if latents is not None and len(set(latents)) != len(latents):
            raise ValueError("latents must be distinct")
        self.model = model
        self.layer = layer
        self.sink = sink
        self.model_id = model_id or type(model).__name__
        self.hook = hook_name(layer)
        self.dtype = dtype
        self.encoder = encoder
        self.latents = tuple(int(i) for i in latents) if latents is not None else None
        self.latent_dtype = latent_dtype
        self.raw_share = raw_share if encoder is not None else 1.0
        self.sae_sha256 = sae_sha256 or (encoder.sha256 if encoder is not None else "")
        self.stats = TapStats()
        self.last_sink_error: BaseException | None = None
        self._module = resolve_module(model, module_path.format(layer=layer))
        self.device = layer_device(model, self._module)
        self._copier = _DeviceToHost(self.device)
        self._latent_ids = torch.tensor(self.latents or (), dtype=torch.int32)
        d_in = getattr(getattr(encoder, "cfg", None), "d_in", None)
        if encoder is not None and isinstance(d_in, int):
            # Build the encoder's per-latent-set tensors now (one host-to-device upload), not in the first
            # forward; and a misconfigured encoder fails here, with its own message.
            encoder.encode_latents(torch.zeros(2, d_in, device=self.device, dtype=dtype), self.latents)
        # Unbounded container, bounded by _enqueue for row payloads only: the bookkeeping of a dropped call
        # (a few bytes of token ids) and the end-of-request markers are always queued, so positions stay
        # right and a consumer never waits for a final flag that never comes.
        self.max_queue = max_queue
        self._queue: queue.Queue[_Chunk | None] = queue.Queue()
        self._payloads = 0  # chunks in the queue that still hold rows
        self._payload_lock = threading.Lock()
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
        ``attention_mask [B, T]``: the prefill mask (left or right padding); padding is dropped, and the
        real rows are selected on the model's device (without it, every row is copied and the forward's
        own mask applied on the host). ``roles [B, T]``: role of each prefill token (default
        ``ROLE_PROMPT``); tokens generated after the prefill are ``ROLE_RESPONSE``. On exit every request
        gets a final (empty) chunk. Yields the request ids.
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
        raw = [raw_share_pick(r, self.raw_share) for r in ids] if self.raw_share < 1.0 else [True] * len(ids)
        groups = []
        for kind, pick in ((RAW, True), (LATENT, False)):
            rows = [i for i, r in enumerate(raw) if r == pick]
            if rows:
                groups.append(_Group(kind, rows, torch.tensor(rows, dtype=torch.int64)))
        mask = None if attention_mask is None else attention_mask.detach().to("cpu", torch.bool)
        tracking = _Tracking(
            request_ids=ids, groups=groups, prefill_mask=mask,
            prefill_roles=None if roles is None else roles.detach().to("cpu", torch.uint8),
            eos_ids=torch.tensor(eos_list, dtype=torch.int64),
            lengths=torch.zeros(len(ids), dtype=torch.int64), finished=torch.zeros(len(ids), dtype=torch.bool),
        )
        # Upload the row indices of the prefill and of one-token decode steps now, outside the forward.
        for g in groups:
            g.device_index[(1, False)] = _flat_rows(g.row_index, 1).to(self.device, non_blocking=True)
            if mask is not None and mask.ndim == 2:
                t = mask.shape[1]
                full = _flat_rows(g.row_index, t)  # the group's rows of the [B * T] grid, row-major
                g.device_index[(t, True)] = full[mask[g.row_index].reshape(-1)].to(self.device, non_blocking=True)
        self._tracking = tracking
        try:
            yield ids
        finally:
            self._tracking = None
            self._step_inputs = (None, None)
            self._queue.put_nowait(_Chunk(tracking, False, (len(ids), 0), None, None, {}, False, final=True))
            self.stats.chunks_queued += 1

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
        b, t, d = hidden.shape
        if b != len(tr.request_ids):
            raise RuntimeError(f"track() named {len(tr.request_ids)} requests but the forward batch has {b} rows")
        prefill = tr.calls == 0
        tr.calls += 1
        host_mask = prefill and tr.prefill_mask is not None and tuple(tr.prefill_mask.shape) == (b, t)
        keep_rows = self._reserve()
        payloads: dict[str, torch.Tensor | None] = {}
        flat = hidden.reshape(b * t, d)
        for g in tr.groups:
            if not keep_rows:
                payloads[g.kind] = None
                continue
            x = flat.index_select(0, self._device_rows(g, t, host_mask))
            x = x.to(self.dtype)  # the raw wire dtype: latents are computed from exactly what would be shipped
            if g.kind == LATENT:
                assert self.encoder is not None and self.latents is not None
                x = self.encoder.encode_latents(x, self.latents)
                if self.latent_dtype is not None:
                    x = x.to(self.latent_dtype)
            payloads[g.kind] = x  # index_select copied: never a view of the model's own buffers
        ids = input_ids.detach() if input_ids is not None else None
        mask = step_mask[:, -t:].detach() if (prefill and not host_mask and step_mask is not None) else None
        if self._copier.stream is None:  # CPU: keep our own copies, the caller may reuse its tensors
            ids, mask = (v.clone() if v is not None else None for v in (ids, mask))
        kinds = list(payloads)
        copied, event = self._copier.copy([ids, mask, *(payloads[k] for k in kinds)])
        chunk = _Chunk(tr, prefill, (b, t), copied[0], copied[1], dict(zip(kinds, copied[2:])), host_mask, event,
                       reserved=keep_rows)
        if keep_rows:
            self.stats.chunks_queued += 1
        else:
            self.stats.chunks_dropped += 1
        self._queue.put_nowait(chunk)

    def _reserve(self) -> bool:
        """Take a payload slot in the queue, or False when ``max_queue`` chunks with rows are waiting."""
        with self._payload_lock:
            if self._payloads >= self.max_queue:
                return False
            self._payloads += 1
            return True

    def _device_rows(self, g: _Group, t: int, host_mask: bool) -> torch.Tensor:
        """Flat row indices of group ``g`` in a ``[B * t]`` forward, on the model's device (cached: no upload
        in the hook but the first decode step's)."""
        key = (t, host_mask)
        idx = g.device_index.get(key)
        if idx is None:
            idx = g.device_index[key] = _flat_rows(g.row_index, t).to(self.device, non_blocking=True)
        return idx

    # ----------------------------------------------------------------- delivery (tap thread)
    def _drain(self) -> None:
        while True:
            chunk = self._queue.get()
            try:
                if chunk is None:
                    return
                if chunk.reserved:  # out of the queue: its slot is free (as with a bounded queue)
                    with self._payload_lock:
                        self._payloads -= 1
                # Inference mode: track() may have made its tensors under it (no in-place updates otherwise).
                with torch.inference_mode():
                    self._deliver(chunk)
            except Exception as exc:  # noqa: BLE001 -- the thread must survive, or flush() would wait forever
                self.stats.delivery_errors += 1
                self.last_sink_error = exc
            finally:
                self._queue.task_done()

    def _deliver(self, chunk: _Chunk) -> None:
        tr = chunk.tracking
        if chunk.final:
            for g in tr.groups:
                self._emit(g, tr, [0] * len(g.rows), None, None, None, None, final=True)
            return
        if chunk.ready is not None:
            chunk.ready.synchronize()  # the copy has landed (this thread waits, never the model)
        b, t = chunk.shape
        ids = chunk.input_ids.to(torch.int64) if chunk.input_ids is not None else torch.zeros(b, t, dtype=torch.int64)
        if chunk.prefill:
            if chunk.host_mask:
                assert tr.prefill_mask is not None
                mask = tr.prefill_mask
            elif chunk.step_mask is not None:
                mask = chunk.step_mask.to(torch.bool)
            else:
                mask = torch.ones(b, t, dtype=torch.bool)
            roles = (tr.prefill_roles if tr.prefill_roles is not None and tuple(tr.prefill_roles.shape) == (b, t)
                     else torch.full((b, t), ROLE_PROMPT, dtype=torch.uint8))
        else:
            # Decode step: rows that already produced end-of-sequence only emit padding now.
            mask = ~tr.finished[:, None].expand(b, t)
            roles = torch.full((b, t), ROLE_RESPONSE, dtype=torch.uint8)
            if tr.eos_ids.numel():
                tr.finished |= torch.isin(ids[:, -1], tr.eos_ids)
        counts = mask.sum(dim=1)
        starts = tr.lengths.clone()
        tr.lengths += counts
        n = int(counts.sum())
        self.stats.tokens_seen += n
        positions = mask.cumsum(dim=1) - 1 + starts[:, None]  # running count of kept tokens
        for g in tr.groups:
            payload = chunk.rows.get(g.kind)
            gmask = mask[g.row_index]  # [rows, t]
            if payload is None:
                self.stats.tokens_dropped += int(gmask.sum())
                continue
            # The payload holds the group's rows in flat order: those of the prefill mask, or all t columns.
            x = payload if chunk.host_mask else payload[gmask.reshape(-1)]
            self._emit(g, tr, gmask.sum(dim=1).tolist(), x, ids[g.row_index][gmask], positions[g.row_index][gmask],
                       roles[g.row_index][gmask])

    def _emit(self, g: _Group, tr: _Tracking, counts: list[int], x: torch.Tensor | None, token_ids, positions,
              roles, *, final: bool = False) -> None:
        keep = [i for i, c in enumerate(counts) if c > 0 or final]
        if not keep:
            return
        offsets = [0, *itertools.accumulate(counts[i] for i in keep)]
        latent = g.kind == LATENT
        if x is None:
            width = len(self.latents or ()) if latent else int(getattr(getattr(self.model, "config", None),
                                                                       "hidden_size", 0))
            x = torch.empty(0, width, dtype=(self.latent_dtype or torch.float32) if latent else self.dtype)
            token_ids = positions = torch.empty(0, dtype=torch.int32)
            roles = torch.empty(0, dtype=torch.uint8)
        n = int(x.shape[0])
        if latent:
            self.stats.latent_tokens += n
        else:
            self.stats.raw_tokens += n
        batch = ActivationBatch(
            activations=x,
            token_ids=token_ids.to(torch.int32),
            positions=positions.to(torch.int32),
            roles=roles,
            offsets=torch.tensor(offsets, dtype=torch.int64),
            request_ids=[tr.request_ids[g.rows[i]] for i in keep],
            final=[final] * len(keep),
            model=self.model_id,
            hook=self.hook,
            sae_sha256=self.sae_sha256,
            latent_ids=self._latent_ids if latent else None,
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


def _flat_rows(rows: torch.Tensor, t: int) -> torch.Tensor:
    """Indices of batch rows ``rows`` (each with ``t`` positions) in the flattened ``[B * t]`` grid."""
    return (rows[:, None] * t + torch.arange(t)).reshape(-1)


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
        final=[final], model=batch.model, hook=batch.hook, sae_sha256=batch.sae_sha256, latent_ids=batch.latent_ids,
    )
