"""The vectorised per-request table scores exactly like ``detectors.scoring.RequestScores``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.scoring import DetectorBank
from detectors.spec import DetectorSpec
from monitor.service.request_table import RequestTable, TableFull

SHA = "cd" * 32


def spec(name, latents, weights, **kw) -> DetectorSpec:
    return DetectorSpec(name=name, concept=name, model="m", hook="h", sae_sha256=SHA, latents=list(latents),
                        weights=list(weights), bias=kw.pop("bias", -0.5), threshold=kw.pop("threshold", 1.0), **kw)


BANK = DetectorBank([
    spec("max_all", (3, 9, 1), (1.0, -0.5, 2.0)),
    spec("mean_resp", (9, 4), (1.5, 0.5), aggregation="mean", span="response"),
    spec("max_prompt", (1,), (3.0,), span="prompt"),
    spec("mean_all", (4, 3, 7), (0.2, 0.3, -1.0), aggregation="mean"),
    spec("max_resp", (7, 3), (1.0, 1.0), span="response"),
    spec("max_final", (3, 4), (1.0, -2.0), span="final_turn"),
    spec("mean_final", (9, 1), (0.7, 0.4), aggregation="mean", span="final_turn"),
])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6), st.integers(0, 1), st.integers(0, 10_000)),
                min_size=1, max_size=25))
def test_interleaved_chunks_of_many_requests_match_request_scores(chunks):
    """Chunks ``(request, n tokens, role, seed)`` of 4 requests, interleaved in random order."""
    u = len(BANK.latents)
    table = RequestTable(BANK, capacity=8)
    slots = [table.allocate() for _ in range(4)]
    reference = [BANK.new_request() for _ in range(4)]
    pos = [0] * 4
    # Group consecutive chunks into one table update, as a worker step would.
    for i in range(0, len(chunks), 3):
        group = chunks[i : i + 3]
        zs, rs, ss, ps = [], [], [], []
        for req, n, role, seed in group:
            z = torch.relu(torch.randn(n, u, generator=torch.Generator().manual_seed(seed)))
            roles = torch.full((n,), role, dtype=torch.uint8)
            reference[req].update(z, roles)
            zs.append(z), rs.append(roles), ss.append(torch.full((n,), slots[req])), ps.append(
                torch.arange(pos[req], pos[req] + n))
            pos[req] += n
        table.update(torch.cat(ss), torch.cat(zs), torch.cat(rs), torch.cat(ps))
    scores = table.scores(torch.tensor(slots))
    for req in range(4):
        for d in range(len(BANK.specs)):
            want, got = reference[req].score(d), float(scores[req, d])
            if want is None:
                assert math.isnan(got)
            else:
                assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
                assert torch.allclose(table.features(slots[req], d), reference[req].features(d), atol=1e-6)
        assert table.n_tokens(slots[req]) == reference[req].n_tokens


def test_release_forgets_everything_and_spans_track_positions():
    table = RequestTable(BANK, capacity=2)
    a = table.allocate()
    b = table.allocate()
    with pytest.raises(TableFull):
        table.allocate()
    u = len(BANK.latents)
    table.update(torch.tensor([a, a, b]), torch.ones(3, u), torch.tensor([0, 1, 1], dtype=torch.uint8),
                 torch.tensor([4, 5, 9]))
    assert table.span(a, 0) == (4, 6)  # span "all"
    assert table.span(a, 2) == (4, 5)  # span "prompt"
    assert table.span(b, 2) is None
    table.alerted[a, 0] = True
    table.release(a)
    assert table.active == 1
    a2 = table.allocate()
    assert a2 == a and not table.alerted[a2].any() and table.n_tokens(a2) == 0
    assert torch.isnan(table.scores(torch.tensor([a2]))).all()
