"""Two real processes: ``safety-monitor model-server`` -> ``safety-monitor serve``.

A conversation goes to the model server's chat endpoint with a request id; the tap ships the
activations over HTTP to the sidecar, which scores them with a detector this test wrote (latents
observed active on the same conversation, threshold at half of the score they reach) and commits
the alert to its SQLite outbox under the same request id. With ``model_server.encode_at_tap`` the tap
ships the detector's SAE latents instead, and the sidecar's per-request features and scores are the
same bits as for the activations.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from sidecar_testkit import (
    ADMIN,
    INGEST,
    console_script,
    free_port,
    subprocess_env,
    wait_http,
    wait_until,
)

from detectors.scoring import DetectorBank
from detectors.spec import DetectorSpec
from monitor.lm.tap import CollectingSink, raw_share_pick
from monitor.model_server import ChatRequest, ModelServer, ModelServerStartError
from monitor.sae import FrozenSAE, SAEConfig
from monitor.service.settings import load_settings

pytestmark = pytest.mark.slow

CONVERSATION = [{"role": "user", "content": "Congratulations! You have won a free cruise. Reply with your bank "
                 "details to claim your prize today."}]
NEW_TOKENS = 6
REQUEST_ID = "e2e-conversation-0001"


def random_sae(path: Path, d_in: int = 576, d_sae: int = 512) -> FrozenSAE:
    g = torch.Generator().manual_seed(7)
    w = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    sae = FrozenSAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu"),
                    {"W_enc": w, "b_enc": torch.zeros(d_sae), "W_dec": w.T.contiguous(), "b_dec": torch.zeros(d_in),
                     "threshold": torch.full((d_sae,), 0.5)})
    sae.save(path)
    return FrozenSAE.load(path)


def observed_detector(default_model, sae: FrozenSAE, settings) -> DetectorSpec:
    """Run the same conversation in-process through the same tap; pick the three latents with the
    largest activation (attention sink excluded) and set the threshold at half their score."""
    sink = CollectingSink()
    server = ModelServer(settings, default_model, sink=None)
    server.tap.sink = sink
    try:
        server.chat(ChatRequest(messages=CONVERSATION, max_new_tokens=NEW_TOKENS), "probe")
        server.tap.flush(10)
    finally:
        server.tap.close()
    batch = sink.tokens_by_request()["probe"]
    keep = batch.positions != 0
    z = sae.encode(batch.activations[keep])
    top = z.max(dim=0).values.topk(3).indices.tolist()
    spec = DetectorSpec(name="e2e_probe", concept="test", model=settings.model.id, hook=settings.model.hook_name,
                        sae_sha256=sae.sha256, latents=top, weights=[1.0, 1.0, 1.0], threshold=1.0)
    req = DetectorBank([spec]).new_request()
    req.update(sae.encode_latents(batch.activations[keep], sorted(top)), batch.roles[keep])
    score = req.score(0)
    assert score is not None and score > 1.0, f"the random SAE is silent on this conversation ({score})"
    return spec.model_copy(update={"threshold": round(score / 2, 3)})


class Proc:
    """A console-script subprocess with its output in a log file; always terminated."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._fh = log.open("w")
        self.proc = subprocess.Popen([console_script(), *args], stdout=self._fh, stderr=subprocess.STDOUT,
                                     env=subprocess_env(), start_new_session=True)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._fh.close()
        return self.proc.returncode


