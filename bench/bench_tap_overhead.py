"""Model forward time without the tap and with it, side by side in one run, on the CPU or a CUDA GPU.

Shapes (``--shape``):

    default     the embedded SmolLM2-135M-Instruct with its real weights (CPU; the original benchmark)
    smollm2     SmolLM2-135M's config with random weights (30 layers, d 576), tap on layer 15
    llama3-8b   Llama-3-8B's config with random weights (32 layers, d 4096), tap on layer 16
    tiny        a 4-layer, d 64 Llama with random weights: runs in seconds (CI runs it)

No download: random weights are built from the config on the chosen device (bf16 on CUDA by default).
Two workloads: ``prefill`` (one forward over B prompts x T tokens) and ``generate`` (greedy generation of
N tokens for P prompts: one prefill and N-1 decode steps, where the tap's per-call cost matters most).
Modes, interleaved round by round (a block of calls each), medians compared, so drift in machine load
hits all modes alike:

    none      no hooks at all
    raw       ActivationTap shipping activations (float16) to a sink that keeps nothing: hooks, row
              selection on the device, the side-stream copy to pinned host memory (CUDA), the queue, the
              delivery thread
    latent    ActivationTap encoding at the tap: 64 JumpReLU latents of a random SAE slice on the model's
              device, shipped as [n, 64]
    http      (``--shape default`` only) raw, to HttpActivationSink posting to a minimal receiver in
              another process (coalescing, serialisation, keep-alive POSTs; the receiver answers 202
              without parsing, so no sidecar CPU is charged to the model)

    .venv/bin/python bench/bench_tap_overhead.py                                  # default, CPU
    .venv/bin/python bench/bench_tap_overhead.py --device cpu --shape tiny --rounds 2
    .venv/bin/python bench/bench_tap_overhead.py --device cuda --shape llama3-8b  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from sidecar_harness import free_port, machine

from monitor.lm.http_sink import HttpActivationSink, HttpSinkConfig
from monitor.lm.tap import ActivationTap
from monitor.sae import FrozenSAE, SAEConfig

TARGET_PCT = 3.0
N_LATENTS = 64


@dataclass(frozen=True)
class Shape:
    layers: int
    d_model: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    rope_theta: float
    tap_layer: int
    prefill: tuple[int, int]
    """(prompts, tokens) of the prefill workload."""
    generate: tuple[int, int, int]
    """(prompts, prompt tokens, new tokens) of the generate workload."""
    tie_embeddings: bool = False


SHAPES = {
    "llama3-8b": Shape(32, 4096, 14336, 32, 8, 128256, 500000.0, 16, (8, 512), (32, 64, 64)),
    "smollm2": Shape(30, 576, 1536, 9, 3, 49152, 100000.0, 15, (8, 512), (32, 64, 64), tie_embeddings=True),
    "tiny": Shape(4, 64, 128, 4, 2, 512, 10000.0, 2, (2, 16), (2, 8, 4)),
}
CPU_WORKLOADS = {"default": ((4, 128), (4, 32, 16)), "smollm2": ((4, 128), (4, 32, 16)),
                 "llama3-8b": ((1, 64), (1, 16, 4))}

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
        self.latent_tokens = 0

    def __call__(self, batch) -> None:
        self.tokens += batch.n_tokens
        if batch.is_latents:
            self.latent_tokens += batch.n_tokens


def random_model(shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A Llama-architecture causal LM with random weights from ``shape``, built on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.d_model, intermediate_size=shape.intermediate,
                      num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, rope_theta=shape.rope_theta, max_position_embeddings=8192,
                      tie_word_embeddings=shape.tie_embeddings, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the model dtype: no float32 copy first (32 GB at 8B parameters)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg).to(dtype)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    model.generation_config.eos_token_id = None  # random weights: always generate the full length
    model.generation_config.pad_token_id = 0
    return model


def random_sae_slice(d_model: int, device: torch.device, dtype: torch.dtype, d_sae: int = 131_072) -> FrozenSAE:
    """The monitored slice (64 latents) of a random JumpReLU SAE of ``d_sae`` latents, on ``device``: what
    ``FrozenSAE.load(path, latents=S, device=...)`` gives the tap, without writing a file."""
    g = torch.Generator().manual_seed(1)
    latents = tuple(sorted(torch.randperm(d_sae, generator=g)[:N_LATENTS].tolist()))
    w = torch.randn(d_model, N_LATENTS, generator=g) / d_model**0.5
    weights = {"W_enc": w, "b_enc": torch.zeros(N_LATENTS), "b_dec": torch.zeros(d_model),
               "threshold": torch.full((N_LATENTS,), 0.5)}
    cfg = SAEConfig(d_in=d_model, d_sae=d_sae, architecture="jumprelu")
    return FrozenSAE(cfg, weights, device=device, dtype=dtype, loaded_latents=latents, sha256="0" * 64)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--shape", default="default", choices=["default", *SHAPES])
    ap.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (each mode runs one block per round)")
    ap.add_argument("--block", type=int, default=2, help="timed calls per mode per round")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--modes", default=None, help="comma-separated subset of none,raw,latent,http")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available here")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.shape == "default":
        from monitor.lm.loading import load_model

        lm = load_model(dtype=dtype)
        model, model_id, layer = lm.model.to(device), lm.model_id, 15
        vocab, d_model = model.config.vocab_size, model.config.hidden_size
    else:
        shape = SHAPES[args.shape]
        model, model_id, layer = random_model(shape, device, dtype), f"random-{args.shape}", shape.tap_layer
        vocab, d_model = shape.vocab, shape.d_model
    if args.shape in SHAPES and (device.type == "cuda" or args.shape == "tiny"):
        (pb, pt), (gb, gt, gn) = SHAPES[args.shape].prefill, SHAPES[args.shape].generate
    else:
        (pb, pt), (gb, gt, gn) = CPU_WORKLOADS[args.shape]
    modes = args.modes.split(",") if args.modes else (["none", "raw", "latent", "http"] if args.shape == "default"
                                                      else ["none", "raw", "latent"])
    g = torch.Generator().manual_seed(0)
    prefill_ids = torch.randint(100, vocab - 100, (pb, pt), generator=g).to(device)
    gen_ids = torch.randint(100, vocab - 100, (gb, gt), generator=g).to(device)
    mask_p, mask_g = torch.ones_like(prefill_ids), torch.ones_like(gen_ids)
    encoder = random_sae_slice(d_model, device, dtype) if "latent" in modes else None

    def prefill():
        with torch.inference_mode():
            model(input_ids=prefill_ids, attention_mask=mask_p, use_cache=False)

    def generate():
        with torch.inference_mode():
            model.generate(input_ids=gen_ids, attention_mask=mask_g, max_new_tokens=gn, min_new_tokens=gn,
                           do_sample=False, pad_token_id=0)

    receiver = sink = None
    if "http" in modes:
        port = free_port()
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
        time.sleep(0.5)
        sink = HttpActivationSink(HttpSinkConfig(url=f"http://127.0.0.1:{port}", token="x" * 20, batch_tokens=512,
                                                 linger_ms=5))
    discard = Discard()
    times: dict[tuple[str, str], list[float]] = {}
    dropped = 0
    try:
        for fn in (prefill, generate):  # warm-up (kernels, allocator, pinned-memory cache)
            fn()
        sync(device)
        for _ in range(args.rounds):
            for work_name, work, mask in (("prefill", prefill, mask_p), ("generate", generate, mask_g)):
                for mode in modes:
                    tap = None
                    if mode != "none":
                        kw = {"encoder": encoder, "latents": encoder.loaded_latents} if mode == "latent" else {}
                        tap = ActivationTap(model, layer=layer, sink=sink if mode == "http" else discard,
                                            model_id=model_id, **kw)
                    for _ in range(args.block):
                        sync(device)
                        t0 = time.perf_counter()
                        if tap is None:
                            work()
                        else:
                            with tap.track(batch_size=mask.shape[0], attention_mask=mask):
                                work()
                        sync(device)
                        times.setdefault((work_name, mode), []).append(time.perf_counter() - t0)
                    if tap is not None:
                        tap.flush(60)
                        dropped += tap.stats.tokens_dropped
                        tap.close()
                    if mode == "http":
                        sink.flush(30)
        stats = sink.stats if sink is not None else None
    finally:
        if sink is not None:
            sink.close()
        if receiver is not None:
            receiver.kill()
            receiver.wait(5)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"machine": machine(), "device": device_name, "shape": args.shape, "model": model_id,
              "dtype": str(dtype).removeprefix("torch."), "layer": layer, "torch_threads": args.threads,
              "rounds": args.rounds, "block": args.block, "prefill": [pb, pt], "generate": [gb, gt, gn],
              "latents": N_LATENTS if encoder is not None else 0, "tokens_dropped": dropped,
              "tokens_delivered": discard.tokens, "latent_tokens": discard.latent_tokens, "workloads": {}}
    if stats is not None:
        result["http_sink"] = {"posts": stats.posts_ok, "tokens_sent": stats.tokens_sent,
                               "tokens_dropped": stats.tokens_dropped_queue_full + stats.tokens_dropped_failed}
    for work_name in ("prefill", "generate"):
        base = statistics.median(times[(work_name, "none")])
        row = {"none_ms": round(1000 * base, 2)}
        for mode in modes[1:]:
            m = statistics.median(times[(work_name, mode)])
            row[f"{mode}_ms"] = round(1000 * m, 2)
            row[f"{mode}_overhead_pct"] = round(100 * (m / base - 1), 2)
        result["workloads"][work_name] = row
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}; device: {device_name}\nmodel: {model_id} ({result['dtype']}), tap on layer "
          f"{layer}; prefill {pb} x {pt}, generate {gb} prompts x {gt} + {gn} new; median of "
          f"{args.rounds * args.block} calls per cell, modes interleaved\n")
    head = f"{'':<10}{'no tap ms':>11}" + "".join(f"{m + ' ms':>12}{'overhead':>10}" for m in modes[1:])
    print(head)
    for work_name, r in result["workloads"].items():
        print(f"{work_name:<10}{r['none_ms']:>11}" + "".join(
            f"{r[f'{m}_ms']:>12}{r[f'{m}_overhead_pct']:>9}%" for m in modes[1:]))
    print(f"\ntokens delivered {discard.tokens:,} ({discard.latent_tokens:,} as latents), dropped {dropped}")
    for m in modes[1:]:
        worst = max(r[f"{m}_overhead_pct"] for r in result["workloads"].values())
        print(f"target {m} <= {TARGET_PCT}%: {'met' if worst <= TARGET_PCT else 'MISSED'} (worst {worst}%)")


if __name__ == "__main__":
    main()
