"""Sidecar ingest + encode + score throughput, over HTTP, four detectors, float16 batches of 512 tokens.

Starts ``safety-monitor serve`` as a subprocess (one worker thread, ``queue.torch_threads`` 1) and
posts pre-serialised batches from ``--clients`` keep-alive connections in this process, for two
workloads side by side:

    prefill  each batch: 4 new requests x 128 prompt tokens (final)
    decode   each batch: one response token of each of 512 open requests (steady-state generation)

The sidecar runs with its default settings (queue of 32,768 tokens: when the clients outrun it, it
answers 429 and they retry after 2 ms, as a sink would). Timing runs from the first post to the moment the sidecar has scored every batch (its
``ingest_to_scored`` histogram count). Prints tokens/s, the sidecar's own CPU seconds per million
tokens (the client shares the same cores), 429 answers, and, for reference, the same batches
decoded and scored in-process without HTTP (the ceiling of the scoring path on one core).

    .venv/bin/python bench/bench_sidecar_throughput.py [--batches 1500] [--clients 3] [--json]

``--compare-samples RATE`` runs the sidecar side by side without traffic samples and with them at ``RATE``
(e.g. 0.1; samples written to a SQLite store in the work folder), alternating for ``--rounds`` rounds, and
prints both and the cost (throughput and sidecar CPU per token). Only requests that finish are sampled:
the prefill workload finishes 4 requests per batch (a request rate far above real chat traffic, the worst
case for a per-request cost); the decode workload's requests stay open, so it shows the drift watch and
turn bookkeeping alone.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from pathlib import Path

import torch
from sidecar_harness import (
    INGEST,
    SidecarProcess,
    bench_sae,
    four_detectors,
    free_port,
    machine,
    workdir,
    workload,
    write_config,
)

TARGET = 200_000


class RawClient:
    """A minimal HTTP/1.1 keep-alive client: pre-built request bytes, sendall, read one response.

    httpx and http.client spend more CPU per 600 kB request than the sidecar spends scoring it, and
    the client shares this machine's cores; this one keeps the load generator out of the way."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.sock = socket.create_connection((self.host, self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        self.sock.sendall(head)
        self.sock.sendall(body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        header, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = int(next(h.split(b":", 1)[1] for h in header.split(b"\r\n")[1:]
                          if h.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += self._recv()
        self.buf = rest[length:]
        return status, rest[:length]

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the sidecar closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


def request_head(url: str, n: int) -> bytes:
    host = url.removeprefix("http://")
    return (f"POST /v1/activations HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {INGEST}\r\n"
            f"Content-Type: application/vnd.safetensors\r\nContent-Length: {n}\r\n\r\n").encode()


def post_all(url: str, bodies: list[bytes], clients: int) -> tuple[float, int]:
    """Post every body from ``clients`` connections (retrying 429s after 2 ms); returns (seconds, 429s)."""
    lock = threading.Lock()
    it = iter(bodies)
    throttled = [0]

    def worker():
        client = RawClient(url)
        try:
            while True:
                with lock:
                    body = next(it, None)
                if body is None:
                    return
                head = request_head(url, len(body))
                while True:
                    status, text = client.request(head, body)
                    if status == 202:
                        break
                    if status != 429:
                        raise RuntimeError(f"HTTP {status}: {text[:300]!r}")
                    throttled[0] += 1
                    time.sleep(0.002)
        finally:
            client.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, throttled[0]


def scored(side: SidecarProcess) -> float:
    return side.metrics().get("safety_monitor_ingest_to_scored_seconds_count", 0.0)


def run_http(side: SidecarProcess, kind: str, n: int, clients: int) -> dict:
    warm = workload(kind, 40)
    post_all(side.url, warm, clients)
    base = scored(side)
    while scored(side) < base:  # (the histogram is monotone; just settle)
        time.sleep(0.05)
    bodies = workload(kind, n)
    tokens = 512 * n
    cpu0 = side.cpu_seconds()
    me0 = os.times()
    t0 = time.perf_counter()
    post_s, throttled = post_all(side.url, bodies, clients)
    while scored(side) < base + n:
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    cpu = side.cpu_seconds() - cpu0
    me1 = os.times()
    client_cpu = (me1.user - me0.user) + (me1.system - me0.system)
    m = side.metrics()
    return {"workload": kind, "batches": n, "tokens": tokens, "seconds": round(wall, 3),
            "tokens_per_s": round(tokens / wall), "post_seconds": round(post_s, 3), "http_429": throttled,
            "sidecar_cpu_s": round(cpu, 2), "sidecar_cpu_s_per_mtok": round(cpu / tokens * 1e6, 2),
            "tokens_per_sidecar_cpu_s": round(tokens / cpu), "client_cpu_s": round(client_cpu, 2),
            "mean_worker_step_ms": round(1000 * m["safety_monitor_worker_step_seconds_sum"]
                                         / max(1.0, m["safety_monitor_worker_step_seconds_count"]), 3),
            "mean_encode_ms": round(1000 * m["safety_monitor_encode_seconds_sum"]
                                    / max(1.0, m["safety_monitor_encode_seconds_count"]), 3)}


def score_bodies_in_process(sae, specs, bodies: list[bytes]):
    """Decode each body and submit it to a fresh scoring pipeline (no HTTP), waiting for the last to be
    scored. Returns ``(wall seconds, seconds spent decoding, the pipeline's SidecarMetrics)``."""
    from alerts.delivery import AlertPipeline
    from monitor.service.alert_emitter import AlertEmitter
    from monitor.service.prometheus import SidecarMetrics
    from monitor.service.scoring_pipeline import ScoringPipeline
    from monitor.wire import ActivationBatch, WireLimits

    metrics = SidecarMetrics()
    emitter = AlertEmitter(AlertPipeline(), metrics).start()
    p = ScoringPipeline(sae, specs, model_id="smollm2-135m-instruct", hook="blocks.15.hook_resid_post",
                        emitter=emitter, metrics=metrics, max_queue_tokens=1 << 22).start()
    limits, n = WireLimits(), len(bodies)
    done = threading.Event()
    t0 = time.perf_counter()
    parse = 0.0
    for i, body in enumerate(bodies):
        t1 = time.perf_counter()
        batch = ActivationBatch.from_bytes(body, limits)
        parse += time.perf_counter() - t1
        while True:
            try:
                p.submit(batch, on_done=(lambda r: done.set()) if i == n - 1 else None)
                break
            except Exception:  # noqa: BLE001 - queue full: let the worker catch up
                time.sleep(0.001)
    done.wait(120)
    wall = time.perf_counter() - t0
    p.stop(5)
    emitter.close(5)
    return wall, parse, metrics


def run_in_process(sae, specs, kind: str, n: int) -> dict:
    """Decode + queue + score without HTTP: the scoring path alone, on this thread and the worker."""
    wall, parse, metrics = score_bodies_in_process(sae, specs, workload(kind, n))
    step = metrics.step_seconds.collect()[0].samples
    step_sum = next(s.value for s in step if s.name.endswith("_sum"))
    step_n = next(s.value for s in step if s.name.endswith("_count"))
    return {"workload": kind, "tokens_per_s": round(512 * n / wall), "parse_ms_per_batch": round(1000 * parse / n, 3),
            "worker_ms_per_step": round(1000 * step_sum / step_n, 3), "worker_steps": int(step_n)}


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process by thread name (Linux ``/proc/self/task``; {} elsewhere)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for tid in tids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), f"tid-{tid}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def feed_in_process(side, bodies: list[bytes]) -> dict:
    """Feed a started in-process ``Sidecar`` (no HTTP) and wait until everything is scored and sampled; wall
    time and the process's CPU time (every thread: parsing, scoring, the samples writer)."""
    import resource

    from monitor.wire import ActivationBatch, WireLimits

    limits = WireLimits()
    done = threading.Event()
    n = len(bodies)

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    th0 = thread_cpu()
    c0, t0 = cpu(), time.perf_counter()
    for i, body in enumerate(bodies):
        batch = ActivationBatch.from_bytes(body, limits)
        while True:
            try:
                side.pipeline.submit(batch, on_done=(lambda r: done.set()) if i == n - 1 else None)
                break
            except Exception:  # noqa: BLE001 - queue full: let the worker catch up
                time.sleep(0.001)
    done.wait(120)
    wall = time.perf_counter() - t0  # scored: throughput; the samples writer's group commit lingers up to 0.5 s
    if side.sampler is not None:
        side.sampler.flush(10)  # ... and its CPU counts
    used = cpu() - c0
    th1 = thread_cpu()
    per_mtok = 1e6 / (512 * n)
    return {"tokens_per_s": round(512 * n / wall), "cpu_s_per_mtok": round(used * per_mtok, 3),
            "worker_cpu_s_per_mtok": round((th1.get("scoring-worker", 0) - th0.get("scoring-worker", 0)) * per_mtok, 3),
            "writer_cpu_s_per_mtok": round((th1.get("traffic-samples", 0) - th0.get("traffic-samples", 0)) * per_mtok,
                                           3)}


def compare_samples(args, tmp, sae_path, sae) -> None:
    """Side by side: samples off and on at ``args.compare_samples``.

    In process: one sidecar, its sampling switched off (rate 0, no turn bookkeeping) and on in turn, fed the
    same batches ``args.rounds`` times per workload; the minimum CPU per token of each (interference from other
    processes only ever adds, so the minimum is the steadiest estimate) and the median. Over HTTP: two
    ``serve`` subprocesses, alternating rounds, medians."""
    import statistics

    from monitor.service.settings import load_settings
    from monitor.service.sidecar import Sidecar

    modes = {"off": {}, f"{args.compare_samples:g}": {
        "samples": f"samples:\n  enabled: true\n  rate: {args.compare_samples}\n  path: {tmp / 'samples.sqlite3'}\n"}}
    configs = {}
    for mode, extra in modes.items():
        port = free_port()
        configs[mode] = (write_config(tmp, sae_path, sae, tmp / "detectors", port, **extra).read_text(), port)
    out = {"machine": machine(), "rounds": args.rounds, "batches": args.batches, "in_process": {}, "http": {},
           "samples_recorded": {}}
    # --- in process: one sidecar with samples enabled, switched off (rate 0, no turn bookkeeping) and on in
    # turn, so both modes run on the same objects and the same memory
    text, _ = configs[f"{args.compare_samples:g}"]
    path = tmp / "sidecar-in-process.yaml"
    path.write_text(text)
    side = Sidecar.load(load_settings(path, queue={"max_tokens": 1 << 22})).start()

    def switch(mode: str) -> None:
        on_ = mode != "off"
        side.sampler.rate = args.compare_samples if on_ else 0.0
        side.pipeline.track_turns = on_
        side.pipeline.generation.table.track_turns = on_

    try:
        for kind in ("prefill", "decode"):
            bodies = workload(kind, args.batches)
            for mode in modes:
                switch(mode)
                feed_in_process(side, bodies[:50])  # warm
            per = {m: [] for m in modes}
            for _ in range(args.rounds):
                for mode in modes:
                    switch(mode)
                    per[mode].append(feed_in_process(side, bodies))
            for mode, rs in per.items():
                out["in_process"][f"{mode}/{kind}"] = {
                    "worker_cpu_s_per_mtok_mean": statistics.mean(r["worker_cpu_s_per_mtok"] for r in rs),
                    "writer_cpu_s_per_mtok_mean": statistics.mean(r["writer_cpu_s_per_mtok"] for r in rs),
                    "cpu_s_per_mtok_min": min(r["cpu_s_per_mtok"] for r in rs),
                    "cpu_s_per_mtok_median": statistics.median(r["cpu_s_per_mtok"] for r in rs),
                    "tokens_per_s_max": max(r["tokens_per_s"] for r in rs),
                    "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in rs)}
        out["samples_recorded"]["in_process"] = int(side.metrics.samples_recorded._value.get())
    finally:
        side.close()
    # --- over HTTP
    if not args.no_http:
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for mode in modes:
                text, port = configs[mode]
                config = tmp / "sidecar.yaml"
                config.write_text(text)
                side = SidecarProcess.start(config, port, tmp / f"sidecar-{mode}.log")
                try:
                    for kind in ("prefill", "decode"):
                        runs[mode].append(run_http(side, kind, args.batches, args.clients))
                finally:
                    side.stop()
        for mode, rs in runs.items():
            for kind in ("prefill", "decode"):
                mine = [r for r in rs if r["workload"] == kind]
                out["http"][f"{mode}/{kind}"] = {
                    "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in mine),
                    "cpu_s_per_mtok_median": statistics.median(r["sidecar_cpu_s_per_mtok"] for r in mine)}
    out["machine_after"] = machine()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    on = f"{args.compare_samples:g}"
    print(f"machine: {out['machine']} (after: {out['machine_after']})\nsamples off vs rate {on}; "
          f"{args.batches} batches of 512 tokens per run, {args.rounds} alternating rounds\n")
    print(f"{'':<20}{'CPU s/Mtok off':>15}{'on':>8}{'cost':>8}{'tokens/s off':>14}{'on':>10}{'cost':>8}")
    for where, stat_cpu, stat_tps in (("in_process", "min", "max"), ("in_process", "median", "median"),
                                      ("http", "median", "median")):
        for kind in ("prefill", "decode"):
            a, b = out[where].get(f"off/{kind}"), out[where].get(f"{on}/{kind}")
            if a is None:
                continue
            ca, cb = a[f"cpu_s_per_mtok_{stat_cpu}"], b[f"cpu_s_per_mtok_{stat_cpu}"]
            ta, tb = a[f"tokens_per_s_{stat_tps}"], b[f"tokens_per_s_{stat_tps}"]
            label = f"{kind}, {'in process' if where == 'in_process' else 'HTTP'} ({stat_cpu})"
            print(f"{label:<20}{ca:>15.2f}{cb:>8.2f}{100 * (cb / ca - 1):>7.1f}%{ta:>14,.0f}{tb:>10,.0f}"
                  f"{100 * (1 - tb / ta):>7.1f}%")
    print(f"\nin process, per thread (mean of {args.rounds} rounds, CPU s / Mtok; clock ticks of 10 ms):")
    for kind in ("prefill", "decode"):
        a, b = out["in_process"][f"off/{kind}"], out["in_process"][f"{on}/{kind}"]
        wa, wb = a["worker_cpu_s_per_mtok_mean"], b["worker_cpu_s_per_mtok_mean"]
        print(f"  {kind:<8} scoring worker {wa:.2f} off, {wb:.2f} on ({100 * (wb / wa - 1):+.1f} %); samples writer "
              f"{b['writer_cpu_s_per_mtok_mean']:.3f} ({100 * b['writer_cpu_s_per_mtok_mean'] / wa:.1f} % of the worker)")
    print(f"\nsamples recorded: {out['samples_recorded']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=1500, help="timed batches per workload (512 tokens each)")
    ap.add_argument("--clients", type=int, default=3, help="concurrent keep-alive connections posting")
    ap.add_argument("--compare-samples", type=float, metavar="RATE",
                    help="side by side: traffic samples off and at RATE (e.g. 0.1)")
    ap.add_argument("--rounds", type=int, default=2, help="with --compare-samples: alternating rounds")
    ap.add_argument("--no-http", action="store_true", help="with --compare-samples: in process only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = workdir()
    if args.compare_samples:
        sae_path, sae, _ = bench_sae(tmp)
        four_detectors(sae, tmp / "detectors")
        compare_samples(args, tmp, sae_path, sae)
        return
    sae_path, sae, sae_desc = bench_sae(tmp)
    specs = four_detectors(sae, tmp / "detectors")
    port = free_port()
    config = write_config(tmp, sae_path, sae, tmp / "detectors", port)  # default queue and state bounds
    results = {"machine": machine(), "sae": sae_desc, "detectors": 4, "monitored_latents": 64,
               "batch": "512 tokens, float16", "clients": args.clients, "http": [], "in_process": []}
    side = SidecarProcess.start(config, port, tmp / "sidecar.log")
    try:
        for kind in ("prefill", "decode"):
            results["http"].append(run_http(side, kind, args.batches, args.clients))
        results["sidecar_rss_mb"] = round(side.rss_mb(), 1)
    finally:
        side.stop()
    for kind in ("prefill", "decode"):
        results["in_process"].append(run_in_process(sae, specs, kind, min(args.batches, 600)))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"machine: {results['machine']}\nSAE: {sae_desc}; 4 detectors, 64 monitored latents; "
          f"float16 batches of 512 tokens; {args.clients} client connections\n")
    print(f"{'over HTTP':<12}{'tokens/s':>12}{'sidecar CPU s/Mtok':>20}{'tok per sidecar CPU-s':>23}"
          f"{'429s':>7}{'worker step ms':>16}{'encode ms':>11}")
    for r in results["http"]:
        print(f"{r['workload']:<12}{r['tokens_per_s']:>12,}{r['sidecar_cpu_s_per_mtok']:>20}"
              f"{r['tokens_per_sidecar_cpu_s']:>23,}{r['http_429']:>7}{r['mean_worker_step_ms']:>16}"
              f"{r['mean_encode_ms']:>11}")
    print(f"\n{'in process':<12}{'tokens/s':>12}{'parse ms/batch':>16}{'worker ms/step':>16}")
    for r in results["in_process"]:
        print(f"{r['workload']:<12}{r['tokens_per_s']:>12,}{r['parse_ms_per_batch']:>16}{r['worker_ms_per_step']:>16}")
    worst = min(r["tokens_per_s"] for r in results["http"])
    print(f"\ntarget >= {TARGET:,} tokens/s over HTTP: {'met' if worst >= TARGET else 'MISSED'} "
          f"(slowest workload {worst:,}); sidecar RSS {results['sidecar_rss_mb']} MB")


if __name__ == "__main__":
    main()
