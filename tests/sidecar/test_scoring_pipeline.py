"""The scoring pipeline on its own: per-request aggregation over interleaved chunks, alert once per
request and detector, finalisation (final flag, idle timeout, eviction), reloads, the attention sink."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from sidecar_testkit import HOOK, MODEL, ListSink, make_batch, make_spec, wait_until

from alerts.delivery import AlertPipeline
from detectors.scoring import DetectorBank
from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from monitor.service.alert_emitter import AlertEmitter
from monitor.service.prometheus import SidecarMetrics
from monitor.service.scoring_pipeline import ScoringPipeline, UnknownRequestError
from monitor.wire import ActivationBatch


@pytest.fixture()
def sink():
    return ListSink()


def make_pipeline(sae, specs, sink, **kw) -> ScoringPipeline:
    metrics = SidecarMetrics()
    emitter = AlertEmitter(AlertPipeline(sinks=[sink]), metrics).start()
    return ScoringPipeline(sae, specs, model_id=MODEL, hook=HOOK, emitter=emitter, metrics=metrics,
                           instance="t", **kw).start()


def run(p: ScoringPipeline, batch: ActivationBatch):
    """Submit and wait until the worker has scored it; returns the ``ScoreResult``."""
    done = threading.Event()
    out = []
    p.submit(batch, on_done=lambda r: (out.append(r), done.set()))
    assert done.wait(10), "the worker did not score the batch"
    return out[0]


def stop(p: ScoringPipeline):
    p.stop(2.0)
    assert p.emitter.close(5.0)


def test_alert_once_per_request_and_detector_with_span_peak_and_severity(sae, sink):
    p = make_pipeline(sae, [make_spec(sae, "scam", threshold=2.0)], sink)
    try:
        run(p, make_batch([("r1", 4, False)], hot=0.5))  # prefill: score ~1, below 2
        assert sink.alerts == []
        run(p, make_batch([("r1", 1, False)], start={"r1": 4}, hot=1.5))  # decode step crosses (~3)
        wait_until(lambda: sink.alerts, what="the alert")
        for i in range(5, 9):  # hotter tokens keep crossing: no second alert
            run(p, make_batch([("r1", 1, False)], start={"r1": i}, hot=5.0, seed=i))
        res = run(p, make_batch([("r1", 0, True)]))
        time.sleep(0.1)
        assert len(sink.alerts) == 1
        a = sink.alerts[0]
        assert (a.request_id, a.detector, a.model, a.sae_sha256, a.instance) == ("r1", "scam", MODEL, sae.sha256, "t")
        assert a.score >= 2.0 and a.threshold == 2.0 and a.severity.value == "low"  # high needs >= 4
        assert (a.token_span.start, a.token_span.end, a.token_span.peak) == (1, 5, 4)
        assert a.token_span.role == "prompt"
        assert {la.latent for la in a.top_latents} == {1, 17}
        assert a.top_latents[0].label == "test label" or a.top_latents[1].label == "test label"
        assert res.scores["r1"]["scam"] > 8  # the final score saw the hot decode tokens
        assert p.stats().active_requests == 0
    finally:
        stop(p)


@pytest.mark.parametrize("aggregation", ["mean", "window"])
def test_a_detector_judged_on_the_finished_reply_alerts_at_the_end_with_its_peak(sae, sink, aggregation):
    spec = make_spec(sae, "scam_reply", threshold=0.5, aggregation=aggregation, span="response", kind="reply")
    p = make_pipeline(sae, [spec], sink)
    try:
        run(p, make_batch([("r1", 4, False)], hot=3.0))  # the prompt: not read by a reply detector
        run(p, make_batch([("r1", 3, False)], start={"r1": 4}, hot=0.3, role=ROLE_RESPONSE))
        run(p, make_batch([("r1", 1, False)], start={"r1": 7}, hot=2.0, role=ROLE_RESPONSE))  # the hottest token
        run(p, make_batch([("r1", 2, False)], start={"r1": 8}, hot=0.3, role=ROLE_RESPONSE))
        assert sink.alerts == []  # a mean can still fall: judged when the request ends
        run(p, make_batch([("r1", 0, True)]))
        wait_until(lambda: sink.alerts, what="the alert at the end of the reply")
        a = sink.alerts[0]
        assert (a.detector, a.token_span.start, a.token_span.end) == ("scam_reply", 4, 10)
        assert (a.token_span.peak, a.token_span.role) == (7, "response")
    finally:
        stop(p)


def test_a_max_detector_with_a_negative_weight_waits_for_the_end(sae, sink):
    # latent 1 adds, latent 5 subtracts: crossing mid-request is not final when a later token lifts latent 5
    spec = make_spec(sae, "mixed", latents=(1, 5), weights=(1.0, -1.0), threshold=0.5)
    p = make_pipeline(sae, [spec], sink)
    try:
        run(p, make_batch([("r1", 3, False)], hot=2.0, hot_dims=(1,)))
        run(p, make_batch([("r1", 2, False)], start={"r1": 3}, hot=5.0, hot_dims=(5,)))
        res = run(p, make_batch([("r1", 0, True)]))
        time.sleep(0.2)
        assert res.scores["r1"]["mixed"] < 0.5 and sink.alerts == []  # a streaming alert would have fired
    finally:
        stop(p)


def test_severity_comes_from_the_margin(sae, sink):
    p = make_pipeline(sae, [make_spec(sae, "scam", threshold=2.0)], sink)  # high at >= 4
    try:
        run(p, make_batch([("r1", 3, True)], hot=3.0))
        wait_until(lambda: sink.alerts)
        assert sink.alerts[0].severity.value == "high"
    finally:
        stop(p)


def test_interleaved_requests_score_like_whole_requests(sae, sink):
    specs = [make_spec(sae, "scam", threshold=100.0),
             make_spec(sae, "power", latents=(5, 21), weights=(1.0, 0.5), threshold=100.0, aggregation="mean",
                       span="response")]
    p = make_pipeline(sae, specs, sink)
    bank = DetectorBank(specs)
    ref = {r: bank.new_request() for r in ("a", "b", "c")}
    pos = dict.fromkeys(ref, 0)
    try:
        g = torch.Generator().manual_seed(3)
        steps = [[("a", 6), ("b", 4)], [("c", 1)]] + [[("a", 1), ("b", 1), ("c", 1)]] * 6  # prefills, decodes
        for step, part in enumerate(steps):
            batch = make_batch([(r, n, False) for r, n in part], start=dict(pos), hot_dims=(1, 5), seed=step,
                               hot=float(torch.rand(1, generator=g)) * 2, role=ROLE_RESPONSE if step > 1 else ROLE_PROMPT)
            run(p, batch)
            for rid, rows, _ in batch.request_slices():
                keep = batch.positions[rows] != 0
                z = sae.encode_latents(batch.activations[rows][keep], bank.latents)
                ref[rid].update(z, batch.roles[rows][keep])
                pos[rid] += rows.stop - rows.start
        res = run(p, make_batch([(r, 0, True) for r in ref]))
        for rid, req in ref.items():
            for d, s in enumerate(specs):
                want = req.score(d)
                got = res.scores[rid][s.name]
                assert (want is None and got is None) or got == pytest.approx(want, rel=1e-4), (rid, s.name)
    finally:
        stop(p)


def test_the_attention_sink_row_is_never_scored(sae, sink):
    p = make_pipeline(sae, [make_spec(sae, "scam", threshold=2.0)], sink)
    try:
        batch = make_batch([("r1", 3, False)], hot=0.0)
        batch.activations[0, 1] = 50.0  # position 0: huge, like the real attention sink
        res = run(p, batch)
        res = run(p, make_batch([("r1", 0, True)]))
        assert res.scores["r1"]["scam"] < 1.0
        assert sink.alerts == []
    finally:
        stop(p)


def test_unknown_final_flags_are_refused_but_repeats_are_harmless(sae, sink):
    p = make_pipeline(sae, [make_spec(sae)], sink)
    try:
        with pytest.raises(UnknownRequestError, match="'ghost'"):
            p.submit(make_batch([("ghost", 0, True)]))
        run(p, make_batch([("r1", 2, True)]))
        run(p, make_batch([("r1", 0, True)]))  # known id, already finalised: accepted, ignored
        assert p.metrics.unknown_finals._value.get() == 1
    finally:
        stop(p)


def test_idle_requests_are_finalised(sae, sink):
    p = make_pipeline(sae, [make_spec(sae)], sink, idle_timeout_s=0.3)
    try:
        run(p, make_batch([("r1", 3, False), ("r2", 2, False)]))
        assert p.stats().active_requests == 2
        # The worker forgets the requests, then counts them: wait for the count, not only the removal.
        wait_until(lambda: p.metrics.requests_finished.labels("idle")._value.get() == 2, timeout_s=5,
                   what="idle finalisation")
        assert p.stats().active_requests == 0
    finally:
        stop(p)


def test_state_is_bounded_by_evicting_the_least_recently_seen(sae, sink):
    p = make_pipeline(sae, [make_spec(sae)], sink, max_active_requests=3)
    try:
        for i in range(10):
            run(p, make_batch([(f"r{i}", 2, False)]))
        assert p.stats().active_requests == 3
        assert p.metrics.requests_finished.labels("evicted")._value.get() == 7
        run(p, make_batch([("r9", 1, False)], start={"r9": 2}))  # most recent ones are kept
        assert p.stats().active_requests == 3
    finally:
        stop(p)


def test_reload_keeps_requests_in_flight_on_their_detectors(sae, sink):
    p = make_pipeline(sae, [make_spec(sae, "scam", threshold=2.0)], sink)
    try:
        run(p, make_batch([("old", 3, False)], hot=3.0))
        wait_until(lambda: len(sink.alerts) == 1)
        p.set_detectors([make_spec(sae, "scam", threshold=2.0, version="2"),
                         make_spec(sae, "power", latents=(5,), weights=(1.0,), threshold=1.0)])
        run(p, make_batch([("old", 2, False), ("new", 3, False)], start={"old": 3}, hot=3.0, hot_dims=(1, 5)))
        wait_until(lambda: len(sink.alerts) == 3)
        time.sleep(0.1)
        got = sorted((a.request_id, a.detector, a.detector_version) for a in sink.alerts)
        # "old" alerted once on v1 and is not re-alerted; "power" does not exist in its generation.
        assert got == [("new", "power", "1"), ("new", "scam", "2"), ("old", "scam", "1")]
        assert p.stats().generations == 2
        run(p, make_batch([("old", 0, True)]))
        run(p, make_batch([("new", 1, False)], start={"new": 3}))
        assert p.stats().generations == 1  # the old generation's table is released
    finally:
        stop(p)


def test_scoring_goes_on_after_a_reload_whose_old_detectors_were_retired_idle(sae, sink):
    """Reload while nothing is in flight: the idle sweep retires the old set before any step has seen the new
    one. (It left no live generation, and every later step failed.)"""
    p = make_pipeline(sae, [make_spec(sae, "scam", threshold=2.0)], sink, idle_timeout_s=0.2)
    try:
        run(p, make_batch([("a", 3, True)], hot=3.0))
        p.set_detectors([make_spec(sae, "scam", threshold=2.0, version="2")])
        time.sleep(0.5)  # a sweep runs (every idle_timeout_s / 4)
        run(p, make_batch([("b", 3, True)], hot=3.0))
        wait_until(lambda: len(sink.alerts) == 2, what="the alert of the request after the reload")
        assert sink.alerts[1].detector_version == "2" and p.worker_errors == 0
    finally:
        stop(p)


def test_final_turn_alerts_name_the_role_they_scored(sae, sink):
    p = make_pipeline(sae, [make_spec(sae, "power", threshold=2.0, span="final_turn")], sink)
    try:
        run(p, make_batch([("p", 4, True)], hot=3.0))  # prompt only: the prompt is the final turn
        run(p, make_batch([("r", 3, False)], hot=0.0))
        run(p, make_batch([("r", 3, True)], start={"r": 3}, hot=3.0, role=ROLE_RESPONSE))
        wait_until(lambda: len(sink.alerts) == 2, what="two alerts")
        roles = {a.request_id: a.token_span.role for a in sink.alerts}
        assert roles == {"p": "prompt", "r": "response"}
    finally:
        stop(p)


def test_mean_detectors_are_judged_on_the_finished_request(sae, sink):
    spec = make_spec(sae, "power", threshold=2.0, aggregation="mean")
    p = make_pipeline(sae, [spec], sink)
    try:
        run(p, make_batch([("a", 2, False)], hot=4.0))  # a hot start: the running mean crosses ...
        time.sleep(0.1)
        assert sink.alerts == []  # ... but a mean can still fall, so no alert yet
        run(p, make_batch([("a", 12, False)], start={"a": 2}, hot=0.0))  # cold tokens pull the mean down
        res = run(p, make_batch([("a", 0, True)]))
        assert res.scores["a"]["power"] < 2.0
        run(p, make_batch([("b", 6, False)], hot=4.0))
        res = run(p, make_batch([("b", 0, True)]))
        assert res.scores["b"]["power"] >= 2.0
        wait_until(lambda: sink.alerts, what="the alert of b")
        assert [a.request_id for a in sink.alerts] == ["b"]
        assert [a.request_id for a in res.alerts] == ["b"]  # reported with the final chunk
    finally:
        stop(p)
