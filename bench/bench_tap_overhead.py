"""Model forward time without the tap, with the tap and an in-process sink, and with the tap and the HTTP
sink, side by side in one run (SmolLM2-135M-Instruct, CPU, layer 15).

Two workloads: ``prefill`` (one forward over 4 prompts x 128 tokens) and ``generate`` (greedy
generation of 16 tokens for 4 prompts of 32 tokens: one prefill and 15 decode steps, where the tap's
per-call cost matters most). Modes are interleaved round by round (a block of calls each) and the
medians compared, so drift in machine load hits all modes alike.

    none      no hooks at all
    inproc    ActivationTap -> an in-process sink that keeps nothing (the tap's own cost: hooks,
              row selection, float16 copy, queue, delivery thread)
    http      ActivationTap -> HttpActivationSink -> a minimal HTTP receiver in another process
              (coalescing, safetensors serialisation, keep-alive POSTs; the receiver answers 202
              without parsing, so a sidecar's own CPU use is not counted against the model)

    .venv/bin/python bench/bench_tap_overhead.py [--rounds 8] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from sidecar_harness import free_port, machine

from monitor.lm.http_sink import HttpActivationSink, HttpSinkConfig
from monitor.lm.loading import load_model
from monitor.lm.tap import ActivationTap

LAYER = 15
TARGETS = {"inproc": 3.0, "http": 5.0}

RECEIVER = r"""
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(8)
REPLY = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
def serve(conn):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            d = conn.recv(1 << 20)
            if not d: return
            buf += d
        head, _, buf = buf.partition(b"\r\n\r\n")
        n = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        while len(buf) < n:
            d = conn.recv(1 << 20)
            if not d: return
            buf += d
        buf = buf[n:]
        conn.sendall(REPLY)
while True:
    c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


class Discard:
    """In-process sink that counts and keeps nothing."""

    def __init__(self) -> None:
        self.tokens = 0

    def __call__(self, batch) -> None:
        self.tokens += batch.n_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (each mode runs one block per round)")
    ap.add_argument("--block", type=int, default=2, help="timed calls per mode per round")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the model")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model()
    model, tok = lm.model, lm.tokenizer
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prefill_ids = torch.randint(100, vocab - 100, (4, 128), generator=g)
    gen_ids = torch.randint(100, vocab - 100, (4, 32), generator=g)
    mask_p, mask_g = torch.ones_like(prefill_ids), torch.ones_like(gen_ids)

    def prefill():
        with torch.inference_mode():
            model(input_ids=prefill_ids, attention_mask=mask_p)

    def generate():
        with torch.inference_mode():
            model.generate(input_ids=gen_ids, attention_mask=mask_g, max_new_tokens=16, min_new_tokens=16,
                           do_sample=False, pad_token_id=tok.pad_token_id)

    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    time.sleep(0.5)
    url = f"http://127.0.0.1:{port}"
    sink = HttpActivationSink(HttpSinkConfig(url=url, token="x" * 20, batch_tokens=512, linger_ms=5))
    inproc = Discard()
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for fn in (prefill, generate):  # warm-up
            fn()
        for _ in range(args.rounds):
            for work_name, work, mask in (("prefill", prefill, mask_p), ("generate", generate, mask_g)):
                for mode in ("none", "inproc", "http"):
                    tap = None
                    if mode != "none":
                        tap = ActivationTap(model, layer=LAYER, sink=inproc if mode == "inproc" else sink,
                                            model_id=lm.model_id)
                    for _ in range(args.block):
                        t0 = time.perf_counter()
                        if tap is None:
                            work()
                        else:
                            with tap.track(batch_size=4, attention_mask=mask):
                                work()
                        times.setdefault((work_name, mode), []).append(time.perf_counter() - t0)
                    if tap is not None:
                        tap.close()
                    if mode == "http":
                        sink.flush(30)
        stats = sink.stats
    finally:
        sink.close()
        receiver.kill()
        receiver.wait(5)
    result = {"machine": machine(), "model": lm.model_id, "layer": LAYER, "torch_threads": args.threads,
              "rounds": args.rounds, "block": args.block, "workloads": {},
              "http_sink": {"posts": stats.posts_ok, "tokens_sent": stats.tokens_sent,
                            "tokens_dropped": stats.tokens_dropped_queue_full + stats.tokens_dropped_failed}}
    for work_name in ("prefill", "generate"):
        base = statistics.median(times[(work_name, "none")])
        row = {"none_ms": round(1000 * base, 2)}
        for mode in ("inproc", "http"):
            m = statistics.median(times[(work_name, mode)])
            row[f"{mode}_ms"] = round(1000 * m, 2)
            row[f"{mode}_overhead_pct"] = round(100 * (m / base - 1), 2)
        result["workloads"][work_name] = row
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}\nmodel: {lm.model_id}, tap on layer {LAYER}, {args.threads} torch thread(s); "
          f"median of {args.rounds * args.block} calls per cell, modes interleaved\n")
    print(f"{'':<10}{'no tap ms':>11}{'in-process ms':>15}{'overhead':>10}{'HTTP sink ms':>14}{'overhead':>10}")
    for work_name, r in result["workloads"].items():
        print(f"{work_name:<10}{r['none_ms']:>11}{r['inproc_ms']:>15}{r['inproc_overhead_pct']:>9}%"
              f"{r['http_ms']:>14}{r['http_overhead_pct']:>9}%")
    h = result["http_sink"]
    print(f"\nHTTP sink: {h['posts']} posts, {h['tokens_sent']:,} tokens sent, {h['tokens_dropped']} dropped")
    worst = {m: max(r[f"{m}_overhead_pct"] for r in result["workloads"].values()) for m in TARGETS}
    for m, target in TARGETS.items():
        print(f"target {m} <= {target}%: {'met' if worst[m] <= target else 'MISSED'} (worst {worst[m]}%)")


if __name__ == "__main__":
    main()
