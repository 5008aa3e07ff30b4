"""What the sidecar benchmarks share: an SAE and four detectors on disk, a config file, the sidecar as a
real ``safety-monitor serve`` subprocess, and pre-serialised activation batches.

The SAE is the shipped default when ``artifacts/defaults.json`` names one, else a random 576 x 9216
JumpReLU SAE (the size of the planned default) whose latents fire on ~2 % of tokens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import torch

from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from detectors.spec import DetectorSpec
from monitor.sae import FrozenSAE, SAEConfig
from monitor.wire import ActivationBatch

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
HOOK = "blocks.15.hook_resid_post"
D_IN, D_SAE = 576, 9216
INGEST = "bench-ingest-token-0123456789"
ADMIN = "bench-admin-token-0123456789"


def bench_sae(workdir: Path) -> tuple[Path, FrozenSAE, str]:
    """``(path, sae, description)``: the shipped SAE if there is one, else a random one saved under workdir."""
    from monitor.artifacts import default_sae_dir

    shipped = default_sae_dir()
    if shipped is not None:
        sae = FrozenSAE.load(shipped)
        return shipped, sae, f"shipped SAE {shipped.name} ({sae.cfg.architecture}, {sae.cfg.d_sae} latents)"
    g = torch.Generator().manual_seed(0)
    w_enc = torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5
    weights = {"W_enc": w_enc, "b_enc": torch.zeros(D_SAE), "W_dec": w_enc.T.contiguous(),
               "b_dec": torch.randn(D_IN, generator=g) * 0.1,
               "threshold": torch.full((D_SAE,), 2.05) + torch.rand(D_SAE, generator=g) * 0.1}
    sae = FrozenSAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="jumprelu", apply_b_dec_to_input=True,
                              model_name=MODEL, hook_name=HOOK), weights)
    path = workdir / "sae"
    sae.save(path, dtype=torch.float16)
    sae = FrozenSAE.load(path)
    return path, sae, f"random JumpReLU SAE {D_IN}x{D_SAE} (float16 on disk; no shipped SAE yet)"


def four_detectors(sae: FrozenSAE, directory: Path, *, threshold: float = 1e6, seed: int = 1) -> list[DetectorSpec]:
    """Four detectors of 16 latents each (64 monitored latents), one per aggregation x span flavour."""
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    lat = torch.randperm(sae.cfg.d_sae, generator=g)[:64].tolist()
    flavours = [("scam", "max", "all"), ("power_seeking", "max", "response"), ("deception", "mean", "response"),
                ("sycophancy_probe", "mean", "all")]
    specs = []
    for i, (name, agg, span) in enumerate(flavours):
        spec = DetectorSpec(name=name, concept=name, model=MODEL, hook=HOOK, sae_sha256=sae.sha256,
                            latents=lat[16 * i : 16 * i + 16], weights=[1.0] * 16, aggregation=agg, span=span,
                            threshold=threshold)
        spec.save(directory / f"{name}.json")
        specs.append(spec)
    return specs


def write_config(workdir: Path, sae_path: Path, sae: FrozenSAE, detector_dir: Path, port: int, *,
                 pin_cpu: int | None = None, **extra: str) -> Path:
    """A sidecar config file; ``pin_cpu``: ``server.pin_cpu``; ``extra``: additional YAML sections, verbatim."""
    text = (f"model:\n  id: {MODEL}\n  layer: 15\n"
            f"sae:\n  path: {sae_path}\n  sha256: '{sae.sha256}'\n"
            f"detectors:\n  dir: {detector_dir}\n"
            f"auth:\n  ingest_token: {INGEST}\n  admin_token: {ADMIN}\n"
            f"server:\n  port: {port}\n  log_level: warning\n"
            + ("" if pin_cpu is None else f"  pin_cpu: {pin_cpu}\n"))
    if "alerts" not in extra:
        text += f"alerts:\n  console: false\n  outbox:\n    path: {workdir / 'outbox.sqlite3'}\n"
    for body in extra.values():
        text += body
    path = workdir / "sidecar.yaml"
    path.write_text(text)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SidecarProcess:
    """``safety-monitor serve`` as a subprocess."""

    proc: subprocess.Popen
    url: str
    log: Path

    @classmethod
    def start(cls, config: Path, port: int, log: Path, threads: int = 1, timeout_s: float = 60) -> SidecarProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAFETY_MONITOR_") or k == "SAFETY_MONITOR_CACHE"}
        env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
        exe = Path(sys.executable).parent / "safety-monitor"
        fh = log.open("w")
        proc = subprocess.Popen([str(exe), "serve", "--config", str(config)], stdout=fh, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        self = cls(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the sidecar exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the sidecar was not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by full name (labels included)."""
        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def make_batch(request_ids: list[str], tokens_each: int, start: int, *, role: int, seed: int,
               dtype: torch.dtype = torch.float16) -> ActivationBatch:
    """``tokens_each`` tokens for each request, positions ``start ...``; unit-variance activations."""
    g = torch.Generator().manual_seed(seed)
    n = len(request_ids) * tokens_each
    pos = torch.arange(start, start + tokens_each, dtype=torch.int32).repeat(len(request_ids))
    return ActivationBatch(
        activations=torch.randn(n, D_IN, generator=g).to(dtype), token_ids=torch.zeros(n, dtype=torch.int32),
        positions=pos, roles=torch.full((n,), role, dtype=torch.uint8),
        offsets=torch.arange(0, n + 1, tokens_each, dtype=torch.int64), request_ids=list(request_ids),
        final=[False] * len(request_ids), model=MODEL, hook=HOOK,
    )


def workload(kind: str, n_batches: int, batch_tokens: int = 512) -> list[bytes]:
    """Serialised batches of ``batch_tokens`` float16 tokens.

    ``prefill``: each batch holds 4 requests of ``batch_tokens / 4`` prompt tokens (new requests).
    ``decode``: each batch holds one response token of each of ``batch_tokens`` requests that stay open
    (the steady state of a server generating for that many users at once).
    """
    bodies = []
    if kind == "prefill":
        per = batch_tokens // 4
        for b in range(n_batches):
            ids = [f"p{b}-{i}" for i in range(4)]
            batch = make_batch(ids, per, 1, role=ROLE_PROMPT, seed=b % 16)
            batch.final = [True] * 4
            bodies.append(batch.to_bytes())
    elif kind == "decode":
        ids = [f"user-{i:04d}" for i in range(batch_tokens)]
        for b in range(n_batches):
            bodies.append(make_batch(ids, 1, 1 + b, role=ROLE_RESPONSE, seed=b % 16).to_bytes())
    else:
        raise ValueError(kind)
    return bodies


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="sidecar-bench-"))


def machine() -> str:
    import platform

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load}"
