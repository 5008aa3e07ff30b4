"""One SAE training step three ways, side by side in one run.

A 576 x 9216 BatchTopK SAE (k = 64), a batch of 2048 random activations, CPU. Times the forward
pass, the latent selection, the sparse decoder, the backward pass and the optimiser step of:

* ``dense``: the encoder's gradient through autograd over the dense ``[batch, d_sae]`` pre-activations
  (how the first trainer worked);
* ``sparse``: ``SelectedPreactivations``, the backward pass over the ``k * batch`` selected pairs only;
* ``sparse+bf16``: the same, with the dense forward matmul under bf16 autocast (``--compute-dtype bfloat16``).

Rounds alternate between the three; medians are printed with the ratios against ``dense``.

    .venv/bin/python bench/bench_sae_train_step.py [--threads 2] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from monitor.dictionary.train import BatchTopKSAE, SelectedPreactivations, _batch_topk

D_IN, D_SAE, K, BATCH = 576, 9216, 64, 2048
PHASES = ("forward", "select", "decode", "backward", "optimiser")


def make_step(variant: str, sae: BatchTopKSAE, opt: torch.optim.Optimizer, x: torch.Tensor):
    """A function running one step of ``variant`` and returning the seconds spent in each phase."""

    def step() -> dict[str, float]:
        t = [time.perf_counter()]
        xc = x - sae.b_dec
        if variant == "dense":
            pre = torch.relu(xc @ sae.W_enc + sae.b_enc)
        else:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "sparse+bf16"):
                pre = torch.relu(xc @ sae.W_enc + sae.b_enc).float()
        t.append(time.perf_counter())
        with torch.no_grad():
            rows, cols, offsets = _batch_topk(pre.detach(), K)
        t.append(time.perf_counter())
        if variant == "dense":
            vals = pre[rows, cols]
        else:
            vals = SelectedPreactivations.apply(xc, sae.W_enc, sae.b_enc, rows, cols, offsets, pre[rows, cols])
        loss = (x - sae.decode_sparse(cols, vals, offsets)).pow(2).sum(dim=1).mean()
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        sae.project_decoder_grad()
        opt.step()
        sae.normalise_decoder()
        t.append(time.perf_counter())
        return {p: t[i + 1] - t[i] for i, p in enumerate(PHASES)}

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(BATCH, D_IN)
    variants = ("dense", "sparse", "sparse+bf16")
    steps = {}
    for v in variants:
        sae = BatchTopKSAE(D_IN, D_SAE, K)
        steps[v] = make_step(v, sae, torch.optim.Adam(sae.parameters(), lr=1e-4), x)
        steps[v]()  # warm-up
    times: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            times[v].append(steps[v]())
    result = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "batch": BATCH,
              "d_sae": D_SAE, "k": K, "variants": {}}
    for v in variants:
        phases = {p: statistics.median(r[p] for r in times[v]) for p in PHASES}
        total = statistics.median(sum(r.values()) for r in times[v])
        result["variants"][v] = {"step_s": total, "tokens_per_s": BATCH / total, **{f"{p}_s": s for p, s in phases.items()}}
    dense = result["variants"]["dense"]["step_s"]
    for v in variants:
        result["variants"][v]["speedup_vs_dense"] = dense / result["variants"][v]["step_s"]
    if args.json:
        print(json.dumps(result))
        return
    print(f"SAE training step, {D_IN}x{D_SAE}, k={K}, batch {BATCH}, {args.threads} threads, median of {args.rounds}")
    print(f"{'variant':<13}" + "".join(f"{p:>11}" for p in PHASES) + f"{'step':>9}{'tok/s':>9}{'speed-up':>10}")
    for v, r in result["variants"].items():
        print(f"{v:<13}" + "".join(f"{r[p + '_s']:>10.3f}s" for p in PHASES)
              + f"{r['step_s']:>8.3f}s{r['tokens_per_s']:>9,.0f}{r['speedup_vs_dense']:>9.2f}x")


if __name__ == "__main__":
    main()
