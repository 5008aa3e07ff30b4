"""Scoring detectors over streamed tokens: per-request running aggregates, bounded memory.

A request reaches the sidecar as a prefill chunk and then many one-token decode chunks. ``DetectorBank``
holds the detectors of one SAE: the union of their latents (the only columns the SAE computes) and,
per detector, where its latents sit in that union. ``RequestScores`` keeps, per detector, a running
max (or sum and count) per latent over the tokens of its role span, so the score after any chunk
equals the score of the whole request so far, in O(latents) memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detectors.spans import ROLE_RESPONSE, ROLES, span_roles
from detectors.spec import AGGREGATIONS, DetectorSpec, SpecError, linear_score


def open_block_counts(done, rest, window: int):
    """Whether the ``window`` aggregate includes the open (trailing) block of ``rest`` tokens after ``done``
    complete blocks: once it is at least half full, or when it is the only block. Ints or tensors."""
    return (rest > 0) & ((done == 0) | (rest >= (window + 1) // 2))


def aggregate(z: torch.Tensor, how: str, window: int) -> torch.Tensor:
    """The one definition of a detector's aggregation: ``z [n, k]`` latent values of the span's tokens, in
    order, to ``[k]`` features (zeros for no tokens). Streaming scorers are tested equal to it after every
    chunk.

    ``max``     the largest value: one token decides; over a long prompt it only grows.
    ``mean``    the mean: does not grow with length, but one scam paragraph in a long chat fades.
    ``window``  the span cut into consecutive blocks of ``window`` tokens; the mean of each block, then the
                largest block mean. The trailing partial block counts once it is at least half full, or
                when it is the only block (a span shorter than ``window`` / 2: its mean). A long benign
                conversation does not add up to an alert, and a short stretch of scam still stands out.
    """
    n, k = z.shape
    if n == 0:
        return torch.zeros(k)
    if how == "max":
        return z.max(dim=0).values
    if how == "mean":
        return z.mean(dim=0)
    if how != "window":
        raise ValueError(f"unknown aggregation {how!r}; use one of {', '.join(AGGREGATIONS)}")
    full = n // window
    rem = n - full * window
    parts = []
    if full:
        parts.append(z[: full * window].reshape(full, window, k).mean(dim=1).max(dim=0).values)
    if open_block_counts(full, rem, window):
        parts.append(z[full * window :].mean(dim=0))
    return torch.stack(parts).max(dim=0).values


@dataclass(frozen=True)
class _Compiled:
    spec: DetectorSpec
    cols: torch.Tensor  # positions of this detector's latents in the bank's union
    weights: torch.Tensor  # [k]


class DetectorBank:
    """The detectors scored together on one SAE; ``latents`` is what the SAE must compute."""

    def __init__(self, specs: list[DetectorSpec]) -> None:
        self.specs = list(specs)
        union = sorted({i for s in specs for i in s.latents})
        self.latents: list[int] = union
        """Sorted union of all detectors' latent ids: pass to ``FrozenSAE.encode_latents``."""
        where = {lat: j for j, lat in enumerate(union)}
        self._compiled = [
            _Compiled(s, torch.tensor([where[i] for i in s.latents], dtype=torch.long),
                      torch.tensor(s.weights, dtype=torch.float32))
            for s in specs
        ]
        widths = {s.window for s in specs if s.aggregation == "window"}
        if len(widths) > 1:
            raise SpecError(f"window detectors scored together must share one window width, got {sorted(widths)}")
        self.window: int | None = widths.pop() if widths else None
        """Tokens per block of the bank's ``window`` detectors (None: it has none)."""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def new_request(self) -> RequestScores:
        return RequestScores(self)

    def token_contributions(self, z: torch.Tensor, detector: int) -> torch.Tensor:
        """``weight_j * z_tj`` for one detector: ``[n_tokens, k]`` (what each latent adds per token)."""
        c = self._compiled[detector]
        return z[:, c.cols].float() * c.weights


