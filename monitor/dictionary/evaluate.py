"""``safety-monitor sae eval``: how well an SAE reconstructs activations, and what that costs the model.

Two kinds of numbers:

* activation level, on held-out tokens: fraction of variance unexplained
  ``FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``, mean L0 (active latents per token), and the
  dead fraction (latents never active on the evaluated tokens). A rare latent fires once in tens of
  thousands of tokens, so "never active" needs many tokens to mean "dead": ``activation_sequences``
  adds sequences read only to layer L (cheap) to the token set of these three numbers; the CLI
  reads 250k held-out tokens, the window training uses to call a latent dead. As in training, tokens
  whose norm exceeds ``max_norm_ratio`` (10) times the batch median are left out of these numbers and
  counted: a second attention sink (SmolLM2 makes one now and then at position 1, norm ~25 000 against
  ~170) would otherwise be most of the squared error (88 % of it on 41k held-out tokens, from one token);
* model level: next-token cross-entropy with the SAE reconstruction spliced into the residual stream
  at layer L, against the clean model and against zero-ablating that layer's output:
  ``CE loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)``, and the mean KL divergence
  ``KL(p_clean || p_sae)`` per token.

Position 0 of each sequence (the attention sink) is never spliced or scored: it is left as the
model computed it, exactly as it is left out of training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from monitor.lm.loading import LoadedModel
from monitor.lm.tap import resolve_module
from monitor.sae import FrozenSAE


@dataclass
class SAEMetrics:
    """Evaluation of one SAE on one token set."""

    fvu: float
    """Fraction of variance unexplained (lower is better; target <= 0.15)."""
    l0: float
    """Mean active latents per token."""
    dead_fraction: float
    """Share of latents never active on the evaluated tokens."""
    ce_clean: float
    """Next-token cross-entropy of the unmodified model (nats)."""
    ce_sae: float
    """Cross-entropy with the reconstruction spliced in at layer L."""
    ce_zero: float
    """Cross-entropy with layer L's output zeroed."""
    ce_loss_recovered: float
    """(ce_zero - ce_sae) / (ce_zero - ce_clean); target >= 0.90."""
    kl_div: float
    """Mean KL(clean || spliced) per scored token (nats)."""
    n_tokens: int
    """Tokens scored for CE and KL (position 0 and padding excluded)."""
    n_sequences: int
    """Sequences scored for CE and KL."""
    n_activation_tokens: int = 0
    """Tokens FVU, L0 and the dead fraction are measured on (these and the extra activation sequences)."""
    n_outlier_tokens: int = 0
    """Tokens left out of FVU, L0 and the dead fraction for a norm above ``max_norm_ratio`` x the median."""

    def to_dict(self) -> dict:
        return asdict(self)


class _Splice:
    """Forward hook that replaces a layer's output at positions >= 1 (mode: ``sae``, ``zero``)."""

    def __init__(self, sae: FrozenSAE) -> None:
        self.sae = sae
        self.mode = "clean"

    def __call__(self, module, args, output):
        if self.mode == "clean":
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        new = hidden.clone()
        if self.mode == "zero":
            new[:, 1:] = 0
        else:
            b, t, d = hidden.shape
            rec = self.sae.reconstruct(hidden[:, 1:].reshape(-1, d)).to(hidden.dtype)
            new[:, 1:] = rec.reshape(b, t - 1, d)
        return (new, *output[1:]) if isinstance(output, tuple) else new


class _ActivationStats:
    """Running FVU, L0 and fired-latent statistics over batches of activations."""

    def __init__(self, sae: FrozenSAE, max_norm_ratio: float) -> None:
        self.sae, self.max_norm_ratio = sae, max_norm_ratio
        self.n_outliers = 0
        self.sse = self.sum_x2 = self.l0_sum = 0.0
        self.sum_x: torch.Tensor | float = 0.0
        self.n = 0
        self.fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)

    def add(self, x: torch.Tensor) -> None:
        if len(x) == 0:
            return
        x = x.float()
        norms = x.norm(dim=1)
        keep = norms <= self.max_norm_ratio * norms.median()
        self.n_outliers += int((~keep).sum())
        x = x[keep]
        z = self.sae.encode(x)
        self.sse += float((x - self.sae.decode(z)).pow(2).sum())
        self.sum_x = self.sum_x + x.sum(0).double()
        self.sum_x2 += float(x.double().pow(2).sum())
        self.n += x.shape[0]
        active = z > 0
        self.l0_sum += float(active.sum())
        self.fired |= active.any(0).cpu()

    def fvu(self) -> float:
        total_var = self.sum_x2 - float((self.sum_x * self.sum_x).sum()) / self.n
        return self.sse / total_var


