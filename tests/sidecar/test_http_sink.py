"""The remote tap sink: coalescing, splitting, retries, drops, final flags; and against a live sidecar."""

from __future__ import annotations

import json
import time

import httpx
import torch
from sidecar_testkit import INGEST, make_batch, wait_until

from monitor.lm.http_sink import HttpActivationSink, HttpSinkConfig
from monitor.wire import ActivationBatch
from monitor.wire.merge import coalesce, split


def tap_chunks() -> list[ActivationBatch]:
    """What a tap emits for two requests: a prefill, three decode steps, the closing finals."""
    chunks = [make_batch([("a", 5, False), ("b", 3, False)], seed=0)]
    for step in range(3):
        chunks.append(make_batch([("a", 1, False), ("b", 1, False)], start={"a": 5 + step, "b": 3 + step},
                                 seed=step + 1))
    chunks.append(make_batch([("a", 0, True), ("b", 0, True)]))
    return chunks


def rows_of(batch: ActivationBatch, rid: str) -> torch.Tensor:
    for r, rows, _ in batch.request_slices():
        if r == rid:
            return batch.activations[rows]
    raise KeyError(rid)


def test_coalesce_groups_rows_by_request_in_order():
    chunks = tap_chunks()
    merged = coalesce(chunks)
    merged.validate()
    assert merged.request_ids == ["a", "b"] and merged.final == [True, True]
    assert merged.n_tokens == 14
    for rid in ("a", "b"):
        want = torch.cat([rows_of(c, rid) for c in chunks])
        assert torch.equal(rows_of(merged, rid), want)
        pos = merged.positions[merged.request_slices()[["a", "b"].index(rid)][1]].tolist()
        assert pos == sorted(pos) and pos[0] == 0


def test_split_respects_the_limit_and_puts_final_on_the_last_piece():
    big = make_batch([("a", 7, True), ("b", 2, False), ("c", 0, True), ("d", 5, True)])
    pieces = split(big, 4)
    assert all(p.n_tokens <= 4 for p in pieces)
    for p in pieces:
        p.validate()
    for rid, fin in (("a", True), ("b", False), ("c", True), ("d", True)):
        parts = [(p, i) for p in pieces for i, r in enumerate(p.request_ids) if r == rid]
        assert [p.final[i] for p, i in parts] == [False] * (len(parts) - 1) + [fin]
        assert torch.equal(torch.cat([rows_of(p, rid) for p, _ in parts]), rows_of(big, rid))


class Recorder:
    """An httpx mock transport that answers with scripted statuses and records every batch."""

    def __init__(self, statuses=(), default=202, delay_s=0.0):
        self.statuses = list(statuses)
        self.default = default
        self.delay_s = delay_s
        self.batches: list[ActivationBatch] = []
        self.auth: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        time.sleep(self.delay_s)
        status = self.statuses.pop(0) if self.statuses else self.default
        batch = ActivationBatch.from_bytes(request.content)
        self.auth.append(request.headers.get("authorization", ""))
        if isinstance(status, tuple):  # (404, unknown ids)
            return httpx.Response(status[0], json={"error": "unknown_request", "detail": "x",
                                                   "request_ids": status[1]})
        if status == 202:
            self.batches.append(batch)
            return httpx.Response(202, json={"accepted_tokens": batch.n_tokens})
        return httpx.Response(status, json={"error": "e", "detail": "d"}, headers={"Retry-After": "0"})


def make_sink(recorder: Recorder, **kw) -> HttpActivationSink:
    cfg = HttpSinkConfig(url="http://sidecar", token=INGEST, retry_backoff_s=0.001, max_retry_wait_s=0.01, **kw)
    return HttpActivationSink(cfg, client=httpx.Client(transport=httpx.MockTransport(recorder)))


def test_chunks_are_coalesced_by_size_and_sent_with_the_token():
    rec = Recorder()
    with make_sink(rec, batch_tokens=8, linger_ms=10_000) as sink:
        for c in tap_chunks():
            sink(c)
        assert sink.flush(5)
    assert rec.auth[0] == f"Bearer {INGEST}"
    assert sum(b.n_tokens for b in rec.batches) == 14
    assert rec.batches[0].n_tokens >= 8 and len(rec.batches) <= 3
    assert all(len(set(b.request_ids)) == len(b.request_ids) for b in rec.batches)
    assert rec.batches[-1].final == [True, True]
    assert sink.stats.tokens_sent == 14 and sink.stats.posts_ok == len(rec.batches)


def test_a_lone_chunk_goes_out_after_the_linger_time():
    rec = Recorder()
    with make_sink(rec, batch_tokens=10_000, linger_ms=20) as sink:
        t0 = time.monotonic()
        sink(make_batch([("a", 3, False)]))
        wait_until(lambda: rec.batches, timeout_s=5)
        assert time.monotonic() - t0 < 1.0


def test_failed_posts_are_retried_briefly_then_dropped_and_counted():
    rec = Recorder(statuses=[503, 429])
    with make_sink(rec, linger_ms=1) as sink:
        sink(make_batch([("a", 3, False)]))
        assert sink.flush(5)
        assert sink.stats.posts_ok == 1 and sink.stats.retries == 2
    rec = Recorder(default=503)
    with make_sink(rec, linger_ms=1, retries=2) as sink:
        sink(make_batch([("a", 3, False)]))
        assert sink.flush(5)
        assert sink.stats.posts_failed == 1 and sink.stats.tokens_dropped_failed == 3 and sink.stats.retries == 2


