"""``HttpActivationSink``: the remote end of an ``ActivationTap``: ships batches to a sidecar over HTTP.

    tap thread ──sink(batch)──▶ bounded queue ──▶ sender thread: coalesce ─▶ POST /v1/activations
                 (never blocks;                   (by size: ``batch_tokens``, or time: ``linger_ms``
                  full: drop + count)              after the first queued chunk; keep-alive client)

Coalescing joins the chunks of many requests (prefills and one-token decode steps) into one wire
batch, each request once with its rows in order; activation and latent chunks (an encoding tap that
ships a share of requests raw) are coalesced into one batch of each kind. A failed POST (connection error, 429, 5xx) is
retried briefly (``retries``, honouring ``Retry-After`` up to ``max_retry_wait_s``), then dropped and
counted; while the sender waits, new chunks pile up in the queue and are dropped when it is full, so
the model is never slowed down by the monitor.

Final flags: the tap closes every tracked request with an empty final chunk. A final for a request
whose tokens were never shipped (all dropped) is not sent; if the sidecar still answers 404 for
unknown request ids (it restarted, say), those finals are removed and the rest is sent again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import httpx
import torch

from monitor.wire import ActivationBatch
from monitor.wire.merge import coalesce, split

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.safetensors"
_STOP = object()


@dataclass(frozen=True)
class HttpSinkConfig:
    """Where and how to ship activations."""

    url: str
    """Sidecar base URL, e.g. ``http://127.0.0.1:8000`` (``/v1/activations`` is appended)."""
    token: str | None = None
    """Ingest bearer token (``auth.ingest_token`` of the sidecar)."""
    batch_tokens: int = 512
    """Post once this many tokens are collected ..."""
    linger_ms: float = 5.0
    """... or this long after the first collected chunk arrived."""
    queue_batches: int = 1024
    """Tap chunks buffered; beyond this new chunks are dropped and counted."""
    max_post_tokens: int = 16_384
    """Largest batch posted (split above; keep at or below the sidecar's ``limits.max_tokens_per_batch``)."""
    timeout_s: float = 2.0
    """Timeout of one POST."""
    retries: int = 2
    """Extra attempts after a connection error, 429 or 5xx."""
    retry_backoff_s: float = 0.05
    """First wait between attempts (doubles)."""
    max_retry_wait_s: float = 0.5
    """Longest wait between attempts, even if the sidecar's ``Retry-After`` asks for more."""
    remember_requests: int = 100_000
    """Request ids remembered as shipped (to know which final flags to send)."""


@dataclass
class HttpSinkStats:
    """Counters of the sink (read them any time; updated by the sender thread)."""

    chunks_received: int = 0
    """Tap batches handed to the sink."""
    tokens_received: int = 0
    chunks_dropped: int = 0
    """Chunks dropped because the sink's queue was full."""
    tokens_dropped_queue_full: int = 0
    posts_ok: int = 0
    """Batches the sidecar accepted (202)."""
    tokens_sent: int = 0
    posts_failed: int = 0
    """Batches given up after retries (connection errors, 429, 5xx)."""
    posts_rejected: int = 0
    """Batches the sidecar refused with a 4xx other than 429 (not retried)."""
    tokens_dropped_failed: int = 0
    """Tokens of failed or rejected batches."""
    retries: int = 0
    finals_skipped: int = 0
    """Final flags not sent because none of the request's tokens were shipped."""
    last_error: str | None = None
    by_status: dict[int, int] = field(default_factory=dict)
    """Answers of the sidecar by HTTP status."""


