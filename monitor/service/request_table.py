"""Per-request running aggregates of many requests at once, in preallocated tensors.

``detectors.scoring.RequestScores`` keeps the aggregates of one request; it costs ~0.2 ms of Python
per update, so a batch of 512 one-token decode chunks from 512 requests would take ~100 ms. The
sidecar instead keeps the same aggregates for every active request in one table and updates all
rows of a batch with three scatter operations:

    max[slot, role, j]   running max of union latent j over the request's tokens of that role
    sum[slot, role, j]   running sum      count[slot, role]   tokens seen

and scores any set of requests with one matrix product per (aggregation, span) group of detectors.
The numbers equal ``RequestScores`` (same formula; tested against it), up to float32 summation order.
A table belongs to one ``DetectorBank``: after a detector reload, requests already in flight finish
on their old table while new requests start on the new one.
"""

from __future__ import annotations

import numpy as np
import torch

from detectors.scoring import DetectorBank, open_block_counts
from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE, SPANS, span_roles

_NO_POSITION = 2**62
_NO_ROLE = 255


class TableFull(RuntimeError):
    """No free slot: the caller must finalise (evict) a request first."""


class RequestTable:
    """Aggregates of up to ``capacity`` requests for one detector bank. Not thread-safe (one worker owns it)."""

    def __init__(self, bank: DetectorBank, capacity: int, *, track_turns: bool = False) -> None:
        self.bank = bank
        self.track_turns = track_turns
        """Count role runs per request (``turns``): only traffic samples need them (~0.08 ms per 512-token update)."""
        self.capacity = capacity
        u, d = len(bank.latents), len(bank.specs)
        # Row ``2 * slot + role`` holds one request's aggregates over the tokens of one role.
        self._max = torch.zeros(2 * capacity, u)
        self._sum = torch.zeros(2 * capacity, u)
        self._count = torch.zeros(2 * capacity, dtype=torch.float64)
        self.window = bank.window
        """Tokens per block of the ``window`` detectors (None: none in the bank, and no block state)."""
        rows_w = 2 * capacity if self.window else 0
        self._block_max = torch.zeros(rows_w, u)
        """``window``: per row, the largest mean of a completed block of ``window`` tokens."""
        self._block_sum = torch.zeros(rows_w, u)
        """``window``: per row, the sum of the open (incomplete) block."""
        self._peak_value = torch.full((2 * capacity, d), -torch.inf)
        """Per row and detector: the largest per-token score contribution ``z[cols] . weights`` so far."""
        self._peak_position = torch.full((2 * capacity, d), -1, dtype=torch.int64)
        """... and the position of that token (the alert's ``token_span.peak``)."""
        self._first = torch.full((2 * capacity,), _NO_POSITION, dtype=torch.int64)
        self._last = torch.full((2 * capacity,), -1, dtype=torch.int64)
        self._turns = torch.zeros(capacity, dtype=torch.int32)
        """``[capacity]`` role runs so far: a run of prompt or of response tokens, one message as the sidecar sees
        it (a system prompt merges into the user turn that follows it). Traffic samples record it."""
        self._last_role = torch.full((capacity,), _NO_ROLE, dtype=torch.uint8)
        self.alerted = torch.zeros(capacity, d, dtype=torch.bool)
        """``[capacity, n_detectors]``: this detector already alerted on the request in this slot."""
        self.last_seen = torch.zeros(capacity, dtype=torch.float64)
        """``[capacity]`` monotonic seconds of each request's latest chunk (kept by the caller via ``touch``)."""
        self.in_use = torch.zeros(capacity, dtype=torch.bool)
        """``[capacity]`` slot holds a request."""
        self.thresholds = torch.tensor([s.threshold for s in bank.specs], dtype=torch.float32)
        """``[n_detectors]``."""
        self.alert_while_streaming = torch.tensor([s.aggregation == "max" and min(s.weights) >= 0 for s in bank.specs],
                                                  dtype=torch.bool)
        """``[n_detectors]``: a running max only grows, so with non-negative weights a score that crosses the
        threshold mid-request stays above it and can alert at once. A negative weight on a growing max can
        pull the score back down (seen: a sycophancy detector alerting mid-reply on a finished score below
        its threshold), and a running mean or window can fall back, so those detectors are judged on the
        finished request, the score they were calibrated on."""
        self._free = list(range(capacity - 1, -1, -1))
        where = {lat: j for j, lat in enumerate(bank.latents)}
        self._cols = [torch.tensor([where[i] for i in s.latents], dtype=torch.long) for s in bank.specs]
        self._weights = [torch.tensor(s.weights, dtype=torch.float32) for s in bank.specs]
        self._cols_np = [c.numpy() for c in self._cols]
        self._contribution_t = torch.zeros(d, u)
        """``[n_detectors, u]``: each detector's weights at its latents' columns (per-token contributions);
        transposed like ``_block_t``: ``[d, u] @ [u, n]`` is ~3x faster on CPU than ``[n, u] @ [u, d]``."""
        for i in range(d):
            self._contribution_t[i, self._cols[i]] = self._weights[i]
        # Scoring is one matrix product: the feature variants the detectors need (max or mean over the
        # prompt, the response or both) side by side, times a block matrix holding each detector's
        # weights in the rows of its variant and its latents (zero elsewhere).
        self._variants = sorted({(s.aggregation, s.span) for s in bank.specs})
        # Stored transposed: [d, k] @ [k, m] is several times faster on CPU than [m, k] @ [k, d] for small d.
        self._block_t = torch.zeros(len(self._variants), d, u)
        for i, s in enumerate(bank.specs):
            v = self._variants.index((s.aggregation, s.span))
            self._block_t[v, i, self._cols[i]] = self._weights[i]
        self._bias = torch.tensor([s.bias for s in bank.specs], dtype=torch.float32)[:, None]
        self._span_names = [s.span for s in bank.specs]
        # Per span, the role indices it scores for a request with response tokens and without (None when the
        # same: the span's roles do not depend on the request).
        self._span_roles: dict[str, tuple[tuple[int, ...], tuple[int, ...] | None]] = {}
        for span in SPANS:
            with_r, without_r = span_roles(span, True), span_roles(span, False)
            self._span_roles[span] = (with_r, None if with_r == without_r else without_r)

    # ------------------------------------------------------------------ slots
    @property
    def active(self) -> int:
        """Slots in use."""
        return self.capacity - len(self._free)

    def allocate(self, now: float = 0.0) -> int:
        """A zeroed slot for a new request, seen at ``now``. Raises ``TableFull``."""
        if not self._free:
            raise TableFull(f"all {self.capacity} request slots are in use")
        slot = self._free.pop()
        self.in_use[slot] = True
        self.last_seen[slot] = now
        return slot

    def release(self, slot: int) -> None:
        """Forget the request in ``slot`` and make the slot reusable."""
        self.release_many([slot])

    def release_many(self, slots: list[int]) -> None:
        """Forget the requests in ``slots`` (distinct) and make the slots reusable."""
        if not slots:
            return
        idx = torch.tensor(slots, dtype=torch.long)
        rows = torch.cat([idx * 2, idx * 2 + 1])
        self._max.index_fill_(0, rows, 0)
        self._sum.index_fill_(0, rows, 0)
        if self.window:
            self._block_max.index_fill_(0, rows, 0)
            self._block_sum.index_fill_(0, rows, 0)
        self._count.index_fill_(0, rows, 0)
        self._first.index_fill_(0, rows, _NO_POSITION)
        self._last.index_fill_(0, rows, -1)
        self._peak_value.index_fill_(0, rows, -torch.inf)
        self._peak_position.index_fill_(0, rows, -1)
        self._turns.index_fill_(0, idx, 0)
        self._last_role.index_fill_(0, idx, _NO_ROLE)
        self.alerted.index_fill_(0, idx, False)
        self.in_use.index_fill_(0, idx, False)
        self._free.extend(slots)

    def touch(self, slots: torch.Tensor, now: float) -> None:
        """Record that the requests in ``slots`` received a chunk at ``now``."""
        self.last_seen.index_fill_(0, slots, now)

    def idle_slots(self, cutoff: float) -> list[int]:
        """Slots in use whose latest chunk is older than ``cutoff``."""
        return (self.in_use & (self.last_seen < cutoff)).nonzero().squeeze(1).tolist()

    def least_recent(self, k: int, before: float) -> list[tuple[float, int]]:
        """Up to ``k`` ``(last_seen, slot)`` of the least recently seen slots in use, seen before ``before``."""
        ok = self.in_use & (self.last_seen < before)
        n = int(ok.sum())
        if n == 0 or k <= 0:
            return []
        seen = torch.where(ok, self.last_seen, torch.inf)
        vals, idx = torch.topk(seen, min(k, n), largest=False)
        return list(zip(vals.tolist(), idx.tolist()))

    # ------------------------------------------------------------------ updating and scoring
    def update(self, slots: torch.Tensor, z: torch.Tensor, roles: torch.Tensor, positions: torch.Tensor) -> None:
        """Add tokens of many requests: ``slots [n]`` int64 (the slot of each token's request),
        ``z [n, n_union]`` latent values (>= 0), ``roles [n]`` uint8, ``positions [n]`` int."""
        if slots.numel() == 0:
            return
        key = slots * 2 + roles.to(torch.int64)
        z = z.to(torch.float32)
        if self.window:
            self._update_blocks(key, z)  # before the counts move: it needs each row's count so far
        # Latents are >= 0 and rows start at 0, so including the old value in the max is exact.
        self._max.scatter_reduce_(0, key[:, None].expand(-1, z.shape[1]), z, "amax")
        self._sum.index_add_(0, key, z)
        self._count.index_add_(0, key, torch.ones(key.shape[0], dtype=torch.float64))
        pos = positions.to(torch.int64)
        self._first.scatter_reduce_(0, key, pos, "amin")
        self._last.scatter_reduce_(0, key, pos, "amax")
        self._update_peaks(key, z, pos)
        if self.track_turns:
            self._count_turns(slots, roles)

    def _count_turns(self, slots: torch.Tensor, roles: torch.Tensor) -> None:
        """Count role runs. A request's tokens are contiguous within one update (one chunk per step), so each
        chunk adds the role changes inside it, plus one when it starts in another role than the request's last
        token. NumPy on views of the tensors: a dozen tiny operations, where torch's per-call overhead dominates
        (measured 0.08 ms per 512-token update against 0.16-0.21 ms for the same in torch, on a loaded machine)."""
        s, r = slots.numpy(), roles.numpy()
        n = s.shape[0]
        first = np.empty(n, dtype=bool)
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        last_role = self._last_role.numpy()
        prev = np.empty_like(r)
        prev[0] = 0
        prev[1:] = r[:-1]
        starts = np.flatnonzero(first)
        prev[starts] = last_role[s[starts]]
        self._turns.numpy()[s[starts]] += np.add.reduceat((r != prev).astype(np.int32), starts)
        ends = np.empty_like(starts)
        ends[:-1] = starts[1:] - 1
        ends[-1] = n - 1
        last_role[s[ends]] = r[ends]

    def _update_peaks(self, key: torch.Tensor, z: torch.Tensor, pos: torch.Tensor) -> None:
        """Keep, per row and detector, the token contributing most to the score so far, and where it is."""
        d = self._contribution_t.shape[0]
        if d == 0:
            return
        contribution = (self._contribution_t @ z.T).T  # [n, d]
        index = key[:, None].expand(-1, d)
        self._peak_value.scatter_reduce_(0, index, contribution, "amax")
        # A request's positions only grow, so among the tokens that now hold the peak the latest position
        # wins over the row's older one: one scatter, no boolean gathers (ties: the latest token).
        is_peak = contribution >= self._peak_value.index_select(0, key)
        self._peak_position.scatter_reduce_(0, index, torch.where(is_peak, pos[:, None], -1), "amax")

    def _update_blocks(self, key: torch.Tensor, z: torch.Tensor) -> None:
        """Add tokens (``key [n]`` row of each, in arrival order; ``z [n, u]``) to the rows' blocks of ``window``
        tokens: completed blocks' means join ``_block_max``, the open block's sum stays in ``_block_sum``."""
        w, n = self.window, key.shape[0]
        idx = torch.arange(n)
        order = torch.argsort(key, stable=True)
        sk = key[order]
        starts = torch.ones(n, dtype=torch.bool)
        starts[1:] = sk[1:] != sk[:-1]
        rank = torch.empty_like(idx)
        rank[order] = idx - torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), 0).values
        before = self._count.index_select(0, key).to(torch.int64)  # tokens of the row before this batch
        pair = key * (1 << 32) + (before + rank) // w  # (row, block) of each token
        pairs, inv = torch.unique(pair, return_inverse=True)
        sums = torch.zeros(len(pairs), z.shape[1]).index_add_(0, inv, z)
        counts = torch.zeros(len(pairs), dtype=torch.int64).index_add_(0, inv, torch.ones(n, dtype=torch.int64))
        rows, blocks = pairs >> 32, pairs & ((1 << 32) - 1)
        row_count = self._count.index_select(0, rows).to(torch.int64)
        was_open = blocks == row_count // w  # the block the row had open: add what it held
        sums[was_open] += self._block_sum.index_select(0, rows[was_open])
        complete = counts + torch.where(was_open, row_count % w, 0) == w
        if bool(complete.any()):  # means are >= 0 and rows start at 0: including the old value is exact
            self._block_max.scatter_reduce_(0, rows[complete][:, None].expand(-1, z.shape[1]),
                                            sums[complete] / w, "amax")
        self._block_sum.index_fill_(0, rows, 0)
        self._block_sum.index_copy_(0, rows[~complete], sums[~complete])  # at most one open block per row

    def _window_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The ``window`` aggregate (``detectors.scoring.aggregate``) of rows ``[...]``: ``[..., u]``."""
        w = self.window
        count = self._count[rows].to(torch.int64)
        done, rest = count // w, count % w
        use_open = open_block_counts(done, rest, w)
        best = self._block_max[rows]
        open_mean = self._block_sum[rows] / rest.clamp_min(1).to(torch.float32)[..., None]
        return torch.where(use_open[..., None], torch.maximum(best, open_mean), best)

    def scores(self, slots: torch.Tensor) -> torch.Tensor:
        """``[m, n_detectors]`` float32 scores of the requests in ``slots [m]``; NaN where the detector's
        role span has no tokens yet (as ``RequestScores.score`` returns None)."""
        m, d = slots.shape[0], len(self.bank.specs)
        if m == 0 or d == 0:
            return torch.full((m, d), float("nan"))
        u = len(self.bank.latents)
        mx = self._max.view(-1, 2, u).index_select(0, slots)  # [m, 2, u]
        sm = self._sum.view(-1, 2, u).index_select(0, slots)
        cnt = self._count.view(-1, 2).index_select(0, slots).to(torch.float32)  # [m, 2]
        has_response = cnt[:, ROLE_RESPONSE : ROLE_RESPONSE + 1] > 0  # [m, 1]
        spans = {span for _, span in self._variants} | set(self._span_names)

        def by_span(a: torch.Tensor, span: str, combine) -> torch.Tensor:
            """``a [m, 2, ...]`` combined over the roles ``span`` scores (``detectors.spans.span_roles``)."""
            with_r, without_r = self._span_roles[span]

            def over(roles: tuple[int, ...]) -> torch.Tensor:  # views where one role is enough: no copies
                return a[:, roles[0]] if len(roles) == 1 else combine(a if len(roles) == 2 else a[:, list(roles)])

            if without_r is None:  # the roles do not depend on the request
                return over(with_r)
            return torch.where(has_response.view(-1, *[1] * (a.dim() - 2)), over(with_r), over(without_r))

        def total(a: torch.Tensor) -> torch.Tensor:
            return a.sum(1)

        counts = {span: by_span(cnt, span, total) for span in spans}  # [m]
        out = self._bias.expand(d, m).clone()  # [d, m]: transposed, see __init__
        if self.window:
            windowed = self._window_rows(slots[:, None] * 2 + torch.arange(2))  # [m, 2, u]
        for v, (agg, span) in enumerate(self._variants):
            if agg == "max":
                feats = by_span(mx, span, lambda a: a.amax(1))
            elif agg == "window":
                feats = by_span(windowed, span, lambda a: a.amax(1))
            else:
                feats = by_span(sm, span, total) / counts[span].clamp_min(1)[:, None]
            out.addmm_(self._block_t[v], feats.T)
        out = out.T
        span_counts = torch.stack([counts[span] for span in self._span_names], 1)  # [m, n_detectors]
        return torch.where(span_counts > 0, out, float("nan"))

    def has_response(self, slot: int) -> bool:
        """The request in ``slot`` has response tokens."""
        return float(self._count[2 * slot + ROLE_RESPONSE]) > 0

    def _roles(self, slot: int, span: str) -> tuple[int, ...]:
        return span_roles(span, self.has_response(slot))

    def features(self, slot: int, detector: int) -> torch.Tensor:
        """Aggregated values ``[k]`` of one detector's latents (in spec order) for one request."""
        spec = self.bank.specs[detector]
        roles = self._roles(slot, spec.span)
        cols = self._cols[detector]
        if spec.aggregation == "max":
            return torch.stack([self._max[2 * slot + r, cols] for r in roles]).max(dim=0).values
        if spec.aggregation == "window":
            return torch.stack([self._window_rows(torch.tensor(2 * slot + r))[cols] for r in roles]).max(dim=0).values
        count = sum(float(self._count[2 * slot + r]) for r in roles)
        total = sum(self._sum[2 * slot + r, cols] for r in roles)
        return total / max(count, 1.0)

    def all_features(self, slot: int) -> list[np.ndarray]:
        """``features(slot, d)`` of every detector as float32 arrays, read in one pass through NumPy views of the
        request's rows (the traffic samples; a torch call per detector and role cost ~4x more)."""
        lo = 2 * slot
        mx, sm = self._max.numpy()[lo:lo + 2], self._sum.numpy()[lo:lo + 2]
        cnt = self._count.numpy()[lo:lo + 2]
        win = self._window_rows(torch.arange(lo, lo + 2)).numpy() if self.window else None
        has_response = bool(cnt[ROLE_RESPONSE] > 0)
        done: dict[tuple[str, str], np.ndarray] = {}
        out = []
        for d, spec in enumerate(self.bank.specs):
            key = (spec.aggregation, spec.span)
            agg = done.get(key)
            if agg is None:
                roles = span_roles(spec.span, has_response)
                if len(roles) == 1:
                    (r,) = roles
                    agg = (mx[r] if spec.aggregation == "max" else win[r] if spec.aggregation == "window"
                           else sm[r] / max(float(cnt[r]), 1.0))
                elif spec.aggregation == "max":
                    agg = np.maximum(mx[0], mx[1])
                elif spec.aggregation == "window":
                    agg = np.maximum(win[0], win[1])
                else:
                    agg = (sm[0] + sm[1]) / max(float(cnt[0] + cnt[1]), 1.0)
                done[key] = agg = agg.astype(np.float32, copy=False)
            out.append(agg[self._cols_np[d]])
        return out

    def token_contributions(self, z: torch.Tensor, detector: int) -> torch.Tensor:
        """Per-token score contribution ``z[:, cols] . weights`` of one detector: ``[n]``."""
        return z[:, self._cols[detector]].to(torch.float32) @ self._weights[detector]

    def span(self, slot: int, detector: int) -> tuple[int, int] | None:
        """``(first, last + 1)`` token positions of the request inside the detector's role span."""
        roles = self._roles(slot, self.bank.specs[detector].span)
        first = min(int(self._first[2 * slot + r]) for r in roles)
        last = max(int(self._last[2 * slot + r]) for r in roles)
        return None if last < 0 else (first, last + 1)

    def peak(self, slot: int, detector: int) -> tuple[int, int] | None:
        """``(position, role)`` of the token of the request's span contributing most to the detector's score
        so far (None before the span has tokens)."""
        roles = self._roles(slot, self.bank.specs[detector].span)
        best = max(roles, key=lambda r: float(self._peak_value[2 * slot + r, detector]))
        position = int(self._peak_position[2 * slot + best, detector])
        return None if position < 0 else (position, best)

    def n_tokens(self, slot: int) -> int:
        """Tokens of the request aggregated so far (both roles)."""
        return int(self._count[2 * slot] + self._count[2 * slot + 1])

    def role_counts(self, slot: int) -> tuple[int, int]:
        """``(prompt, response)`` tokens of the request aggregated so far."""
        cnt = self._count.numpy()
        return int(cnt[2 * slot + ROLE_PROMPT]), int(cnt[2 * slot + ROLE_RESPONSE])

    def turns(self, slot: int) -> int:
        """Role runs of the request so far (``_turns``): 2 for a user turn and a reply."""
        return int(self._turns.numpy()[slot])

    @property
    def nbytes(self) -> int:
        """Memory held by the table's tensors."""
        ts = (self._max, self._sum, self._count, self._first, self._last, self.alerted, self._block_max,
              self._block_sum, self._peak_value, self._peak_position, self._turns, self._last_role)
        return sum(t.numel() * t.element_size() for t in ts)