class RequestScores:
    """Running aggregates of one request for every detector of a bank."""

    def __init__(self, bank: DetectorBank) -> None:
        self.bank = bank
        n = len(bank.latents)
        self.n_tokens = 0
        # Per role: running max and sum of every union latent, and the token count; detectors pick theirs.
        self._max = {r: torch.zeros(n) for r in ROLES}
        self._sum = {r: torch.zeros(n) for r in ROLES}
        self._count = dict.fromkeys(ROLES, 0)
        # ``window``: per role, the largest mean of a completed block and the sum of the open block.
        self._block_max = {r: torch.zeros(n) for r in ROLES}
        self._block_sum = {r: torch.zeros(n) for r in ROLES}

    def update(self, z: torch.Tensor, roles: torch.Tensor) -> None:
        """Add tokens: ``z [n, len(bank.latents)]`` latent values, ``roles [n]`` uint8."""
        if z.shape[0] == 0:
            return
        z = z.float()
        self.n_tokens += z.shape[0]
        for r in ROLES:
            sel = roles == r
            n = int(sel.sum())
            if n == 0:
                continue
            zr = z[sel]
            self._max[r] = torch.maximum(self._max[r], zr.max(dim=0).values)  # latents are >= 0
            self._sum[r] += zr.sum(dim=0)
            if self.bank.window:
                self._add_to_blocks(r, zr)
            self._count[r] += n

    def _add_to_blocks(self, r: int, zr: torch.Tensor) -> None:
        w, seen, i = self.bank.window, self._count[r], 0
        while i < zr.shape[0]:
            take = min(w - seen % w, zr.shape[0] - i)
            self._block_sum[r] += zr[i : i + take].sum(dim=0)
            seen, i = seen + take, i + take
            if seen % w == 0:  # a block is complete: means are >= 0, so a zero start is exact in the max
                self._block_max[r] = torch.maximum(self._block_max[r], self._block_sum[r] / w)
                self._block_sum[r] = torch.zeros_like(self._block_sum[r])

    def features(self, detector: int) -> torch.Tensor | None:
        """Aggregated latent values ``[k]`` of one detector, or None when its span has no tokens yet."""
        c = self.bank._compiled[detector]
        roles = span_roles(c.spec.span, has_response=self._count[ROLE_RESPONSE] > 0)
        count = sum(self._count[r] for r in roles)
        if count == 0:
            return None
        if c.spec.aggregation == "max":
            agg = torch.stack([self._max[r] for r in roles]).max(dim=0).values
        elif c.spec.aggregation == "window":  # one role (the spec's validator): see ``aggregate``
            (r,) = roles
            w, n = self.bank.window, self._count[r]
            done, rest = divmod(n, w)
            agg = self._block_max[r]
            if open_block_counts(done, rest, w):
                agg = torch.maximum(agg, self._block_sum[r] / rest)
        else:
            agg = sum(self._sum[r] for r in roles) / count
        return agg[c.cols]

    def score(self, detector: int) -> float | None:
        """``bias + weights . features``, or None when the span has no tokens yet."""
        f = self.features(detector)
        if f is None:
            return None
        c = self.bank._compiled[detector]
        return float(linear_score(c.spec.bias, c.weights, f))

    def scores(self) -> dict[str, float | None]:
        return {s.name: self.score(i) for i, s in enumerate(self.bank.specs)}


def score_tokens(spec: DetectorSpec, z: torch.Tensor, roles: torch.Tensor) -> float | None:
    """Score one whole request in one go (offline jobs): ``z [n, len(spec.latents)]`` in spec order."""
    bank = DetectorBank([spec])
    order = torch.tensor([bank.latents.index(i) for i in spec.latents])
    zz = torch.zeros(z.shape[0], len(bank.latents))
    zz[:, order] = z.float()
    req = bank.new_request()
    req.update(zz, roles)
    return req.score(0)
