"""Latent batches (the tap already encoded): scored like the activation batches they were computed from (to
float32 rounding), and refused with a clear answer when made for another SAE or for other detectors."""

from __future__ import annotations

import threading

import torch
from sidecar_testkit import INGEST_AUTH, SAFETENSORS, ListSink, make_batch, make_spec, wait_until

from alerts.delivery import AlertPipeline
from detectors.scoring import DetectorBank
from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from monitor.service.alert_emitter import AlertEmitter
from monitor.service.prometheus import SidecarMetrics
from monitor.service.scoring_pipeline import ScoringPipeline
from monitor.wire import ActivationBatch

POST = {**INGEST_AUTH, **SAFETENSORS}


def as_latents(sae, batch: ActivationBatch, latents: list[int], dtype=torch.float32) -> ActivationBatch:
    """What an encoding tap ships for ``batch``: the latents of its (wire-dtype) activations."""
    z = sae.encode_latents(batch.activations, latents).to(dtype)
    return ActivationBatch(**{**batch.__dict__, "activations": z, "latent_ids": torch.tensor(latents, dtype=torch.int32),
                              "sae_sha256": sae.sha256})


def traffic(seed: int = 0) -> list[ActivationBatch]:
    """Interleaved prefills, decode steps and finals of six requests; some hot enough to alert."""
    g = torch.Generator().manual_seed(seed)
    out, pos = [], {}
    rids = [f"r{i}" for i in range(6)]
    for step in range(14):
        reqs = []
        for rid in rids:
            if rid in pos and pos[rid] < 0:
                continue  # finished
            n = int(torch.randint(3, 9, (1,), generator=g)) if rid not in pos else 1
            final = step == 13 or bool(torch.rand(1, generator=g) < 0.05)
            reqs.append((rid, n, final))
        if not reqs:
            break
        role = ROLE_PROMPT if step == 0 else ROLE_RESPONSE
        hot = float(torch.rand(1, generator=g)) * 3.0
        b = make_batch(reqs, start={r: max(p, 0) for r, p in pos.items()}, hot=hot, hot_dims=(1, 5), seed=step,
                       role=role)
        b = ActivationBatch.from_bytes(b.to_bytes())
        out.append(b)
        for rid, n, final in reqs:
            pos[rid] = -1 if final else pos.get(rid, 0) + n
    return out


def make_pipeline(sae, specs, sink) -> ScoringPipeline:
    metrics = SidecarMetrics()
    emitter = AlertEmitter(AlertPipeline(sinks=[sink]), metrics).start()
    return ScoringPipeline(sae, specs, model_id="test-model", hook="blocks.3.hook_resid_post", emitter=emitter,
                           metrics=metrics, instance="t").start()


def score_all(p: ScoringPipeline, batches: list[ActivationBatch]) -> dict:
    scores = {}
    for b in batches:
        done = threading.Event()
        out = []
        p.submit(b, on_done=lambda r, out=out, done=done: (out.append(r), done.set()))
        assert done.wait(10)
        scores.update(out[0].scores)
    return scores


def alert_key(a):
    """What an alert says, less its floats (compared apart: ``assert_same_alerts``)."""
    return (a.request_id, a.detector, a.severity, a.token_span.start, a.token_span.end, a.token_span.peak,
            a.token_span.role, tuple(la.latent for la in a.top_latents))


def assert_same_alerts(got: list, want: list) -> None:
    """The same alerts, their score and latent activations equal to float32 rounding.

    A latent batch's latents were encoded with another set of columns than the sidecar encodes (the tap's
    superset, in its order), and a BLAS kernel may round a column differently by the company it keeps (MKL
    on AMD EPYC: up to 7e-5 at d_in 576), so equality to the last bit is not portable."""
    got, want = sorted(got, key=alert_key), sorted(want, key=alert_key)
    assert [alert_key(a) for a in got] == [alert_key(a) for a in want]
    for a, b in zip(got, want):
        assert abs(a.score - b.score) <= 1e-4 * max(1.0, abs(b.score))
        for la, lb in zip(a.top_latents, b.top_latents):
            assert abs(la.activation - lb.activation) <= 1e-4 * max(1.0, abs(lb.activation))


