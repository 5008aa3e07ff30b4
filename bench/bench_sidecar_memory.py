"""Resident memory of ``safety-monitor serve``: at rest, and at its peak while it is overloaded.

For each SAE (the shipped default, and a random 576 x 9216 one, the size of the planned default) it
starts the sidecar with the default queue and state bounds and four detectors, then:

    idle      RSS after start-up
    load      peak RSS while clients post faster than it can score (the queue fills to its bound and
              it answers 429), with 4096 open requests (the default ``limits.max_active_requests``)

RSS is sampled every 20 ms with psutil. Target: <= 500 MB with the default SAE.

    .venv/bin/python bench/bench_sidecar_memory.py [--seconds 15] [--json]
"""

from __future__ import annotations

import argparse
import json
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
from monitor.sae import FrozenSAE

TARGET_MB = 500


def overload(url: str, seconds: float, clients: int = 3) -> dict:
    """Post decode batches of 512 of 4096 open requests, as fast as possible, for ``seconds``."""
    users = [f"user-{i:04d}" for i in range(4096)]
    bodies = [make_batch(users[(k % 8) * 512 : (k % 8 + 1) * 512], 1, 1 + k, role=ROLE_RESPONSE, seed=k).to_bytes()
              for k in range(32)]
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


def measure(sae_path, sae: FrozenSAE, desc: str, seconds: float) -> dict:
    tmp = workdir()
    four_detectors(sae, tmp / "detectors")
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
        counts = overload(side.url, seconds)
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
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
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
    result = {"machine": machine(), "results": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}\ndefault queue (32,768 tokens) and state (4,096 requests) bounds; "
          f"4 detectors; {args.seconds:.0f} s of overload from 3 connections\n")
    print(f"{'SAE':<62}{'idle MB':>9}{'peak MB':>9}{'202s':>7}{'429s':>7}")
    for r in rows:
        print(f"{r['sae']:<62}{r['idle_mb']:>9}{r['peak_mb']:>9}{r['accepted_batches']:>7}{r['http_429']:>7}")
    worst = rows[0]["peak_mb"]
    print(f"\ntarget <= {TARGET_MB} MB with the default SAE: {'met' if worst <= TARGET_MB else 'MISSED'} (peak {worst} MB)")


if __name__ == "__main__":
    main()