@torch.no_grad()
def evaluate_sae(lm: LoadedModel, sae: FrozenSAE, sequences: list[torch.Tensor], *, layer: int,
                 activation_sequences: list[torch.Tensor] = (), batch_size: int = 8, max_norm_ratio: float = 10.0,
                 module_path: str = "model.layers.{layer}", progress: bool = True) -> SAEMetrics:
    """Evaluate ``sae`` on ``sequences`` (each ``[n]`` int64 token ids, n >= 2) read by ``lm``;
    ``activation_sequences`` only add tokens to FVU, L0 and the dead fraction (see the module docstring)."""
    module = resolve_module(lm.model, module_path.format(layer=layer))
    splice = _Splice(sae)
    captured: list[torch.Tensor] = []

    def capture(mod, args, output):
        if splice.mode == "clean":
            captured.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [module.register_forward_hook(capture), module.register_forward_hook(splice)]
    pad = lm.tokenizer.pad_token_id or 0
    stats = _ActivationStats(sae, max_norm_ratio)
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    kl_sum = 0.0
    n_scored = 0
    try:
        for i in tqdm(range(0, len(sequences), batch_size), disable=not progress, desc="eval SAE", unit="batch"):
            chunk = [s for s in sequences[i : i + batch_size] if len(s) >= 2]
            if not chunk:
                continue
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.int64)
            mask = torch.zeros(len(chunk), width, dtype=torch.int64)
            for r, s in enumerate(chunk):
                ids[r, : len(s)] = s
                mask[r, : len(s)] = 1
            valid = mask.bool()
            valid[:, 0] = False  # the attention sink
            # next-token targets at positions 1..T-2 (predicting the token after each)
            score = valid[:, :-1] & mask[:, 1:].bool()
            logp = {}
            for mode in ("clean", "sae", "zero"):
                splice.mode = mode
                captured.clear()
                logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                lp = F.log_softmax(logits, dim=-1)
                nll = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
                ce[mode] += float(nll[score].sum())
                logp[mode] = lp[score]
                if mode == "clean":
                    stats.add(captured[0][valid])
            kl_sum += float((logp["clean"].exp() * (logp["clean"] - logp["sae"])).sum())
            n_scored += int(score.sum())
    finally:
        for h in handles:
            h.remove()
    if stats.n == 0 or n_scored == 0:
        raise ValueError("no tokens to evaluate: give sequences of at least 2 tokens")
    n_ce_tokens = stats.n
    if activation_sequences:
        from monitor.lm.runner import tap_sequences

        bar = tqdm(total=sum(len(s) for s in activation_sequences), disable=not progress, unit="tok",
                   unit_scale=True, desc="eval SAE: more tokens for FVU, L0, dead latents")
        for results in tap_sequences(lm, layer, activation_sequences, batch_size=batch_size, dtype=torch.float32):
            for _, batch in results:
                stats.add(batch.activations[batch.positions > 0])
                bar.update(batch.n_tokens)
        bar.close()
    ce_clean, ce_sae, ce_zero = (ce[m] / n_scored for m in ("clean", "sae", "zero"))
    return SAEMetrics(
        fvu=stats.fvu(), l0=stats.l0_sum / stats.n, dead_fraction=float((~stats.fired).float().mean()),
        ce_clean=ce_clean, ce_sae=ce_sae, ce_zero=ce_zero,
        ce_loss_recovered=(ce_zero - ce_sae) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
        kl_div=kl_sum / n_scored, n_tokens=n_ce_tokens, n_sequences=len(sequences), n_activation_tokens=stats.n,
        n_outlier_tokens=stats.n_outliers,
    )