def outbox_rows(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT request_id, payload FROM outbox").fetchall()
    except sqlite3.OperationalError:  # the sidecar has not created the table yet
        return []
    finally:
        db.close()


def write_config(tmp_path: Path, sae: FrozenSAE, sidecar_port: int, server_port: int, extra: str = "",
                 model_server: str = "") -> Path:
    """The one settings file both processes read; ``extra``: more YAML sections, ``model_server``: more lines
    of that section."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"sae:\n  path: {tmp_path / 'sae'}\n  sha256: '{sae.sha256}'\n"
        f"detectors:\n  dir: {tmp_path / 'detectors'}\n"
        f"auth:\n  ingest_token: {INGEST}\n  admin_token: {ADMIN}\n"
        f"alerts:\n  console: false\n  outbox:\n    path: {tmp_path / 'outbox.sqlite3'}\n"
        f"server:\n  port: {sidecar_port}\n  log_level: warning\n"
        f"model_server:\n  port: {server_port}\n  sidecar_url: http://127.0.0.1:{sidecar_port}\n{model_server}"
        + extra
    )
    return config


def stop_and_check(tmp_path: Path, *procs: Proc | None) -> None:
    """Stop the processes, print their logs' tails; uvicorn re-raises SIGTERM after a graceful shutdown,
    so -15 is a clean exit here."""
    codes = [p.stop() for p in procs if p is not None]
    for p in procs:
        if p is not None:
            sys.stderr.write(f"--- {p.log.name}\n{p.log.read_text()[-3000:]}\n")
    assert all(c in (0, -signal.SIGTERM) for c in codes), codes
    assert "Traceback" not in "".join(p.log.read_text() for p in procs if p is not None)


@contextmanager
def sidecar_and_model_server(tmp_path: Path, config: Path, sidecar_port: int, server_port: int) -> Iterator[None]:
    """``serve`` and ``model-server`` on one config, both ready; then both stopped, exits and logs checked."""
    sidecar = Proc(["serve", "--config", str(config)], tmp_path / "sidecar.log")
    server = None
    try:
        wait_http(f"http://127.0.0.1:{sidecar_port}/readyz", 60, sidecar.proc)
        server = Proc(["model-server", "--config", str(config)], tmp_path / "model-server.log")
        wait_http(f"http://127.0.0.1:{server_port}/healthz", 120, server.proc)
        yield
    finally:
        stop_and_check(tmp_path, server, sidecar)


def test_model_server_to_sidecar_conversation_raises_an_alert_with_the_request_id(default_model, tmp_path):
    sae = random_sae(tmp_path / "sae")
    sidecar_port, server_port = free_port(), free_port()
    outbox = tmp_path / "outbox.sqlite3"
    config = write_config(tmp_path, sae, sidecar_port, server_port)
    settings = load_settings(config)
    spec = observed_detector(default_model, sae, settings)
    spec.save(tmp_path / "detectors" / "e2e_probe.json")

    with sidecar_and_model_server(tmp_path, config, sidecar_port, server_port):
        r = httpx.post(f"http://127.0.0.1:{server_port}/v1/chat", headers={"X-Request-ID": REQUEST_ID},
                       json={"messages": CONVERSATION, "max_new_tokens": NEW_TOKENS}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == REQUEST_ID and r.json()["monitored"] is True

        rows = wait_until(lambda: outbox_rows(outbox), timeout_s=30, interval_s=0.2, what="the alert in the outbox")
        assert [rid for rid, _ in rows] == [REQUEST_ID]
        alert = json.loads(rows[0][1])
        assert alert["detector"] == "e2e_probe" and alert["sae_sha256"] == sae.sha256
        assert alert["model"] == settings.model.id and alert["score"] >= spec.threshold

        metrics = httpx.get(f"http://127.0.0.1:{sidecar_port}/metrics").text
        tokens = next(float(x.split()[-1]) for x in metrics.splitlines()
                      if x.startswith("safety_monitor_tokens_ingested_total"))
        # generate() never runs the model on its last sampled token, so the tap sees one token fewer.
        assert tokens == r.json()["prompt_tokens"] + r.json()["completion_tokens"] - 1
        wait_until(lambda: 'safety_monitor_requests_finished_total{reason="final"} 1.0'
                   in httpx.get(f"http://127.0.0.1:{sidecar_port}/metrics").text, timeout_s=10,
                   what="the final flag to reach the sidecar")
        assert httpx.get(f"http://127.0.0.1:{server_port}/healthz").json()["tap"] == "activations"


def sampled_features(path: Path) -> dict[str, tuple[float, bytes, int]]:
    """The sidecar's traffic samples: request id -> (final score, aggregated features, alerted)."""
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT s.request_id, f.score, f.features, f.alerted FROM samples s "
                          "JOIN features f ON f.sample_id = s.id").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return {}
    finally:
        db.close()
    return {rid: (score, bytes(features), alerted) for rid, score, features, alerted in rows}


