"""Decode-heavy sidecar ingest over HTTP by wire form, side by side against one sidecar: the older JSON
request list (schema v1), the columnar request table (v2) with activations, and v2 latent batches (what an
encoding tap ships: 64 float32 latents per token instead of 576 float16 activations).

Workload ``decode``: each batch holds one response token of each of 512 open requests (steady-state
generation for 512 users), as in ``bench_sidecar_throughput.py``; ``prefill`` (4 new requests x 128
tokens) for reference. Forms are interleaved round by round; medians. Also, per form, the same batches
parsed, queued and scored in this process without HTTP (the ceiling of the scoring path).

    .venv/bin/python bench/bench_ingest_kinds.py [--batches 600] [--rounds 2] [--clients 3] [--json]
    .venv/bin/python bench/bench_ingest_kinds.py --compare-pinning    # + a sidecar with server.pin_cpu

``--compare-pinning``: a second sidecar with ``server.pin_cpu`` set to the last CPU; each form is posted to
both sidecars in turn, round by round (this client is not pinned: pinned to the other CPU, it kept the
unpinned sidecar's threads off that CPU too, which hid the difference).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from bench_sidecar_throughput import post_all, score_bodies_in_process, scored
from safetensors.torch import save as st_save
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

from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from monitor.wire import SCHEMA_V1, ActivationBatch

TARGET = 200_000
FORMS = ("decode/v1-json", "decode/v2-activations", "decode/v2-latents", "prefill/v2-activations",
         "prefill/v2-latents")


def _v1(b: ActivationBatch) -> bytes:
    t = {"activations": b.activations, "token_ids": b.token_ids, "positions": b.positions, "roles": b.roles,
         "offsets": b.offsets}
    return st_save(t, metadata={"schema": SCHEMA_V1, "model": b.model, "hook": b.hook, "sae_sha256": b.sae_sha256,
                                "requests": json.dumps([{"id": r, "final": f} for r, f in zip(b.request_ids,
                                                                                               b.final)])})


def _latents(b: ActivationBatch, sha: str, latents: list[int], seed: int) -> ActivationBatch:
    g = torch.Generator().manual_seed(seed)
    z = torch.relu(torch.randn(b.n_tokens, len(latents), generator=g) - 1.5)
    return ActivationBatch(**{**b.__dict__, "activations": z, "sae_sha256": sha,
                              "latent_ids": torch.tensor(latents, dtype=torch.int32)})


def bodies(form: str, n: int, sha: str, latents: list[int], tag: str) -> list[bytes]:
    kind, wire = form.split("/")
    out = []
    for b in range(n):
        if kind == "decode":
            ids = [f"{tag}-user-{i:04d}" for i in range(512)]
            batch = make_batch(ids, 1, 1 + b, role=ROLE_RESPONSE, seed=b % 16)
        else:
            batch = make_batch([f"{tag}-p{b}-{i}" for i in range(4)], 128, 1, role=ROLE_PROMPT, seed=b % 16)
            batch.final = [True] * 4
        if wire == "v1-json":
            out.append(_v1(batch))
        elif wire == "v2-latents":
            out.append(_latents(batch, sha, latents, b % 16).to_bytes())
        else:
            out.append(batch.to_bytes())
    return out


def run_http(side: SidecarProcess, form: str, n: int, clients: int, sha: str, latents: list[int], tag: str) -> dict:
    data = bodies(form, n, sha, latents, tag)
    base = scored(side) + 20
    post_all(side.url, bodies(form, 20, sha, latents, tag + "w"), clients)  # warm-up, then settle
    while scored(side) < base:
        time.sleep(0.02)
    cpu0 = side.cpu_seconds()
    t0 = time.perf_counter()
    _, throttled = post_all(side.url, data, clients)
    while scored(side) < base + n:
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    cpu = side.cpu_seconds() - cpu0
    return {"form": form, "tokens_per_s": round(512 * n / wall), "sidecar_cpu_s_per_mtok": round(cpu / (512 * n) * 1e6, 2),
            "http_429": throttled, "body_kb": round(len(data[0]) / 1024, 1)}


def run_in_process(sae, specs, form: str, n: int, latents: list[int]) -> dict:
    wall, parse, _ = score_bodies_in_process(sae, specs, bodies(form, n, sae.sha256, latents, "ip"))
    return {"form": form, "tokens_per_s": round(512 * n / wall), "parse_ms_per_batch": round(1000 * parse / n, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=600, help="timed batches per form and round (512 tokens each)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--compare-pinning", action="store_true",
                    help="also run a sidecar pinned to the last CPU (server.pin_cpu)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = workdir()
    sae_path, sae, sae_desc = bench_sae(tmp)
    specs = four_detectors(sae, tmp / "detectors")
    latents = sorted({lat for s in specs for lat in s.latents})
    sidecars = {}
    try:
        for label in ("", " pinned") if args.compare_pinning else ("",):
            port, home = free_port(), tmp / (label.strip() or "unpinned")
            home.mkdir(exist_ok=True)
            config = write_config(home, sae_path, sae, tmp / "detectors", port,
                                  pin_cpu=len(os.sched_getaffinity(0)) - 1 if label else None)  # the last CPU
            sidecars[label] = SidecarProcess.start(config, port, home / "sidecar.log")
        runs: dict[str, list[dict]] = {f + label: [] for f in FORMS for label in sidecars}
        for r in range(args.rounds):
            for form in FORMS:
                for label, side in sidecars.items():
                    runs[form + label].append(run_http(side, form, args.batches, args.clients, sae.sha256, latents,
                                                       f"r{r}{label.strip()}"))
    finally:
        for side in sidecars.values():
            side.stop()
    in_process = {f: run_in_process(sae, specs, f, min(args.batches, 400), latents) for f in FORMS}
    result = {"machine": machine(), "sae": sae_desc, "rounds": args.rounds, "batches": args.batches, "forms": {}}
    for form, rs in runs.items():
        plain = form.split()[0]
        result["forms"][form] = {
            "http_tokens_per_s": statistics.median(x["tokens_per_s"] for x in rs),
            "http_runs": [x["tokens_per_s"] for x in rs],
            "sidecar_cpu_s_per_mtok": statistics.median(x["sidecar_cpu_s_per_mtok"] for x in rs),
            "body_kb": rs[0]["body_kb"], "in_process_tokens_per_s": in_process[plain]["tokens_per_s"],
            "parse_ms_per_batch": in_process[plain]["parse_ms_per_batch"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}\nSAE: {sae_desc}; 4 detectors, 64 latents; 512-token batches, "
          f"{args.clients} connections, {args.rounds} interleaved rounds of {args.batches} batches; medians\n")
    print(f"{'form':<31}{'body kB':>9}{'HTTP tokens/s':>15}{'(runs)':>20}{'CPU s/Mtok':>12}{'in process':>12}"
          f"{'parse ms':>10}")
    for form, r in result["forms"].items():
        runs_s = "/".join(f"{x // 1000}k" for x in r["http_runs"])
        print(f"{form:<31}{r['body_kb']:>9.1f}{r['http_tokens_per_s']:>15,.0f}{runs_s:>20}"
              f"{r['sidecar_cpu_s_per_mtok']:>12.2f}{r['in_process_tokens_per_s']:>12,}{r['parse_ms_per_batch']:>10.3f}")
    for form in [f for f in result["forms"] if f.startswith(("decode/v2-activations", "decode/v2-latents"))]:
        v = result["forms"][form]["http_tokens_per_s"]
        print(f"target >= {TARGET:,} tokens/s decode-heavy over HTTP, {form}: {'met' if v >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
