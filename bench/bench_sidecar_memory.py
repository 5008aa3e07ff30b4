"""Resident memory of ``safety-monitor serve``: at rest, and at its peak while it is overloaded.

For each SAE (the shipped default, and a random 576 x 9216 one, the size of the planned default) it
starts the sidecar with the default queue and state bounds and four detectors, then:

    idle      RSS after start-up
    load      peak RSS while clients post faster than it can score (the queue fills to its bound and
              it answers 429), with 4096 open requests (the default ``limits.max_active_requests``)

RSS is sampled every 20 ms with psutil. Target: <= 500 MB with the default SAE.

``--large`` measures instead a random 131,072 x 4,096 JumpReLU SAE (Llama-3-8B width; float16, 2 GiB on
disk, generated in a temporary directory and deleted afterwards): the sidecar holds only its detectors'
64 encoder columns (``FrozenSAE.load(..., latents=)``) and, at that width, is fed latent batches (64
float32 latents per token, what an encoding tap ships). Target: <= 500 MB.

    .venv/bin/python bench/bench_sidecar_memory.py [--seconds 15] [--large] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time

import torch
from bench_sidecar_throughput import RawClient, request_head
from sidecar_harness import (
    SidecarProcess,
    bench_sae,
    four_detectors,
    free_port,
    machine,
    make_batch,
    workdir,
    write_config,
)

from detectors.spans import ROLE_RESPONSE
from monitor.sae import FrozenSAE, SAEConfig
from monitor.sae.formats import write_saelens
from monitor.wire import ActivationBatch

TARGET_MB = 500


def overload(url: str, seconds: float, clients: int = 3, bodies: list[bytes] | None = None) -> dict:
    """Post decode batches of 512 of 4096 open requests, as fast as possible, for ``seconds``."""
    users = [f"user-{i:04d}" for i in range(4096)]
    if bodies is None:
        bodies = [make_batch(users[(k % 8) * 512 : (k % 8 + 1) * 512], 1, 1 + k, role=ROLE_RESPONSE,
                             seed=k).to_bytes() for k in range(32)]
    counts = {"accepted": 0, "throttled": 0}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(offset: int) -> None:
        client = RawClient(url)
        k = offset
        while time.monotonic() < stop:
            body = bodies[k % len(bodies)]
            status, _ = client.request(request_head(url, len(body)), body)
            with lock:
                counts["accepted" if status == 202 else "throttled"] += 1
            if status == 429:
                time.sleep(0.001)
            k += 1
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def latent_bodies(sae: FrozenSAE, latents: list[int]) -> list[bytes]:
    """Decode batches of 512 of 4096 open requests as an encoding tap ships them: float32 latents."""
    users = [f"user-{i:04d}" for i in range(4096)]
    out = []
    for k in range(32):
        b = make_batch(users[(k % 8) * 512 : (k % 8 + 1) * 512], 1, 1 + k, role=ROLE_RESPONSE, seed=k)
        g = torch.Generator().manual_seed(k)
        z = torch.relu(torch.randn(512, len(latents), generator=g) - 1.5)
        out.append(ActivationBatch(**{**b.__dict__, "activations": z, "sae_sha256": sae.sha256,
                                      "latent_ids": torch.tensor(latents, dtype=torch.int32)}).to_bytes())
    return out


def large_sae(directory, d_in: int = 4096, d_sae: int = 131_072) -> tuple:
    """A random JumpReLU SAE of ``d_in x d_sae`` in float16, written to ``directory``; returns
    ``(path, a FrozenSAE slice of it (for its sha256 and shape), description)``."""
    g = torch.Generator().manual_seed(0)
    w_enc = torch.empty(d_in, d_sae, dtype=torch.float16)
    for i in range(0, d_in, 256):  # in blocks: no 2 GiB float32 temporary
        w_enc[i : i + 256] = (torch.randn(256, d_sae, generator=g) / d_in**0.5).half()
    weights = {"W_enc": w_enc, "W_dec": w_enc.T.contiguous(), "b_enc": torch.zeros(d_sae, dtype=torch.float16),
               "b_dec": torch.zeros(d_in, dtype=torch.float16),
               "threshold": torch.full((d_sae,), 0.05, dtype=torch.float16)}
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu", model_name="llama-3-8b-shape",
                    hook_name="blocks.16.hook_resid_post")
    path = write_saelens(directory / "sae", cfg, weights)
    del weights, w_enc
    t0 = time.perf_counter()
    sae = FrozenSAE.load(path, latents=[0])
    size = sum(p.stat().st_size for p in path.iterdir()) / 2**30
    return path, sae, (f"random JumpReLU {d_in}x{d_sae} (float16, {size:.1f} GiB on disk; sliced load + "
                       f"hash {time.perf_counter() - t0:.1f} s), latent batches")


def measure(sae_path, sae: FrozenSAE, desc: str, seconds: float, latents: bool = False) -> dict:
    tmp = workdir()
    specs = four_detectors(sae, tmp / "detectors")
    port = free_port()
    config = write_config(tmp, sae_path, sae, tmp / "detectors", port)
    side = SidecarProcess.start(config, port, tmp / "sidecar.log")
    try:
        time.sleep(1.0)
        idle = side.rss_mb()
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(side.rss_mb())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        bodies = latent_bodies(sae, sorted({lat for s in specs for lat in s.latents})) if latents else None
        counts = overload(side.url, seconds, bodies=bodies)
        time.sleep(1.0)
        done.set()
        sampler.join()
        m = side.metrics()
    finally:
        side.stop()
    return {"sae": desc, "idle_mb": round(idle, 1), "peak_mb": round(max(peak), 1),
            "accepted_batches": counts["accepted"], "http_429": counts["throttled"],
            "active_requests_max": 4096, "requests_evicted": m.get(
                'safety_monitor_requests_finished_total{reason="evicted"}', 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="length of the overload")
    ap.add_argument("--large", action="store_true", help="a random 131,072 x 4,096 SAE instead (2 GiB, temporary)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    if args.large:
        tmp = workdir()
        try:
            path, sae, desc = large_sae(tmp)
            rows.append(measure(path, sae, desc, args.seconds, latents=True))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _report(rows, args)
        return
    path, sae, desc = bench_sae(workdir())
    rows.append(measure(path, sae, desc, args.seconds))
    if sae.cfg.d_sae < 9216:  # also the size of the planned default
        from monitor import artifacts

        real = artifacts.default_sae_dir
        artifacts.default_sae_dir = lambda: None
        try:
            path, sae, desc = bench_sae(workdir())
        finally:
            artifacts.default_sae_dir = real
        rows.append(measure(path, sae, desc, args.seconds))
    _report(rows, args)


def _report(rows: list[dict], args) -> None:
    result = {"machine": machine(), "results": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}\ndefault queue (32,768 tokens) and state (4,096 requests) bounds; "
          f"4 detectors; {args.seconds:.0f} s of overload from 3 connections\n")
    print(f"{'SAE':<62}{'idle MB':>9}{'peak MB':>9}{'202s':>7}{'429s':>7}")
    for r in rows:
        print(f"{r['sae'][:62]:<62}{r['idle_mb']:>9}{r['peak_mb']:>9}{r['accepted_batches']:>7}{r['http_429']:>7}")
    worst = rows[0]["peak_mb"]
    print(f"\n{rows[0]['sae']}")
    print(f"target <= {TARGET_MB} MB: {'met' if worst <= TARGET_MB else 'MISSED'} (peak {worst} MB)")


if __name__ == "__main__":
    main()
