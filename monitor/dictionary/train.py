"""``safety-monitor sae train``: dictionary learning, a BatchTopK SAE trained on collected activations.

Recipe (Gao et al. 2024 "Scaling and evaluating sparse autoencoders"; Bussmann et al. 2024 "BatchTopK"):

* inputs scaled by one constant so the mean token norm is sqrt(d_in) (folded into the weights on save);
* ``b_dec`` starts at the data mean; decoder rows have unit norm (renormalised after every step, and
  the gradient component along each row removed); the encoder starts as the decoder transpose;
* BatchTopK: the ``k * batch`` largest pre-activations of the whole batch survive, so tokens get a
  varying number of latents; at inference a single global threshold (set after training where a
  batch of 32k training tokens would be cut) replaces the batch, which makes the SAE a JumpReLU SAE whose latents each
  depend on their own encoder column only: the sidecar computes only the latents it needs, exactly;
* AuxK: latents that have not fired for ``dead_after_tokens`` tokens are "dead"; the top ``aux_k`` of
  their pre-activations must reconstruct the residual error (loss weight ``aux_coef``), which revives them;
* Adam, linear warm-up then linear decay to zero over the last ``decay_fraction`` of steps.

Only ``k`` of ``d_sae`` pre-activations per token reach the loss, so both halves of the SAE are
trained sparsely: the decoder runs as an ``embedding_bag`` over the active latents, and the encoder's
backward pass (``SelectedPreactivations``) sums over the selected (token, latent) pairs instead of
multiplying dense ``[batch, d_sae]`` gradients, most of which are zero: 28x less work for that step,
and a step about twice as fast on CPU. The dense forward pass that picks the latents may run under
bf16 autocast (``compute_dtype``). Checkpoints (``checkpoint.pt``) are written every ``checkpoint_every`` steps
and a rerun resumes from the last one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from monitor.sae import FrozenSAE, SAEConfig


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (the CLI exposes every field)."""

    d_sae: int = 9216
    """Number of latents (16 x d_in for SmolLM2's 576)."""
    k: int = 64
    """Mean active latents per token (BatchTopK budget)."""
    batch_tokens: int = 2048
    """Tokens per optimisation step."""
    epochs: float = 1.0
    """Passes over the collected tokens."""
    lr: float = 5e-4
    """Peak Adam learning rate."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    decay_fraction: float = 0.3
    """Final share of steps over which the learning rate falls linearly to zero."""
    aux_k: int = 256
    """Dead latents used by the AuxK loss."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_after_tokens: int = 250_000
    """A latent silent for this many tokens counts as dead."""
    threshold_tokens: int = 32_768
    """Tokens used after training to set the global inference threshold."""
    max_norm_ratio: float = 10.0
    """Tokens whose norm exceeds this multiple of the median are left out (attention-sink-like outliers)."""
    checkpoint_every: int = 200
    """Steps between checkpoints."""
    compute_dtype: str = "float32"
    """Precision of the encoder's dense forward matmul: float32, or bfloat16 (autocast, ~1.7x faster on
    CPUs with AVX512-BF16; the weights, gradients and optimiser stay float32)."""
    seed: int = 0
    """Seed for initialisation and the shuffle."""


