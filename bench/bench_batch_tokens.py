"""Activations of long sequences: 16 per forward vs a padded-token budget per forward, side by side.

Runs the model to layer 15 over the same sequences (random token ids, bf16 autocast as the detector
activation job runs it) through ``monitor.lm.runner.tap_sequences`` with ``max_batch_tokens`` off and
on, alternating, and prints wall time, user and kernel CPU time per policy and the speed-up. At 16 x
1,280 tokens the forward's intermediates are large enough that the allocator maps fresh pages at every
op, which shows as kernel time.

    .venv/bin/python bench/bench_batch_tokens.py [--length 1280] [--n 16] [--budget 2048] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from monitor.lm.loading import load_model
from monitor.lm.runner import tap_sequences


def cpu_times() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=1280)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m-instruct")
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(100, lm.tokenizer.vocab_size, (args.length,), generator=g) for _ in range(args.n)]
    totals: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, budget in ((f"{args.n} per forward", None), (f"<= {args.budget} tokens per forward", args.budget)):
            u0, s0 = cpu_times()
            t0 = time.perf_counter()
            for _ in tap_sequences(lm, 15, seqs, batch_size=16, compute_dtype="bfloat16", max_batch_tokens=budget):
                pass
            wall = time.perf_counter() - t0
            u1, s1 = cpu_times()
            t = totals.setdefault(name, [0.0, 0.0, 0.0])
            t[0] += wall
            t[1] += u1 - u0
            t[2] += s1 - s0
    print(f"{args.n} sequences of {args.length} tokens, {args.rounds} rounds, {args.threads} threads, bf16 autocast")
    for name, (wall, user, sys_) in totals.items():
        print(f"  {name:28s} {wall / args.rounds:6.1f} s per round   user {user / args.rounds:5.1f} s   "
              f"kernel {sys_ / args.rounds:5.1f} s   {args.n * args.length * args.rounds / wall:6.0f} tokens/s")
    (a, b) = (v[0] for v in totals.values())
    print(f"  speed-up {a / b:.2f}x")


if __name__ == "__main__":
    main()
