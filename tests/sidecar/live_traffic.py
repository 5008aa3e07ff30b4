"""Synthetic conversations for the live-calibration tests: calibrated detectors on the small test SAE, and
wire batches of benign traffic that either looks like the calibration set or does not.

Two detectors read the test SAE (``sidecar_testkit.make_sae``: latent ``j`` reads input dim ``j % 16``):

    deception   reply detector: max over the response of latents 3 and 19 (input dim 3)
    scam        request detector: max over the prompt of latents 7 and 23 (input dim 7)

A conversation's level on dim 3 (response tokens) and dim 7 (prompt tokens) is drawn per request. The
calibration set is single-turn with levels U(0, 1); the "drift" traffic is benign multi-turn chat whose
replies sit at U(0.5, 1.5) on dim 3: unlike the calibration set for the deception detector only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sidecar_testkit import HOOK, MODEL, make_spec

from detectors.calibration.thresholds import sliced_threshold
from detectors.scoring import score_tokens
from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from detectors.spec import CalibrationRecord, DetectorSpec
from detectors.traffic_slices import TRAFFIC_SLICES, traffic_slices
from monitor.sae import FrozenSAE
from monitor.wire import ActivationBatch

TOKENS = 25
"""Tokens per conversation (position 0 is the attention sink)."""


def conversation(rng: np.random.Generator, *, turns: int, reply_level: tuple[float, float],
                 prompt_level: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """``(activations [TOKENS, 16] float16, roles [TOKENS] uint8)`` of one conversation of ``turns`` role runs."""
    x = rng.normal(0.0, 0.02, size=(TOKENS, 16)).astype(np.float32)
    runs = np.array_split(np.arange(TOKENS), turns)
    roles = np.zeros(TOKENS, dtype=np.uint8)
    for i, run in enumerate(runs):
        roles[run] = ROLE_PROMPT if i % 2 == 0 else ROLE_RESPONSE
    reply, prompt = rng.uniform(*reply_level), rng.uniform(*prompt_level)
    x[roles == ROLE_RESPONSE, 3] += reply + rng.normal(0, 0.01, size=int((roles == ROLE_RESPONSE).sum()))
    x[roles == ROLE_PROMPT, 7] += prompt + rng.normal(0, 0.01, size=int((roles == ROLE_PROMPT).sum()))
    return torch.from_numpy(x).to(torch.float16), torch.from_numpy(roles)


def calibration_set(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    return [conversation(rng, turns=2, reply_level=(0.0, 1.0)) for _ in range(n)]


def drift_traffic(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Benign multi-turn chats (8 role runs) whose replies score higher than the calibration set's."""
    rng = np.random.default_rng(seed)
    return [conversation(rng, turns=8, reply_level=(0.5, 1.5)) for _ in range(n)]


def calibrated_detectors(sae: FrozenSAE, directory: Path, n_benign: int = 1000, target_fpr: float = 0.01
                         ) -> list[DetectorSpec]:
    """Both detectors, thresholds set on ``calibration_set`` by the offline rule (``sliced_threshold``), saved."""
    specs = []
    convs = calibration_set(n_benign)
    base = {"deception": {"latents": (3, 19), "kind": "reply", "span": "response"},
            "scam": {"latents": (7, 23), "kind": "request", "span": "prompt"}}
    for name, kw in base.items():
        draft = make_spec(sae, name, latents=kw["latents"], weights=(1.0, 1.0), threshold=0.0, kind=kw["kind"],
                          span=kw["span"], severity_thresholds={})
        scores, member = [], []
        for x, roles in convs:
            keep = slice(1, None)  # the attention sink is never scored
            z = sae.encode_latents(x[keep].float(), list(draft.latents))
            scores.append(score_tokens(draft, z, roles[keep]))
            member.append(traffic_slices(int((np.diff(roles.numpy()) != 0).sum()) + 1, TOKENS - 1))
        scores = np.array(scores)
        masks = {s: np.array([s in m for m in member]) for s in TRAFFIC_SLICES}
        sliced = sliced_threshold(scores, masks, target_fpr, 0.05)
        choice = sliced.by_slice.get(sliced.binding) or sliced.pooled
        record = CalibrationRecord(target_fpr=target_fpr, achieved_fpr=choice.calibration_fpr, n_benign=choice.n_benign,
                                   fpr_upper_bound=choice.fpr_upper_bound, delta=0.05, datasets={"synthetic": "0" * 64},
                                   date="2026-11-30")
        spec = draft.model_copy(update={"threshold": sliced.threshold, "calibration": record,
                                        "severity_thresholds": {"medium": float(scores.max()) + 1e-6}})
        spec = DetectorSpec.model_validate(spec.model_dump(by_alias=True))
        spec.save(directory / f"{name}.json")
        specs.append(spec)
    return specs


def batches(convs: list[tuple[torch.Tensor, torch.Tensor]], prefix: str, per_batch: int = 50,
            sae_sha256: str = "") -> list[tuple[list[str], ActivationBatch]]:
    """Wire batches of ``per_batch`` whole, final conversations each; their request ids."""
    out = []
    for start in range(0, len(convs), per_batch):
        chunk = convs[start:start + per_batch]
        ids = [f"{prefix}-{start + i}" for i in range(len(chunk))]
        n = TOKENS * len(chunk)
        out.append((ids, ActivationBatch(
            activations=torch.cat([x for x, _ in chunk]), token_ids=31_337 + torch.arange(n, dtype=torch.int32) % 7,
            positions=torch.arange(TOKENS, dtype=torch.int32).repeat(len(chunk)),
            roles=torch.cat([r for _, r in chunk]),
            offsets=torch.arange(0, n + 1, TOKENS, dtype=torch.int64), request_ids=ids, final=[True] * len(chunk),
            model=MODEL, hook=HOOK, sae_sha256=sae_sha256)))
    return out
