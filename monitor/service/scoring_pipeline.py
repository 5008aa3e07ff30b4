"""``ScoringPipeline``: from accepted activation batches to alerts, on one worker thread.

    submit(batch) ──▶ TokenQueue (bounded: batches and tokens) ──▶ worker thread, per step:
        take queued batches (up to ``coalesce_tokens``, no request twice in one step)
        ─▶ per-request state: a slot in the RequestTable of the request's detector generation
        ─▶ FrozenSAE.encode_latents(x, only the bank's latents)   (attention-sink rows, position 0, skipped)
           (a latent batch, whose tap already encoded, gives its columns of the bank's latents instead)
        ─▶ RequestTable.update / scores   (running max/mean per request, role span and latent)
        ─▶ a detector whose score reaches its threshold for the first time on a request ─▶ Alert
           (severity from spec.severity) ─▶ AlertEmitter (outbox commit on its own thread)
        ─▶ requests with the final flag are finalised (final scores go to the dashboard histogram)

Per-request state is bounded: at most ``limits.max_active_requests`` requests are held; the least
recently seen one is finalised early ("evicted") to make room, and a request idle for
``limits.idle_timeout_s`` is finalised ("idle"). A detector reload starts a new *generation*; requests
already in flight finish on the detectors they started with, so "alert once per request and detector"
holds across reloads. At most two old generations are kept; older ones are finalised ("reload").

``submit`` never blocks: a full queue raises ``QueueFullError`` (the API answers 429).
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import torch

from alerts.schema import Alert, LatentActivation, Severity, TokenSpan
from detectors.scoring import DetectorBank
from detectors.spans import ROLE_NAMES, span_roles
from detectors.spec import DetectorSpec
from monitor.sae import FrozenSAE
from monitor.service.alert_emitter import AlertEmitter, PendingAlert
from monitor.service.prometheus import SidecarMetrics
from monitor.service.refusals import (
    BatchMismatchError,
    LatentMismatchError,
    NotAcceptingError,
    QueueFullError,
    UnknownRequestError,
)
from monitor.service.request_table import RequestTable
from monitor.service.token_queue import QueueFull, TokenQueue
from monitor.wire import ActivationBatch

log = logging.getLogger(__name__)

MAX_OLD_GENERATIONS = 2




# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class DetectorGeneration:
    """One loaded set of detectors; a reload makes a new generation."""

    number: int
    """1 for the set loaded at start-up, +1 per reload."""
    specs: tuple[DetectorSpec, ...]
    bank: DetectorBank
    latents: tuple[int, ...]
    """Union of the detectors' latent ids (what the SAE computes per token)."""
    table: RequestTable = field(repr=False)
    """Per-request aggregates of requests scored with this generation (owned by the worker)."""
    loaded_at: float
    """Unix seconds."""
    source: str
    """Where the specs came from (a directory, or a description)."""


@dataclass
class ScoreResult:
    """What ``submit(..., on_done=...)`` reports once its batch has been scored."""

    scores: dict[str, dict[str, float | None]]
    """Request id -> detector name -> score (None: the detector's span had no tokens). Filled for the
    batch's requests that carried the final flag."""
    alerts: list[Alert]
    """Alerts raised on the batch's requests while scoring it."""