def test_connection_errors_are_survived():
    cfg = HttpSinkConfig(url="http://127.0.0.1:9", retries=1, retry_backoff_s=0.001, linger_ms=1, timeout_s=0.5)
    with HttpActivationSink(cfg) as sink:
        sink(make_batch([("a", 2, False)]))
        assert sink.flush(10)
        assert sink.stats.posts_failed == 1 and "Connect" in (sink.stats.last_error or "")


def test_a_4xx_is_not_retried():
    rec = Recorder(statuses=[409])
    with make_sink(rec, linger_ms=1) as sink:
        sink(make_batch([("a", 2, False)]))
        assert sink.flush(5)
        assert sink.stats.posts_rejected == 1 and sink.stats.retries == 0


def test_the_model_is_never_blocked_when_the_sidecar_is_slow():
    rec = Recorder(delay_s=0.3)
    with make_sink(rec, linger_ms=0, batch_tokens=1, queue_batches=4) as sink:
        t0 = time.perf_counter()
        for i in range(50):
            sink(make_batch([(f"r{i}", 2, False)]))
        elapsed = time.perf_counter() - t0
        assert elapsed < 0.25, f"the sink blocked the caller for {elapsed:.3f}s"
        assert sink.stats.chunks_dropped >= 40 and sink.stats.tokens_dropped_queue_full == 2 * sink.stats.chunks_dropped
        sink.flush(10)


def test_finals_of_requests_whose_tokens_were_never_shipped_are_not_sent():
    rec = Recorder()
    with make_sink(rec, linger_ms=1) as sink:
        sink(make_batch([("shipped", 2, False)]))
        assert sink.flush(5)
        sink(make_batch([("shipped", 0, True), ("all-dropped", 0, True)]))
        assert sink.flush(5)
    assert rec.batches[-1].request_ids == ["shipped"] and rec.batches[-1].final == [True]
    assert sink.stats.finals_skipped == 1


def test_unknown_finals_reported_by_the_sidecar_are_removed_and_the_rest_resent():
    rec = Recorder(statuses=[202, (404, ["b"])])
    with make_sink(rec, linger_ms=1) as sink:
        sink(make_batch([("a", 1, False), ("b", 1, False)]))
        assert sink.flush(5)
        sink(make_batch([("a", 0, True), ("b", 0, True)]))
        assert sink.flush(5)
    assert rec.batches[-1].request_ids == ["a"]


def test_against_a_live_sidecar_the_alert_fires(live_url, sidecar):
    cfg = HttpSinkConfig(url=live_url, token=INGEST, linger_ms=2)
    with HttpActivationSink(cfg) as sink:
        sink(make_batch([("live-1", 4, False)], hot=3.0))
        for step in range(3):
            sink(make_batch([("live-1", 1, False)], start={"live-1": 4 + step}, hot=3.0))
        sink(make_batch([("live-1", 0, True)]))
        assert sink.flush(10)
        assert sink.stats.posts_ok >= 1 and sink.stats.tokens_sent == 7, sink.stats
    lines = wait_until(lambda: sidecar.settings.alerts.jsonl_path.read_text().splitlines()
                       if sidecar.settings.alerts.jsonl_path.exists() else None, timeout_s=10)
    assert json.loads(lines[0])["request_id"] == "live-1"


def _latents(batch: ActivationBatch, sae, latents) -> ActivationBatch:
    z = sae.encode_latents(batch.activations, latents)
    return ActivationBatch(**{**batch.__dict__, "activations": z, "latent_ids": torch.tensor(latents, dtype=torch.int32),
                              "sae_sha256": sae.sha256})


def test_activation_and_latent_chunks_are_coalesced_by_kind(sae):
    rec = Recorder()
    latents = [1, 17, 5]
    with make_sink(rec, batch_tokens=10_000, linger_ms=10_000) as sink:
        sink(make_batch([("raw-1", 3, False)]))
        sink(_latents(make_batch([("lat-1", 4, False), ("lat-2", 2, False)]), sae, latents))
        sink(make_batch([("raw-1", 1, False)], start={"raw-1": 3}))
        sink(_latents(make_batch([("lat-1", 1, False)], start={"lat-1": 4}), sae, latents))
        sink(_latents(make_batch([("lat-1", 0, True), ("lat-2", 0, True)]), sae, latents))
        assert sink.flush(5)
    assert [(b.kind, b.request_ids, b.n_tokens) for b in rec.batches] == [
        ("activations", ["raw-1"], 4), ("latents", ["lat-1", "lat-2"], 7)]
    assert rec.batches[1].final == [True, True] and rec.batches[1].latent_ids.tolist() == latents


def test_latent_batches_against_a_live_sidecar_alert(live_url, sidecar, sae):
    latents = list(sidecar.generation.latents)
    cfg = HttpSinkConfig(url=live_url, token=INGEST, linger_ms=2)
    with HttpActivationSink(cfg) as sink:
        sink(_latents(make_batch([("live-lat", 4, False)], hot=3.0), sae, latents))
        sink(_latents(make_batch([("live-lat", 0, True)]), sae, latents))
        assert sink.flush(10)
        assert sink.stats.posts_ok >= 1 and sink.stats.tokens_sent == 4, sink.stats
    lines = wait_until(lambda: sidecar.settings.alerts.jsonl_path.read_text().splitlines()
                       if sidecar.settings.alerts.jsonl_path.exists() else None, timeout_s=10)
    assert json.loads(lines[0])["request_id"] == "live-lat"