class BatchTopKSAE(torch.nn.Module):
    """The trainable SAE (in the scaled input space)."""

    def __init__(self, d_in: int, d_sae: int, k: int) -> None:
        super().__init__()
        self.k = k
        w = torch.randn(d_sae, d_in)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w)
        self.W_enc = torch.nn.Parameter(w.T.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.register_buffer("threshold", torch.tensor(-1.0))

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode_sparse(self, idx: torch.Tensor, vals: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(idx, self.W_dec, offsets, mode="sum", per_sample_weights=vals) + self.b_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the gradient component that would change each decoder row's norm."""
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec


class SelectedPreactivations(torch.autograd.Function):
    """``pre[rows, cols]`` of ``pre = (x - b_dec) @ W_enc + b_enc``, given the values, with a sparse backward.

    ``forward(xc, W_enc, b_enc, rows, cols, offsets, vals)``: ``xc = x - b_dec [n, d_in]``, the selected
    positions sorted by row (``offsets``: start of each row's entries) and their values (> 0, so the
    ReLU passes the gradient). The backward computes ``xc^T G`` and ``G W_enc^T`` for the sparse
    gradient ``G`` as two ``embedding_bag`` sums over the selected pairs.
    """

    @staticmethod
    def forward(ctx, xc, w_enc, b_enc, rows, cols, offsets, vals):
        ctx.save_for_backward(xc, w_enc, rows, cols, offsets)
        return vals.clone()

    @staticmethod
    def backward(ctx, grad):
        xc, w_enc, rows, cols, offsets = ctx.saved_tensors
        d_sae = w_enc.shape[1]
        grad_xc = F.embedding_bag(cols, w_enc.t().contiguous(), offsets, mode="sum", per_sample_weights=grad)
        by_col = torch.argsort(cols, stable=True)
        col_counts = torch.bincount(cols, minlength=d_sae)
        col_offsets = torch.cat([col_counts.new_zeros(1), col_counts.cumsum(0)[:-1]])
        grad_w = F.embedding_bag(rows[by_col], xc, col_offsets, mode="sum", per_sample_weights=grad[by_col])
        grad_b = torch.bincount(cols, weights=grad, minlength=d_sae).to(grad.dtype)
        return grad_xc, grad_w.t(), grad_b, None, None, None, None


def _batch_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions of the ``k * n`` largest entries of ``pre [n, d_sae]`` (all > 0), sorted by row.

    A flat top-k over n * d_sae entries costs ~0.5 s on one CPU core; instead take each row's top
    ``4k`` candidates and the global top ``k * n`` among them. That is exact unless some row has more
    than ``4k`` entries above the global cut-off, which is checked, falling back to the flat top-k.
    Returns ``rows, cols, offsets`` (offsets: start of each row's entries).
    """
    n, d = pre.shape
    budget = k * n
    per_row = min(4 * k, d)
    cand_vals, cand_cols = pre.topk(per_row, dim=1, sorted=False)
    vals, flat = cand_vals.flatten().topk(min(budget, cand_vals.numel()), sorted=False)
    cutoff = vals.min()
    if per_row < d and bool((cand_vals.min(dim=1).values > cutoff).any()):
        vals, flat_full = pre.flatten().topk(budget, sorted=False)
        rows, cols = flat_full // d, flat_full % d
    else:
        rows = flat // per_row
        cols = cand_cols.flatten()[flat]
    keep = vals > 0
    rows, cols = rows[keep], cols[keep]
    order = torch.argsort(rows, stable=True)
    rows, cols = rows[order], cols[order]
    counts = torch.bincount(rows, minlength=n)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
    return rows, cols, offsets


class ActivationStore:
    """All collected activations in memory (float16), shuffled per epoch, outliers removed."""

    def __init__(self, shards: list[np.ndarray], max_norm_ratio: float, seed: int, chunk: int = 1 << 18) -> None:
        data = torch.from_numpy(np.concatenate([np.asarray(s) for s in shards]))
        # Statistics chunk by chunk: a float32 copy of millions of tokens would double the peak memory.
        norms = torch.cat([data[i : i + chunk].float().norm(dim=1) for i in range(0, len(data), chunk)])
        keep = norms <= max_norm_ratio * norms.median()
        self.n_outliers = int((~keep).sum())
        self.data = data[keep] if self.n_outliers else data
        del data
        self.mean_norm = float(norms[keep].double().mean())
        self.mean = sum(self.data[i : i + chunk].double().sum(dim=0) for i in range(0, len(self.data), chunk))
        self.mean = (self.mean / max(1, len(self.data))).float()
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.data.shape[0]

    def epoch_order(self) -> torch.Tensor:
        return torch.randperm(len(self), generator=self.gen)


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_sae(store: ActivationStore, out: Path, cfg: TrainConfig, *, model_name: str, hook_name: str,
              progress: bool = True, dataset: str = "", device: torch.device | str | None = None) -> FrozenSAE:
    """Train on ``store``, checkpointing to ``out/checkpoint.pt``; returns the FrozenSAE (JumpReLU,
    scale folded in) and writes it to ``out/final`` in our format. ``device``: where the SAE and each
    batch live (default: CUDA when present); the activations stay in host memory."""
    device = torch.device(device) if device is not None else default_device()
    if cfg.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be float32 or bfloat16, not {cfg.compute_dtype!r}")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    d_in = store.data.shape[1]
    scale = math.sqrt(d_in) / store.mean_norm
    sae = BatchTopKSAE(d_in, cfg.d_sae, cfg.k)
    with torch.no_grad():
        sae.b_dec.copy_(store.mean * scale)
    sae.to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    steps_per_epoch = len(store) // cfg.batch_tokens
    total_steps = max(1, int(steps_per_epoch * cfg.epochs))
    decay_start = int(total_steps * (1 - cfg.decay_fraction))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * (
        1.0 if s < decay_start else max(0.0, (total_steps - s) / max(1, total_steps - decay_start))))
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
    step = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=device)
        if state["config"] != asdict(cfg):
            raise ValueError(f"{ckpt} was written with a different config; delete it or use another --out")
        sae.load_state_dict(state["sae"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        since_fired = state["since_fired"].to(device)
        step = state["step"]
        store.gen.set_state(state["gen"].cpu())
    order = store.epoch_order() if step == 0 else state["order"]
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc="train SAE", unit="step")
    t0, s0 = time.perf_counter(), step
    while step < total_steps:
        pos = (step % steps_per_epoch) * cfg.batch_tokens
        if step > 0 and pos == 0:
            order = store.epoch_order()
        x = store.data[order[pos : pos + cfg.batch_tokens]].to(device, non_blocking=True).float() * scale
        xc = x - sae.b_dec
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.compute_dtype == "bfloat16"):
            pre = torch.relu(xc @ sae.W_enc + sae.b_enc).float()
        with torch.no_grad():
            rows, cols, offsets = _batch_topk(pre, cfg.k)
        vals = SelectedPreactivations.apply(xc, sae.W_enc, sae.b_enc, rows, cols, offsets, pre[rows, cols])
        recon = sae.decode_sparse(cols, vals, offsets)
        err = x - recon
        total_var = (x - x.mean(0)).pow(2).sum()
        mse = err.pow(2).sum(dim=1).mean()
        fvu = err.pow(2).sum() / total_var
        dead = since_fired >= cfg.dead_after_tokens
        aux = torch.zeros((), device=device)
        n_dead = int(dead.sum())
        if n_dead:
            aux_k = min(cfg.aux_k, n_dead)
            dead_ids = torch.nonzero(dead).squeeze(1)
            dead_pre = torch.relu((x - sae.b_dec) @ sae.W_enc[:, dead_ids] + sae.b_enc[dead_ids])
            a_vals, a_idx = dead_pre.topk(aux_k, dim=1)
            flat_cols = dead_ids[a_idx].flatten()
            a_offsets = torch.arange(0, x.shape[0] * aux_k, aux_k, device=device)
            e_hat = F.embedding_bag(flat_cols, sae.W_dec, a_offsets, mode="sum", per_sample_weights=a_vals.flatten())
            target = err.detach()
            aux = (e_hat - target).pow(2).sum(dim=1).mean() / target.pow(2).sum(dim=1).mean().clamp_min(1e-8)
        loss = mse / d_in + cfg.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.project_decoder_grad()
        opt.step()
        sched.step()
        sae.normalise_decoder()
        with torch.no_grad():
            fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=device)
            fired[cols] = True
            since_fired += x.shape[0]
            since_fired[fired] = 0
        step += 1
        bar.update(1)
        if step % 10 == 0 or step == total_steps:
            rate = (step - s0) * cfg.batch_tokens / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", fvu=f"{float(fvu.detach()):.3f}", l0=f"{len(vals) / x.shape[0]:.1f}",
                            dead=f"{n_dead / cfg.d_sae:.3f}", tok_s=f"{rate:,.0f}")
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            tmp = out / "checkpoint.pt.tmp"
            torch.save({"config": asdict(cfg), "sae": sae.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "since_fired": since_fired, "step": step,
                        "gen": store.gen.get_state(), "order": order}, tmp)
            os.replace(tmp, ckpt)
    bar.close()
    set_global_threshold(sae, store, scale, cfg.threshold_tokens)
    sae.cpu()
    frozen = to_frozen(sae, scale, model_name=model_name, hook_name=hook_name, metadata={
        "training": {**asdict(cfg), "tokens_seen": step * cfg.batch_tokens, "steps": step,
                     "n_train_tokens": len(store), "outliers_removed": store.n_outliers},
        "dataset": dataset, "input_scale": scale})
    frozen.save(out / "final")
    return frozen


@torch.no_grad()
def set_global_threshold(sae: BatchTopKSAE, store: ActivationStore, scale: float, n_tokens: int) -> float:
    """Set the inference threshold to the value a batch of ``n_tokens`` would cut at: the
    ``k * n``-th largest pre-activation, so that the mean L0 at inference equals ``k`` on training data.
    (An EMA of per-batch minima, the usual estimate, lags badly when training has few steps.)"""
    n = min(n_tokens, len(store))
    idx = torch.randperm(len(store), generator=torch.Generator().manual_seed(1))[:n]
    per_row = min(4 * sae.k, sae.W_enc.shape[1])
    device = sae.W_enc.device
    cands = torch.cat([sae.pre(store.data[idx[i : i + 4096]].to(device).float() * scale).topk(per_row, dim=1).values.flatten()
                       for i in range(0, n, 4096)])
    thr = float(cands.topk(sae.k * n).values.min())
    sae.threshold.fill_(thr)
    return thr


@torch.no_grad()
def to_frozen(sae: BatchTopKSAE, scale: float, *, model_name: str, hook_name: str, metadata: dict) -> FrozenSAE:
    """Fold the input scale into the weights and turn the BatchTopK threshold into a JumpReLU SAE.

    ``pre = (x*s - b) @ W + c = (x - b/s) @ (s*W) + c``; the decoder output divides by ``s``:
    ``z @ (W_dec/s) + b/s``. Latent values are unchanged, so the threshold carries over as is.
    """
    thr = float(sae.threshold.clamp_min(0))
    weights = {
        "W_enc": (sae.W_enc * scale).detach().clone(),
        "b_enc": sae.b_enc.detach().clone(),
        "W_dec": (sae.W_dec / scale).detach().clone(),
        "b_dec": (sae.b_dec / scale).detach().clone(),
        "threshold": torch.full((sae.W_enc.shape[1],), thr),
    }
    cfg = SAEConfig(d_in=sae.W_enc.shape[0], d_sae=sae.W_enc.shape[1], architecture="jumprelu", k=sae.k,
                    apply_b_dec_to_input=True, model_name=model_name, hook_name=hook_name,
                    metadata={**metadata, "trained_as": "batchtopk", "global_threshold": thr})
    return FrozenSAE(cfg, weights)