def two(found):
    """``found`` once it holds two entries, else None (for ``wait_until``)."""
    return found if len(found) == 2 else None


def first_id(prefix: str, raw: bool, share: float) -> str:
    return next(f"{prefix}-{i}" for i in range(1000) if raw_share_pick(f"{prefix}-{i}", share) == raw)


def test_encoding_at_the_tap_scores_like_activations(default_model, tmp_path):
    """``model_server.encode_at_tap`` with ``raw_share: 0.5``: the same conversation under an id shipped as
    latents and one shipped as activations ends with the same features and score in the sidecar (it records
    every finished request as a traffic sample), and both raise the alert."""
    sae = random_sae(tmp_path / "sae")
    sidecar_port, server_port = free_port(), free_port()
    samples = tmp_path / "samples.sqlite3"
    sampling = f"samples:\n  enabled: true\n  rate: 1.0\n  path: {samples}\n"
    settings = load_settings(write_config(tmp_path, sae, sidecar_port, server_port, sampling))
    spec = observed_detector(default_model, sae, settings)  # (the detector must exist before encoding)
    spec.save(tmp_path / "detectors" / "e2e_probe.json")
    config = write_config(tmp_path, sae, sidecar_port, server_port, sampling,
                          model_server="  encode_at_tap: true\n  raw_share: 0.5\n")
    latent_id, raw_id = first_id("e2e-latents", False, 0.5), first_id("e2e-raw", True, 0.5)

    with sidecar_and_model_server(tmp_path, config, sidecar_port, server_port):
        health = httpx.get(f"http://127.0.0.1:{server_port}/healthz").json()
        assert (health["tap"], health["monitored_latents"], health["raw_share"]) == ("latents", 3, 0.5)
        for rid in (latent_id, raw_id):
            r = httpx.post(f"http://127.0.0.1:{server_port}/v1/chat", headers={"X-Request-ID": rid},
                           json={"messages": CONVERSATION, "max_new_tokens": NEW_TOKENS}, timeout=120)
            assert r.status_code == 200, r.text
        n_tokens = r.json()["prompt_tokens"] + r.json()["completion_tokens"] - 1

        got = wait_until(lambda: two(sampled_features(samples)), timeout_s=30, interval_s=0.2,
                         what="both requests in the traffic samples")
        assert got[latent_id] == got[raw_id]  # score, features (same bits) and alerted
        assert got[latent_id][0] >= spec.threshold and got[latent_id][2] == 1
        alerts = wait_until(lambda: two(outbox_rows(tmp_path / "outbox.sqlite3")), timeout_s=30, interval_s=0.2,
                            what="both alerts")
        assert sorted(rid for rid, _ in alerts) == sorted([latent_id, raw_id])
        assert {json.loads(a)["detector"] for _, a in alerts} == {"e2e_probe"}

        # One request went as latents, one as activations, each whole.
        metrics = httpx.get(f"http://127.0.0.1:{server_port}/metrics").text
        for kind in ("latents", "activations"):
            assert f'safety_monitor_model_server_tap_tokens_shipped_total{{kind="{kind}"}} {float(n_tokens)}' in metrics
        assert "safety_monitor_model_server_tap_monitored_latents 3.0" in metrics