class HttpActivationSink:
    """A ``Sink`` for ``ActivationTap`` that posts to a sidecar from a background thread."""

    def __init__(self, config: HttpSinkConfig, *, client: httpx.Client | None = None) -> None:
        self.config = config
        self.stats = HttpSinkStats()
        self._endpoint = config.url.rstrip("/") + "/v1/activations"
        headers = {"Content-Type": CONTENT_TYPE}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self._headers = headers
        self._client = client or httpx.Client(timeout=config.timeout_s,
                                              limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        self._queue: queue.Queue[object] = queue.Queue(maxsize=config.queue_batches)
        self._shipped: OrderedDict[str, None] = OrderedDict()
        self._thread = threading.Thread(target=self._run, name="http-activation-sink", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ tap side
    def __call__(self, batch: ActivationBatch) -> None:
        """Queue a tap batch; never blocks (drops and counts when the queue is full)."""
        self.stats.chunks_received += 1
        self.stats.tokens_received += batch.n_tokens
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.stats.chunks_dropped += 1
            self.stats.tokens_dropped_queue_full += batch.n_tokens

    def flush(self, timeout: float = 10.0) -> bool:
        """Post everything queued now, without waiting for the linger time, and wait until it has been
        posted (or given up). False on timeout."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Post what is queued (within ``timeout``), stop the thread, close the connection."""
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
        self._client.close()

    def __enter__(self) -> HttpActivationSink:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ sender thread
    def _run(self) -> None:
        pending: list[ActivationBatch] = []
        tokens = 0
        deadline = 0.0
        linger = self.config.linger_ms / 1000
        while True:
            if pending:
                wait = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    item = None
            else:
                item = self._queue.get()
            if item is _STOP:
                self._send(pending)
                return
            if isinstance(item, threading.Event):  # flush()
                self._send(pending)
                pending, tokens = [], 0
                item.set()
                continue
            if item is not None:
                if not pending:
                    deadline = time.monotonic() + linger
                pending.append(item)  # type: ignore[arg-type]
                tokens += item.n_tokens  # type: ignore[union-attr]
            if pending and (item is None or tokens >= self.config.batch_tokens or time.monotonic() >= deadline):
                self._send(pending)
                pending, tokens = [], 0

    def _send(self, chunks: list[ActivationBatch]) -> None:
        if not chunks:
            return
        by_kind: dict[tuple[int, ...] | None, list[ActivationBatch]] = {}
        for c in chunks:
            by_kind.setdefault(c.kind_key(), []).append(c)
        for group in by_kind.values():
            self._send_one_kind(group)

    def _send_one_kind(self, chunks: list[ActivationBatch]) -> None:
        try:
            batch = self._drop_unshipped_finals(coalesce(chunks))
        except Exception as exc:  # noqa: BLE001 - never let a bad chunk kill the sender
            self.stats.posts_rejected += 1
            self.stats.last_error = f"could not merge chunks: {exc}"
            return
        if batch is None:
            return
        for piece in split(batch, self.config.max_post_tokens):
            try:
                self._post(piece)
            except Exception as exc:  # noqa: BLE001
                self.stats.posts_failed += 1
                self.stats.tokens_dropped_failed += piece.n_tokens
                self.stats.last_error = f"{type(exc).__name__}: {exc}"

    def _drop_unshipped_finals(self, batch: ActivationBatch) -> ActivationBatch | None:
        counts = (batch.offsets[1:] - batch.offsets[:-1]).tolist()
        keep = []
        shipped = self._shipped
        for i, (rid, n) in enumerate(zip(batch.request_ids, counts)):
            if n:
                shipped[rid] = None
                shipped.move_to_end(rid)
                keep.append(i)
            elif batch.final[i] and rid in shipped:
                keep.append(i)
            elif batch.final[i]:
                self.stats.finals_skipped += 1
            if batch.final[i]:
                shipped.pop(rid, None)
        while len(shipped) > self.config.remember_requests:
            shipped.popitem(last=False)
        if not keep:
            return None
        if len(keep) == len(counts):
            return batch
        return _without_empty(batch, keep)

    def _post(self, batch: ActivationBatch) -> None:
        cfg = self.config
        wait = cfg.retry_backoff_s
        body = batch.to_bytes()
        for attempt in range(cfg.retries + 1):
            if attempt:
                self.stats.retries += 1
            try:
                r = self._client.post(self._endpoint, content=body, headers=self._headers)
            except httpx.HTTPError as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(wait)
                wait = min(wait * 2, cfg.max_retry_wait_s)
                continue
            self.stats.by_status[r.status_code] = self.stats.by_status.get(r.status_code, 0) + 1
            if r.status_code == 202:
                self.stats.posts_ok += 1
                self.stats.tokens_sent += batch.n_tokens
                return
            if r.status_code == 404 and _error_code(r) == "unknown_request":
                unknown = set(_json(r).get("request_ids") or [])
                keep = [i for i, rid in enumerate(batch.request_ids) if rid not in unknown]
                self.stats.finals_skipped += len(batch.request_ids) - len(keep)
                if not keep or len(keep) == len(batch.request_ids):
                    return
                batch = _without_empty(batch, keep)
                body = batch.to_bytes()
                continue
            if r.status_code == 429 or r.status_code >= 500:
                self.stats.last_error = f"HTTP {r.status_code}: {r.text[:200]}"
                time.sleep(min(_retry_after(r, wait), cfg.max_retry_wait_s))
                wait = min(wait * 2, cfg.max_retry_wait_s)
                continue
            self.stats.posts_rejected += 1
            self.stats.tokens_dropped_failed += batch.n_tokens
            self.stats.last_error = f"HTTP {r.status_code}: {r.text[:500]}"
            log.warning("sidecar refused an activation batch: %s", self.stats.last_error)
            return
        self.stats.posts_failed += 1
        self.stats.tokens_dropped_failed += batch.n_tokens


def _without_empty(batch: ActivationBatch, keep: list[int]) -> ActivationBatch:
    """``batch`` restricted to the requests at indices ``keep``; the others must have no rows."""
    counts = (batch.offsets[1:] - batch.offsets[:-1]).tolist()
    kept = set(keep)
    if any(counts[i] for i in range(len(counts)) if i not in kept):
        raise ValueError("only requests without rows can be removed")
    offsets = [0]
    for i in keep:
        offsets.append(offsets[-1] + counts[i])
    return ActivationBatch(
        activations=batch.activations, token_ids=batch.token_ids, positions=batch.positions, roles=batch.roles,
        offsets=torch.tensor(offsets, dtype=torch.int64),
        request_ids=[batch.request_ids[i] for i in keep], final=[batch.final[i] for i in keep], model=batch.model,
        hook=batch.hook, sae_sha256=batch.sae_sha256, latent_ids=batch.latent_ids,
    )


def _json(r: httpx.Response) -> dict:
    try:
        data = r.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_code(r: httpx.Response) -> str | None:
    return _json(r).get("error")


def _retry_after(r: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(r.headers.get("retry-after", default)))
    except ValueError:
        return default