def assert_same_scores(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for rid, by_name in want.items():
        assert got[rid].keys() == by_name.keys()
        for name, w in by_name.items():
            g = got[rid][name]
            assert (g is None) == (w is None) and (w is None or abs(g - w) <= 1e-4 * max(1.0, abs(w))), (rid, name)


def test_latent_batches_score_and_alert_like_activation_batches(sae):
    specs = [make_spec(sae, "scam", threshold=2.0),
             make_spec(sae, "power", latents=(5, 21), weights=(1.0, 0.5), threshold=0.8, aggregation="mean",
                       span="response"),
             make_spec(sae, "window", latents=(1, 5), weights=(0.7, 0.7), threshold=1.0, aggregation="window",
                       span="response", window=4),
             make_spec(sae, "neg", latents=(17, 2), weights=(1.0, -0.5), threshold=1.5)]
    bank = DetectorBank(specs)
    # The tap may encode more latents than the detectors read, in any order.
    shipped = [63, *reversed(bank.latents), 40]
    batches = traffic()
    raw_sink, lat_sink = ListSink(), ListSink()
    raw, lat = make_pipeline(sae, specs, raw_sink), make_pipeline(sae, specs, lat_sink)
    try:
        raw_scores = score_all(raw, batches)
        lat_scores = score_all(lat, [ActivationBatch.from_bytes(as_latents(sae, b, shipped).to_bytes())
                                     for b in batches])
        wait_until(lambda: len(lat_sink.alerts) == len(raw_sink.alerts) > 0, what="the same number of alerts")
    finally:
        for p in (raw, lat):
            p.stop(2.0)
            assert p.emitter.close(5.0)
    assert len(raw_scores) == 6  # every detector of every request
    assert_same_scores(lat_scores, raw_scores)
    assert_same_alerts(lat_sink.alerts, raw_sink.alerts)
    assert {a.detector for a in raw_sink.alerts} >= {"scam", "power"}


def test_float16_latents_alert_alike(sae):
    """Shipped as float16 (half the bytes), latents give the same alerts on clear-cut traffic."""
    specs = [make_spec(sae, "scam", threshold=2.0)]
    batches = traffic(seed=3)
    raw_sink, lat_sink = ListSink(), ListSink()
    raw, lat = make_pipeline(sae, specs, raw_sink), make_pipeline(sae, specs, lat_sink)
    try:
        raw_scores = score_all(raw, batches)
        lat_scores = score_all(lat, [as_latents(sae, b, [1, 17], torch.float16) for b in batches])
    finally:
        for p in (raw, lat):
            p.stop(2.0)
            assert p.emitter.close(5.0)
    for rid, by_det in raw_scores.items():
        assert abs(by_det["scam"] - lat_scores[rid]["scam"]) < 1e-2
    assert {a.request_id for a in raw_sink.alerts} == {a.request_id for a in lat_sink.alerts}


def test_latent_batches_over_http_and_their_refusals(client, sidecar, sae):
    x = make_batch([("a", 3, False)], hot=3.0)
    needed = list(sidecar.generation.latents)  # scam: 1, 17; power: 5
    ok = as_latents(sae, x, needed)
    r = client.post("/v1/activations", content=ok.to_bytes(), headers=POST)
    assert r.status_code == 202, r.text
    assert r.json()["accepted_tokens"] == 3
    # Computed with another SAE: 409 mismatch, naming both hashes' prefixes.
    other = ActivationBatch(**{**ok.__dict__, "sae_sha256": "0" * 64, "request_ids": ["b"]})
    r = client.post("/v1/activations", content=other.to_bytes(), headers=POST)
    assert r.status_code == 409 and r.json()["error"] == "mismatch"
    assert "sae_sha256 0000000000000000..." in r.json()["detail"] and sae.sha256[:16] in r.json()["detail"]
    # A tap configured for other detectors: 409 latent_mismatch, naming the missing latents.
    short = as_latents(sae, make_batch([("c", 2, False)]), [1, 17])
    r = client.post("/v1/activations", content=short.to_bytes(), headers=POST)
    assert r.status_code == 409 and r.json()["error"] == "latent_mismatch"
    assert "lacks 1 of the 3 SAE latents the loaded detectors read (5)" in r.json()["detail"]
    metrics = client.get("/metrics").text
    assert 'safety_monitor_batches_dropped_total{reason="mismatch"} 2.0' in metrics
    # The accepted batch is scored: its request finishes with scores.
    r = client.post("/v1/activations", content=as_latents(sae, make_batch([("a", 0, True)]), needed).to_bytes(),
                    headers=POST)
    assert r.status_code == 202
    wait_until(lambda: sidecar.pipeline.stats().active_requests == 0, what="request a finalised")


def test_the_sidecar_holds_only_its_detectors_latents_and_rereads_on_reload(client, sidecar, sae, detector_dir):
    from sidecar_testkit import ADMIN_AUTH

    assert sidecar.sae.loaded_latents == (1, 5, 17) and sidecar.sae.sha256 == sae.sha256
    assert sidecar.sae.weights["W_enc"].shape == (sae.cfg.d_in, 3)
    make_spec(sae, "wide", latents=(40, 1), weights=(1.0, 1.0), threshold=50.0).save(detector_dir / "wide.json")
    r = client.post("/v1/admin/reload", headers=ADMIN_AUTH)
    assert r.status_code == 200, r.text
    assert sidecar.sae.loaded_latents == (1, 5, 17, 40) and sidecar.pipeline.sae is sidecar.sae
    r = client.post("/v1/activations", content=make_batch([("w", 3, True)], hot=2.0).to_bytes(), headers=POST)
    assert r.status_code == 202
    wait_until(lambda: sidecar.pipeline.stats().active_requests == 0 and sidecar.metrics.tokens_scored._value.get()
               == 2, what="scored with the new latent")