def test_encode_at_tap_refuses_to_start_without_detectors_or_with_another_sae(default_model, tmp_path):
    sae = random_sae(tmp_path / "sae")
    other = random_sae(tmp_path / "other", d_sae=256)
    settings = write_config(tmp_path, sae, free_port(), free_port(), model_server="  encode_at_tap: true\n")
    (tmp_path / "detectors").mkdir()
    with pytest.raises(ModelServerStartError, match="no enabled detector"):
        ModelServer(load_settings(settings), default_model)
    spec = DetectorSpec(name="other_sae", concept="test", model="smollm2-135m-instruct", hook="blocks.15.hook_resid_post",
                        sae_sha256=other.sha256, latents=[1, 2], weights=[1.0, 1.0], threshold=1.0)
    spec.save(tmp_path / "detectors" / "other_sae.json")
    with pytest.raises(ModelServerStartError, match="detectors.dir: .*other_sae"):
        ModelServer(load_settings(settings), default_model)
    with pytest.raises(ModelServerStartError, match="sae.sha256"):
        ModelServer(load_settings(settings, sae={"path": str(tmp_path / "sae"), "sha256": other.sha256}),
                    default_model)


def test_model_server_propagates_and_checks_request_ids(default_model, tmp_path):
    from fastapi.testclient import TestClient

    from monitor.model_server import create_model_server_app

    settings = load_settings(None, auth={"disabled": True}, model_server={"max_new_tokens": 2})
    sink = CollectingSink()
    server = ModelServer(settings, default_model, sink=None)
    server.tap.sink = sink
    with TestClient(create_model_server_app(server)) as client:
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 50}
        r = client.post("/v1/chat", json=body, headers={"X-Request-ID": "abc-123"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
        assert r.json()["completion_tokens"] <= 2  # capped by model_server.max_new_tokens
        r = client.post("/v1/chat", json={**body, "request_id": "from-body"})
        assert r.json()["request_id"] == "from-body"
        assert len(client.post("/v1/chat", json=body).json()["request_id"]) == 36  # a fresh UUID
        assert client.post("/v1/chat", json=body, headers={"X-Request-ID": "bad id!"}).status_code == 400
        server.tap.flush(10)
    ids = {rid for b in sink.batches for rid in b.request_ids}
    assert {"abc-123", "from-body"} <= ids


def test_score_runs_a_text_in_process_and_alerts_like_live_traffic(default_model, tmp_path):
    from fastapi.testclient import TestClient
    from sidecar_testkit import INGEST_AUTH, make_settings

    from monitor.service.app import create_app
    from monitor.service.prometheus import SidecarMetrics
    from monitor.service.sidecar import Sidecar, build_alert_pipeline, read_detectors

    sae = random_sae(tmp_path / "sae")
    settings = make_settings(tmp_path, tmp_path / "sae", tmp_path / "detectors",
                             model={"id": "smollm2-135m-instruct", "layer": 15, "load": True})
    spec = observed_detector(default_model, sae, settings)
    spec.save(tmp_path / "detectors" / "e2e_probe.json")
    # Sidecar.load would load the model a second time; reuse the session's copy.
    sidecar = Sidecar(settings, sae, read_detectors(tmp_path / "detectors", sae), build_alert_pipeline(settings),
                      SidecarMetrics(), lm=default_model)
    with TestClient(create_app(sidecar)) as client:
        text = CONVERSATION[0]["content"]
        r = client.post("/v1/score", json={"text": text, "request_id": "score-1"}, headers=INGEST_AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["request_id"] == "score-1" and body["n_tokens"] > 10
        assert body["scores"]["e2e_probe"] >= spec.threshold
        assert [a["request_id"] for a in body["alerts"]] == ["score-1"]
        r = client.post("/v1/score", json={"text": "hi", "chat": False, "response": "x"}, headers=INGEST_AUTH)
        assert r.status_code == 400 and r.json()["error"] == "malformed_request"
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["request_id"] == "score-1"
