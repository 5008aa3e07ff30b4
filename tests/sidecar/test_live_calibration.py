"""The live-calibration loop end to end, through the real ``serve`` app on a uvicorn server: calibrated
detectors, then 2,000 benign requests unlike the calibration set; the affected detector goes ``drifting``
and raises exactly one ``detector_drift`` event; ``samples export``, ``samples label`` and ``calibrate
--thresholds-from`` on the recorded samples, a reload, and its live alert rate on fresh traffic of the
same kind is within its new calibrated bound. Also: what the samples store holds (no text, no token
ids), its bound, and the refusals."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import numpy as np
import pytest
from live_traffic import batches, calibrated_detectors, drift_traffic
from sidecar_testkit import ADMIN_AUTH, INGEST_AUTH, SAFETENSORS, live_server, make_settings, wait_until

from detectors.calibration.recalibrate import next_version, recalibrate
from detectors.calibration.traffic_samples import (
    DetectorSample,
    FeatureKey,
    SamplesError,
    TrafficSample,
    TrafficSampleStore,
    read_samples,
)
from detectors.spec import DetectorSpec
from monitor.cli.commands import main as cli
from monitor.service.app import create_app
from monitor.service.sidecar import Sidecar

POST = {**INGEST_AUTH, **SAFETENSORS}


def _stream(url: str, convs, prefix: str) -> list[str]:
    ids = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for rids, batch in batches(convs, prefix):
            body = batch.to_bytes()
            r = client.post("/v1/activations", content=body, headers=POST)
            while r.status_code == 429:  # back-pressure: retry as the tap's sink does
                time.sleep(0.05)
                r = client.post("/v1/activations", content=body, headers=POST)
            assert r.status_code == 202, r.text
            ids += rids
    return ids


def _detectors(url: str) -> dict[str, dict]:
    body = httpx.get(url + "/v1/detectors", headers=ADMIN_AUTH, timeout=10).json()
    return {d["name"]: d for d in body["detectors"]}


def _events(jsonl) -> list[dict]:
    return [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []


def test_drift_then_recalibration_from_samples_restores_the_false_positive_rate(tmp_path, sae, sae_dir):
    det_dir = tmp_path / "detectors"
    specs = {s.name: s for s in calibrated_detectors(sae, det_dir)}
    bound = specs["deception"].calibration.guaranteed_fpr
    assert bound <= 0.01
    store = tmp_path / "outbox-volume" / "traffic-samples.sqlite3"
    settings = make_settings(tmp_path, sae_dir, det_dir, samples={"enabled": True, "rate": 1.0, "seed": 0},
                             alerts={"outbox": {"path": str(tmp_path / "outbox-volume" / "outbox.sqlite3")}})
    sidecar = Sidecar.load(settings)
    jsonl = tmp_path / "alerts.jsonl"
    with live_server(create_app(sidecar)) as url:
        # --- 2,000 benign multi-turn chats whose replies score higher than the calibration set's
        _stream(url, drift_traffic(2000, seed=2), "drift")
        wait_until(lambda: _detectors(url)["deception"]["drift"]["window_requests"] == 2000, timeout_s=60,
                   what="2,000 finished requests in the drift window")
        det = _detectors(url)
        drift = det["deception"]["drift"]
        assert drift["state"] == "drifting", drift
        assert drift["live_rate_ci"][0] > 2 * bound and drift["ratio"] > 10
        assert det["scam"]["drift"]["state"] == "ok", det["scam"]["drift"]  # its inputs look like calibration
        wait_until(lambda: [e for e in _events(jsonl) if e.get("kind") == "detector_drift"], timeout_s=10,
                   what="the detector_drift event")
        # one more evaluation with the detector still drifting raises nothing new
        _detectors(url)
        events = [e for e in _events(jsonl) if e.get("kind") == "detector_drift"]
        assert len(events) == 1, events
        assert events[0]["detector"] == "deception" and events[0]["drift"]["window_requests"] >= 200
        metrics = httpx.get(url + "/metrics").text
        assert 'safety_monitor_detector_drift_ratio{detector="deception"}' in metrics
        assert 'safety_monitor_detector_live_alert_rate{detector="scam"}' in metrics
        assert sidecar.sampler.flush(10)

        # --- a person confirms two of the alerts; the rest of the samples count as benign
        alerted = [e["request_id"] for e in _events(jsonl) if e.get("kind") == "detection"
                   and e["detector"] == "deception"]
        assert len(alerted) > 500
        assert cli(["samples", "label", "--store", str(store), "--request", alerted[0], "--request", alerted[1],
                    "--detector", "deception"]) == 0
        export = tmp_path / "samples.jsonl.gz"
        assert cli(["samples", "export", "--store", str(store), "--out", str(export)]) == 0

        # --- dry run: proposed specs and a report, the detector directory untouched
        before = (det_dir / "deception.json").read_text()
        out = tmp_path / "proposed-run"
        assert cli(["calibrate", "--thresholds-from", str(export), "--detectors", str(det_dir), "--out", str(out),
                    "--dry-run"]) == 0
        assert (out / "proposed" / "deception.json").is_file()
        assert "deception" in (out / "proposed" / "reports" / "recalibration.md").read_text()
        assert (det_dir / "deception.json").read_text() == before

        # --- recalibrate in place and reload
        assert cli(["calibrate", "--thresholds-from", str(export), "--detectors", str(det_dir)]) == 0
        new = DetectorSpec.load(det_dir / "deception.json")
        assert new.version == "2" and new.latents == specs["deception"].latents
        assert new.weights == specs["deception"].weights and new.threshold > specs["deception"].threshold
        assert new.calibration.datasets == {"traffic-samples": read_samples(export).sha256}
        assert new.calibration.samples["confirmed"] == 2
        assert new.calibration.fpr_by_slice["multi_turn"]["n"] == 1998  # every benign sample is a multi-turn chat
        r = httpx.post(url + "/v1/admin/reload", headers=ADMIN_AUTH)
        assert r.status_code == 200, r.text

        # --- fresh traffic of the same kind: within the new bound
        _stream(url, drift_traffic(1000, seed=3), "fresh")
        wait_until(lambda: _detectors(url)["deception"]["drift"]["window_requests"] == 1000, timeout_s=60,
                   what="1,000 fresh requests in the new version's window")
        drift = _detectors(url)["deception"]["drift"]
        assert drift["live_alert_rate"] <= new.calibration.fpr_upper_bound, drift
        assert drift["state"] == "ok"
        assert len([e for e in _events(jsonl) if e.get("kind") == "detector_drift"]) == 1
        page = httpx.get(url + "/v1/dashboard/summary", headers=ADMIN_AUTH).json()
        row = {t["detector"]: t for t in page["thresholds"]}["deception"]
        assert row["version"] == "2" and row["calibration_histogram"] and sum(row["calibration_histogram"]) > 1900


def test_samples_hold_no_text_and_no_token_ids(tmp_path, sae, sae_dir):
    det_dir = tmp_path / "detectors"
    calibrated_detectors(sae, det_dir, n_benign=400)
    store = tmp_path / "traffic-samples.sqlite3"
    settings = make_settings(tmp_path, sae_dir, det_dir,
                             samples={"enabled": True, "rate": 1.0, "path": str(store), "seed": 0})
    sidecar = Sidecar.load(settings)
    with live_server(create_app(sidecar)) as url:
        ids = _stream(url, drift_traffic(100, seed=5), "private")
        wait_until(lambda: sidecar.sampler.flush(1) and TrafficSampleStore(store).stats().rows == 100, timeout_s=30,
                   what="100 samples")
    db = sqlite3.connect(store)
    columns = {t: [c[1] for c in db.execute(f"PRAGMA table_info({t})")]
               for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
               if not t.startswith("sqlite_")}
    assert columns == {
        "meta": ["key", "value"],
        "detectors": ["id", "name", "version", "sae_sha256", "latents", "aggregation", "span", "window_tokens"],
        "samples": ["id", "time", "request_id", "n_tokens", "n_prompt_tokens", "n_response_tokens", "n_turns"],
        "features": ["sample_id", "detector_id", "features", "score", "alerted"],
        "labels": ["request_id", "detector", "label", "labelled_at"],
    }
    rows = db.execute("SELECT request_id, n_tokens, n_prompt_tokens, n_response_tokens, n_turns FROM samples").fetchall()
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {r[1:] for r in rows} == {(24, 12, 12, 8)}  # the sink excluded; 8 role runs
    # Every stored number is a feature, a score or a count: the batches' token ids (31337..31343) appear nowhere.
    dump = "\n".join(db.iterdump())
    assert "31337" not in dump and "3134" not in dump
    k = {name: len(json.loads(lat)) for name, lat in db.execute("SELECT name, latents FROM detectors")}
    for det_id, blob in db.execute("SELECT detector_id, features FROM features"):
        assert len(blob) == 4 * 2 and k  # two float32 features per detector, nothing else
    db.close()


def _sample(i: int, key: FeatureKey, value: float, turns: int = 2) -> TrafficSample:
    return TrafficSample(time=1e9 + i, request_id=f"r{i}", n_tokens=20, n_prompt_tokens=10, n_response_tokens=10,
                         n_turns=turns, detectors=[DetectorSample(key, np.array([value, 0.0], np.float32), value,
                                                                  value > 1)])


def test_the_store_is_bounded_oldest_dropped_and_counted(tmp_path, sae):
    spec = DetectorSpec(name="d", concept="d", model="m", hook="h", sae_sha256=sae.sha256, latents=[1, 2],
                        weights=[1.0, 1.0], threshold=1.0)
    store = TrafficSampleStore(tmp_path / "s.sqlite3", max_rows=100)
    key = FeatureKey.of(spec)
    assert store.append_many([_sample(i, key, 0.5) for i in range(60)]) == 0
    assert store.append_many([_sample(i, key, 0.5) for i in range(60, 130)]) == 30
    st = store.stats()
    assert (st.rows, st.recorded_total, st.dropped_total) == (100, 130, 30)
    assert [s.request_id for s in read_samples(tmp_path / "s.sqlite3").samples][:2] == ["r30", "r31"]
    with pytest.raises(SamplesError, match="only alerts can be confirmed"):
        store.label(["r40"])  # it did not alert
    with pytest.raises(SamplesError, match="not in the samples"):
        store.label(["nope"])
    store.close()


def test_too_few_samples_are_refused_with_the_reason(tmp_path, sae):
    spec = DetectorSpec(name="d", concept="d", model="m", hook="h", sae_sha256=sae.sha256, latents=[1, 2],
                        weights=[1.0, 1.0], threshold=1.0)
    store = TrafficSampleStore(tmp_path / "s.sqlite3")
    rng = np.random.default_rng(0)
    store.append_many([_sample(i, FeatureKey.of(spec), float(v)) for i, v in enumerate(rng.uniform(0, 2, 250))])
    store.close()
    result = recalibrate(spec, read_samples(tmp_path / "s.sqlite3"))
    assert result.spec is None and "250 benign samples" in result.refused and "at least 299" in result.refused
    rc = cli(["calibrate", "--thresholds-from", str(tmp_path / "s.sqlite3"), "--detectors", str(tmp_path / "none")])
    assert rc == 2  # no spec directory: a usage error
    assert next_version("1") == "2" and next_version("v1") == "v1-r1" and next_version("v1-r1") == "v1-r2"


def test_sampled_features_are_the_scored_features_and_turns_are_role_runs(sae):
    """``RequestTable.all_features`` (what a sample records) equals ``features`` (what the score is computed from)
    for every aggregation and span, and ``turns`` counts role runs across chunks."""
    import torch

    from detectors.scoring import DetectorBank
    from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
    from monitor.service.request_table import RequestTable

    flavours = [("max", "all"), ("mean", "prompt"), ("window", "response"), ("max", "final_turn"), ("mean", "all"),
                ("window", "prompt")]
    specs = [DetectorSpec(name=f"d{i}", concept="c", model="m", hook="h", sae_sha256=sae.sha256,
                          latents=[i, i + 7, 40 - i], weights=[1.0, -0.5, 2.0], threshold=1.0, aggregation=agg,
                          span=span, window=4) for i, (agg, span) in enumerate(flavours)]
    table = RequestTable(DetectorBank(specs), 8, track_turns=True)
    a, b = table.allocate(), table.allocate()
    g = torch.Generator().manual_seed(0)
    # chunk 1: request a = prompt x3, response x2 (2 runs); request b = prompt x5
    roles1 = torch.tensor([ROLE_PROMPT] * 3 + [ROLE_RESPONSE] * 2 + [ROLE_PROMPT] * 5, dtype=torch.uint8)
    slots1 = torch.tensor([a] * 5 + [b] * 5)
    table.update(slots1, torch.rand(10, len(table.bank.latents), generator=g), roles1, torch.arange(10))
    # chunk 2: a continues its response (same run), then a new user turn; b gets a reply
    roles2 = torch.tensor([ROLE_RESPONSE, ROLE_PROMPT, ROLE_PROMPT, ROLE_RESPONSE, ROLE_RESPONSE], dtype=torch.uint8)
    slots2 = torch.tensor([a, a, a, b, b])
    table.update(slots2, torch.rand(5, len(table.bank.latents), generator=g), roles2, torch.arange(10, 15))
    assert (table.turns(a), table.turns(b)) == (3, 2)
    assert table.role_counts(a) == (5, 3)
    for slot in (a, b):
        for d, got in enumerate(table.all_features(slot)):
            np.testing.assert_allclose(got, table.features(slot, d).numpy(), rtol=1e-6)
    table.release(a)
    assert table.turns(a) == 0