@dataclass(frozen=True)
class FinishedRequests:
    """Requests just finalised, as ``on_finished`` sees them (on the worker thread, before their slots are
    released, so ``generation.table`` still holds their aggregates)."""

    generation: DetectorGeneration
    request_ids: list[str]
    slots: list[int]
    """Their rows in ``generation.table``."""
    scores: torch.Tensor
    """``[m, n_detectors]`` final scores; NaN where the detector's span had no tokens."""
    alerted: torch.Tensor
    """``[m, n_detectors]`` bool: the detector alerted on the request."""
    reason: str
    """``final``, ``idle``, ``evicted``, ``reload`` or ``shutdown``."""


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot for health endpoints."""

    queue_batches: int
    queue_tokens: int
    queue_max_tokens: int
    active_requests: int
    generations: int
    """Detector generations holding requests (the current one included)."""
    worker_alive: bool
    accepting: bool


@dataclass
class _Request:
    gen: DetectorGeneration
    slot: int
    """Its row in ``gen.table`` (which also keeps when it was last seen)."""


@dataclass
class _Item:
    batch: ActivationBatch
    received_at: float
    on_done: Callable[[ScoreResult], None] | None
    kind: tuple[int, ...] | None = None
    """None for activations; the latent ids of a latent batch (a worker step holds one kind)."""


# --------------------------------------------------------------------------- pipeline
class ScoringPipeline:
    """Bounded queue, one scoring worker, bounded per-request state. ``submit`` is thread-safe."""

    def __init__(
        self,
        sae: FrozenSAE,
        specs: Sequence[DetectorSpec],
        *,
        model_id: str,
        hook: str,
        emitter: AlertEmitter,
        metrics: SidecarMetrics,
        max_queue_batches: int = 1024,
        max_queue_tokens: int = 32_768,
        coalesce_tokens: int = 4096,
        max_active_requests: int = 4096,
        remember_request_ids: int = 65_536,
        idle_timeout_s: float = 60.0,
        top_latents: int = 8,
        instance: str = "",
        source: str = "",
        on_finished: Callable[[FinishedRequests], None] | None = None,
        track_turns: bool = False,
    ) -> None:
        self.sae = sae
        self.on_finished = on_finished
        self.track_turns = track_turns
        """Request tables count each request's role runs (``RequestTable.turns``; the traffic samples need them)."""
        """Called once per group of finalised requests (drift watch, traffic samples); must be quick, and an
        exception in it is logged, never lost scoring."""
        self.model_id = model_id
        self.hook = hook
        self.emitter = emitter
        self.metrics = metrics
        self.coalesce_tokens = coalesce_tokens
        self.max_active_requests = max_active_requests
        self.remember_request_ids = remember_request_ids
        self.idle_timeout_s = idle_timeout_s
        self.top_latents = top_latents
        self.instance = instance
        self._queue: TokenQueue[_Item] = TokenQueue(max_queue_batches, max_queue_tokens)
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}  # ingest side: request id -> number of the batch it was last seen in
        self._batches_seen = 0
        self._requests: dict[str, _Request] = {}  # worker side
        self._owners: dict[tuple[int, int], str] = {}  # (generation number, slot) -> request id
        self._generation_counter = 0
        self._current = self._make_generation(specs, source)
        self._live: list[DetectorGeneration] = [self._current]
        self._accepting = False
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scoring-worker", daemon=True)
        self.worker_errors = 0
        self.last_worker_error: str | None = None
        metrics.detectors_loaded.set(len(self._current.specs))
        metrics.monitored_latents.set(len(self._current.latents))

    # ------------------------------------------------------------------ detectors
    def _make_generation(self, specs: Sequence[DetectorSpec], source: str) -> DetectorGeneration:
        bank = DetectorBank(list(specs))
        if bank.latents and max(bank.latents) >= self.sae.cfg.d_sae:
            raise ValueError(f"detectors use latent {max(bank.latents)} but the SAE has {self.sae.cfg.d_sae}")
        self._generation_counter += 1
        return DetectorGeneration(
            number=self._generation_counter, specs=tuple(specs), bank=bank, latents=tuple(bank.latents),
            table=RequestTable(bank, self.max_active_requests, track_turns=self.track_turns), loaded_at=time.time(), source=source,
        )

    @property
    def generation(self) -> DetectorGeneration:
        """The detectors new requests are scored with."""
        return self._current

    def set_detectors(self, specs: Sequence[DetectorSpec], source: str = "") -> DetectorGeneration:
        """Atomically switch new requests to ``specs`` (already validated against the SAE)."""
        with self._lock:
            gen = self._make_generation(specs, source)
            self._current = gen
        self.metrics.detectors_loaded.set(len(gen.specs))
        self.metrics.monitored_latents.set(len(gen.latents))
        return gen

    # ------------------------------------------------------------------ ingest side
    def check_batch(self, batch: ActivationBatch) -> None:
        """Refuse a batch made for another model, hook, SAE or width (``BatchMismatchError``), and a latent
        batch whose latents do not include every latent the current detectors read (``LatentMismatchError``)."""
        problems = []
        if batch.model != self.model_id:
            problems.append(f"model {batch.model!r} (this sidecar monitors {self.model_id!r})")
        if batch.hook != self.hook:
            problems.append(f"hook {batch.hook!r} (this sidecar reads {self.hook!r})")
        if batch.sae_sha256 and batch.sae_sha256.lower() != self.sae.sha256:
            problems.append(f"sae_sha256 {batch.sae_sha256[:16]}... (the loaded SAE is {self.sae.sha256[:16]}...)")
        if batch.latent_ids is None and batch.d_in != self.sae.cfg.d_in and batch.n_tokens:
            problems.append(f"d_in {batch.d_in} (the SAE reads d_in={self.sae.cfg.d_in})")
        if problems:
            what = "latent" if batch.latent_ids is not None else "activation"
            raise BatchMismatchError(f"{what} batch does not match this sidecar: " + "; ".join(problems))
        if batch.latent_ids is not None:
            missing = set(self._current.latents).difference(batch.latent_ids.tolist())
            if missing:
                raise LatentMismatchError(sorted(missing), len(self._current.latents))

    def submit(self, batch: ActivationBatch, received_at: float | None = None,
               on_done: Callable[[ScoreResult], None] | None = None) -> int:
        """Queue a validated batch for scoring; returns its token count. Never blocks.

        Raises ``BatchMismatchError``, ``UnknownRequestError``, ``QueueFullError`` or ``NotAcceptingError``;
        then nothing of the batch was accepted. ``on_done`` is called on the worker thread after scoring.
        """
        if not self._accepting:
            raise NotAcceptingError("the sidecar is shutting down and accepts no more activations")
        self.check_batch(batch)
        counts = (batch.offsets[1:] - batch.offsets[:-1]).tolist()
        item = _Item(batch, time.perf_counter() if received_at is None else received_at, on_done, batch.kind_key())
        with self._lock:
            unknown = [rid for rid, n, fin in zip(batch.request_ids, counts, batch.final)
                       if fin and n == 0 and rid not in self._seen]
            if unknown:
                raise UnknownRequestError(unknown)
            try:
                self._queue.put_nowait(item, batch.n_tokens)
            except QueueFull:
                raise QueueFullError(
                    f"the scoring queue is full ({len(self._queue)} batches, {self._queue.tokens} tokens); "
                    "retry after the Retry-After delay"
                ) from None
            self._batches_seen += 1
            seen = self._seen
            seen.update(zip(batch.request_ids, repeat(self._batches_seen)))
            if len(seen) > 2 * self.remember_request_ids:  # amortised trim to the most recently seen
                keep = heapq.nlargest(self.remember_request_ids, seen.items(), key=lambda kv: kv[1])
                self._seen = dict(keep)
        return batch.n_tokens

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ScoringPipeline:
        self._accepting = True
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def stop(self, drain_s: float = 5.0) -> None:
        """Stop accepting, score what is queued for up to ``drain_s`` seconds, finalise every request."""
        self._accepting = False
        deadline = time.monotonic() + drain_s
        while len(self._queue) and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        self._stop.set()
        self._thread.join(max(1.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(5.0)

    @property
    def queue_tokens(self) -> int:
        """Tokens waiting to be scored."""
        return self._queue.tokens

    def stats(self) -> PipelineStats:
        return PipelineStats(
            queue_batches=len(self._queue), queue_tokens=self._queue.tokens, queue_max_tokens=self._queue.max_tokens,
            active_requests=len(self._requests), generations=len(self._live),
            worker_alive=self._thread.is_alive(), accepting=self._accepting,
        )

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        next_sweep = time.monotonic() + 1.0
        while not self._stop.is_set():
            items = self._queue.get_many(self.coalesce_tokens, timeout=0.2,
                                         accept=_one_chunk_per_request(self.max_active_requests))
            try:
                if items:
                    self._step(items)
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + min(1.0, self.idle_timeout_s / 4)
            except Exception as exc:
                self.worker_errors += 1
                self.last_worker_error = f"{type(exc).__name__}: {exc}"
                log.exception("scoring step failed; its batches are lost")
        try:
            self._finish_and_alert(list(self._requests.items()), "shutdown")
        except Exception:
            log.exception("finalising requests at shutdown failed")

    def _step(self, items: list[_Item]) -> None:
        t_start = time.perf_counter()
        now = time.monotonic()
        self._retire_generations()
        gen_now = self._current
        if not self._live or gen_now is not self._live[-1]:  # empty: a sweep retired the old set after a reload
            self._live.append(gen_now)
        # One entry per (batch, request) chunk, in row order; a step never holds a request twice.
        ids: list[str] = []
        counts: list[int] = []
        finals: list[bool] = []
        for item in items:
            b = item.batch
            ids += b.request_ids
            counts += (b.offsets[1:] - b.offsets[:-1]).tolist()
            finals += b.final
        requests = self._requests
        states = [requests.get(rid) for rid in ids]
        new = [i for i, (st, n) in enumerate(zip(states, counts)) if st is None and n]
        if new:
            self._make_room(len(new), now)
            for i in new:
                states[i] = self._open(ids[i], gen_now, now)
        lens = torch.cat([it.batch.offsets.diff() for it in items]) if len(items) > 1 else items[0].batch.offsets.diff()
        alerts = self._score(items, states, lens, now) if any(counts) else []
        closing = [(rid, st) for rid, st, fin in zip(ids, states, finals) if fin and st is not None]
        unknown = sum(1 for st, fin in zip(states, finals) if fin and st is None)
        if unknown:
            self.metrics.unknown_finals.inc(unknown)  # finalised already (idle, evicted, repeated final)
        final_scores, late = self._finish(closing, "final") if closing else ({}, [])
        alerts += late
        if alerts:
            self.emitter.submit(alerts, stop=self._abort)
        done = time.perf_counter()
        for item in items:
            self.metrics.ingest_to_scored.observe(done - item.received_at)
            if item.on_done is not None:
                mine = set(item.batch.request_ids)
                item.on_done(ScoreResult(
                    scores={r: v for r, v in final_scores.items() if r in mine},
                    alerts=[p.alert for p in alerts if p.alert.request_id in mine],
                ))
        self.metrics.step_seconds.observe(done - t_start)

    def _score(self, items: list[_Item], states: list[_Request | None], lens: torch.Tensor, now: float
               ) -> list[PendingAlert]:
        """Encode and aggregate the rows of ``items``. ``states``: the request of each chunk, in row order
        (None only for chunks without rows); ``lens [n_chunks]``: rows per chunk. Returns the alerts of
        thresholds crossed in this step."""
        kind = items[0].kind  # one kind per step (_one_chunk_per_request)
        if len(items) == 1:
            b = items[0].batch
            x, positions, roles = b.activations, b.positions, b.roles
        else:
            x = torch.cat([it.batch.activations for it in items if it.batch.n_tokens])
            positions = torch.cat([it.batch.positions for it in items])
            roles = torch.cat([it.batch.roles for it in items])
        slots = torch.tensor([st.slot if st is not None else 0 for st in states])
        row_slots = torch.repeat_interleave(slots, lens)
        keep = positions != 0  # the attention sink: a huge-norm row that means nothing
        gens = {id(st.gen): st.gen for st in states if st is not None}
        has_rows = lens > 0
        alerts: list[PendingAlert] = []
        for g in gens.values():
            if len(gens) == 1:
                sel = keep
                g.table.touch(slots[has_rows], now)
            else:
                chunk_gen = torch.tensor([st.gen.number if st is not None else -1 for st in states])
                sel = keep & (torch.repeat_interleave(chunk_gen, lens) == g.number)
                g.table.touch(slots[has_rows & (chunk_gen == g.number)], now)
            if bool(sel.all()):
                gx, gslots, groles, gpos = x, row_slots, roles, positions
            else:
                idx = sel.nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                gx, gslots, groles, gpos = x.index_select(0, idx), row_slots[idx], roles[idx], positions[idx]
            self.metrics.tokens_scored.inc(int(gslots.shape[0]))
            if not g.latents:
                continue
            if kind is None:
                t0 = time.perf_counter()
                z = self.sae.encode_latents(gx, g.latents)
                self.metrics.encode_seconds.observe(time.perf_counter() - t0)
            else:
                cols = _latent_columns(kind, g.latents)
                if cols is None:
                    # Only after a reload and a tap reconfigured mid-request: this older generation reads
                    # latents the batch lacks (ingest checks the current one). Its rows cannot be scored.
                    self.metrics.drop("mismatch", int(gslots.shape[0]))
                    log.warning("latent batch lacks latents of detector generation %d; %d tokens not scored",
                                g.number, int(gslots.shape[0]))
                    continue
                z = gx.index_select(1, cols).float()
            g.table.update(gslots, z, groles, gpos)
            touched = torch.unique(gslots)
            scores = g.table.scores(touched)
            crossed = ((scores >= g.table.thresholds) & ~g.table.alerted.index_select(0, touched)
                       & g.table.alert_while_streaming)
            if bool(crossed.any()):
                alerts.extend(self._alerts(g, touched, scores, crossed, items))
        return alerts

    def _alerts(self, g: DetectorGeneration, touched: torch.Tensor, scores: torch.Tensor, crossed: torch.Tensor,
                items: list[_Item]) -> list[PendingAlert]:
        out = []
        for i, d in crossed.nonzero().tolist():
            slot = int(touched[i])
            rid = self._owners[(g.number, slot)]
            received_at = next(it.received_at for it in items if rid in it.batch.request_ids)
            g.table.alerted[slot, d] = True
            try:
                alert = self._build_alert(g, slot, d, float(scores[i, d]), rid)
            except Exception:
                log.exception("could not build the alert of detector %s on request %s", g.specs[d].name, rid)
                continue
            out.append(PendingAlert(alert, received_at))
        return out

    def _build_alert(self, g: DetectorGeneration, slot: int, d: int, score: float, rid: str) -> Alert:
        spec = g.specs[d]
        feats = g.table.features(slot, d)
        weights = torch.tensor(spec.weights)
        order = torch.argsort(feats * weights, descending=True).tolist()
        top = [
            LatentActivation(latent=spec.latents[j], activation=float(feats[j]), weight=spec.weights[j],
                             label=spec.latent_labels.get(spec.latents[j]))
            for j in order[: self.top_latents] if float(feats[j]) > 0
        ]
        start, end = g.table.span(slot, d) or (0, 1)
        # The token of the span that added most to the score over the whole request so far (also when a
        # mean or window detector alerts at the end of the request, after its last chunk).
        found = g.table.peak(slot, d)
        peak, role = (found[0], ROLE_NAMES[found[1]]) if found else (None, None)
        scored_roles = span_roles(spec.span, g.table.has_response(slot))
        if len(scored_roles) == 1:
            role = ROLE_NAMES[scored_roles[0]]
        return Alert(
            model=self.model_id, sae_sha256=self.sae.sha256, detector=spec.name, detector_version=spec.version,
            score=score, threshold=spec.threshold, severity=Severity.parse(spec.severity(score) or "low"),
            request_id=rid, token_span=TokenSpan(start=start, end=end, peak=peak, role=role), top_latents=top,
            instance=self.instance,
        )

    def _make_room(self, needed: int, now: float) -> None:
        """Finalise the least recently seen requests ("evicted") so ``needed`` new ones fit. Requests of the
        current step were touched at ``now`` or are new, so they are never chosen."""
        excess = len(self._requests) + needed - self.max_active_requests
        if excess <= 0:
            return
        candidates = [(seen, slot, g) for g in self._live for seen, slot in g.table.least_recent(excess, now)]
        candidates.sort(key=lambda c: c[0])
        victims = []
        for _, slot, g in candidates[:excess]:
            rid = self._owners[(g.number, slot)]
            victims.append((rid, self._requests[rid]))
        self._finish_and_alert(victims, "evicted")

    def _open(self, rid: str, gen: DetectorGeneration, now: float) -> _Request:
        st = _Request(gen, gen.table.allocate(now))
        self._requests[rid] = st
        self._owners[(gen.number, st.slot)] = rid
        self.metrics.requests_started.inc()
        return st

    def _finish(self, entries: list[tuple[str, _Request]], reason: str
                ) -> tuple[dict[str, dict[str, float | None]], list[PendingAlert]]:
        """Finalise requests: alerts of detectors judged on the finished request (mean aggregation), final
        scores to the dashboard, slots freed. Returns the final scores and those alerts (not yet submitted)."""
        out: dict[str, dict[str, float | None]] = {}
        late: list[PendingAlert] = []
        by_gen: dict[int, list[tuple[str, _Request]]] = {}
        for rid, st in entries:
            if self._requests.get(rid) is st:
                del self._requests[rid]
                by_gen.setdefault(id(st.gen), []).append((rid, st))
        for group in by_gen.values():
            g = group[0][1].gen
            slots = [st.slot for _, st in group]
            scores = g.table.scores(torch.tensor(slots, dtype=torch.long))
            for d, spec in enumerate(g.specs):
                col = scores[:, d]
                self.emitter.observe_scores(spec.name, col[~col.isnan()].tolist(), spec.threshold)
            slot_t = torch.tensor(slots, dtype=torch.long)
            crossed = ((scores >= g.table.thresholds) & ~g.table.alerted.index_select(0, slot_t)
                       & ~g.table.alert_while_streaming)
            for i, d in crossed.nonzero().tolist():
                rid, st = group[i]
                g.table.alerted[st.slot, d] = True
                try:
                    alert = self._build_alert(g, st.slot, d, float(scores[i, d]), rid)
                except Exception:
                    log.exception("could not build the alert of detector %s on request %s", g.specs[d].name, rid)
                    continue
                late.append(PendingAlert(alert, time.perf_counter()))
            if self.on_finished is not None:
                try:
                    self.on_finished(FinishedRequests(g, [rid for rid, _ in group], slots, scores,
                                                      g.table.alerted.index_select(0, slot_t), reason))
                except Exception:
                    log.exception("the finished-requests hook failed")
            names = [s.name for s in g.specs]
            for (rid, _), row in zip(group, scores.tolist()):
                out[rid] = {n: (None if math.isnan(v) else v) for n, v in zip(names, row)}
            g.table.release_many(slots)
            for slot in slots:
                del self._owners[(g.number, slot)]
        if out:
            self.metrics.requests_finished.labels(reason).inc(len(out))
        return out, late

    def _finish_and_alert(self, entries: list[tuple[str, _Request]], reason: str) -> None:
        """``_finish`` for requests that end without a final chunk (idle, evicted, reload, shutdown)."""
        _, late = self._finish(entries, reason)
        if late:
            self.emitter.submit(late, stop=self._abort)

    def _sweep(self, now: float) -> None:
        cutoff = now - self.idle_timeout_s
        idle = []
        for g in self._live:
            for slot in g.table.idle_slots(cutoff):
                rid = self._owners[(g.number, slot)]
                idle.append((rid, self._requests[rid]))
        if idle:
            self._finish_and_alert(idle, "idle")
        self._retire_generations()

    def _retire_generations(self) -> None:
        current = self._current
        self._live = [g for g in self._live if g is current or g.table.active > 0]
        old = [g for g in self._live if g is not current]
        while len(old) > MAX_OLD_GENERATIONS:
            oldest = old.pop(0)
            self._finish_and_alert([(r, st) for r, st in self._requests.items() if st.gen is oldest], "reload")
            self._live.remove(oldest)


def _one_chunk_per_request(max_requests: int) -> Callable[[_Item], bool]:
    """Queue filter for one worker step: a request's chunks are scored one batch at a time, so a
    threshold is checked after every batch exactly as if each were processed alone; and a step holds
    at most ``max_requests`` requests, so making room never evicts a request of the same step."""
    seen: set[str] = set()
    kinds: list[tuple[int, ...] | None] = []

    def accept(item: _Item) -> bool:
        ids = item.batch.request_ids
        if seen and (len(seen) + len(ids) > max_requests or not seen.isdisjoint(ids) or item.kind != kinds[0]):
            return False  # ... and one kind per step: activations, or latents with the same ids
        seen.update(ids)
        kinds.append(item.kind)
        return True

    return accept


@functools.lru_cache(maxsize=64)
def _latent_columns(batch_latents: tuple[int, ...], needed: tuple[int, ...]) -> torch.Tensor | None:
    """Columns of a latent batch holding ``needed`` (in that order), or None if one is missing."""
    where = {lat: j for j, lat in enumerate(batch_latents)}
    if not where.keys() >= set(needed):
        return None
    return torch.tensor([where[lat] for lat in needed], dtype=torch.long)
