"""The window aggregation: its definition, and streamed scores equal to it after every chunk."""

from __future__ import annotations

import pytest
import torch

from detectors.scoring import DetectorBank, aggregate
from detectors.spec import DetectorSpec, SpecError
from monitor.service.request_table import RequestTable


def _spec(name="d", latents=(0, 1, 2), aggregation="window", span="response", window=4, **kw):
    return DetectorSpec(name=name, concept="c", model="m", hook="h", sae_sha256="0" * 64, latents=list(latents),
                        weights=[1.0] * len(latents), threshold=1.0, aggregation=aggregation, window=window, span=span,
                        **kw)


def test_window_is_the_largest_block_mean():
    z = torch.tensor([[1.0], [1.0], [1.0], [1.0], [9.0], [0.0], [0.0], [0.0], [0.0]])
    # blocks of 4: means 1.0 and 2.25; the trailing single token is under half a block: left out
    assert aggregate(z, "window", 4).item() == pytest.approx(2.25)
    assert aggregate(z[:2], "window", 4).item() == pytest.approx(1.0)  # shorter than a block: its mean
    assert aggregate(z[:7], "window", 4).item() == pytest.approx(3.0)  # trailing 3 of 4 count: (9+0+0)/3


def test_a_stretch_stands_out_in_a_long_text_and_a_lone_token_does_not():
    text = torch.full((2000, 1), 0.1)
    stretch, spike = text.clone(), text.clone()
    stretch[1000:1016] = 5.0  # 16 tokens of the concept inside a long ordinary text
    spike[1000] = 5.0  # one odd token
    assert aggregate(stretch, "mean", 16).item() < 0.15  # the mean dilutes the stretch
    assert aggregate(stretch, "window", 16).item() > 2.5  # a block holds at least half of it
    assert aggregate(spike, "max", 16).item() == 5.0  # the max lets one token decide
    assert aggregate(spike, "window", 16).item() < 0.5


@pytest.mark.parametrize("window", [1, 4, 16])
def test_streamed_scores_equal_the_offline_aggregate_at_every_chunk_boundary(window):
    torch.manual_seed(window)
    specs = [_spec("reply", (0, 1), window=window), _spec("request", (1, 2), span="prompt", window=window),
             _spec("mean", (0, 2), aggregation="mean", span="all"), _spec("max", (2,), aggregation="max", span="final_turn")]
    bank = DetectorBank(specs)
    table = RequestTable(bank, 8)
    slots = [table.allocate() for _ in range(4)]
    refs = {s: bank.new_request() for s in slots}
    seen = {s: ([], []) for s in slots}
    for _ in range(40):  # batches mixing tokens of several requests, in arrival order
        n = int(torch.randint(1, 14, ()))
        sl = torch.tensor([slots[i] for i in torch.randint(0, 4, (n,)).tolist()])
        z, roles = torch.rand(n, 3), torch.randint(0, 2, (n,), dtype=torch.uint8)
        table.update(sl, z, roles, torch.arange(n))
        for s in slots:
            m = sl == s
            refs[s].update(z[m], roles[m])
            seen[s][0].append(z[m])
            seen[s][1].append(roles[m])
        got = table.scores(torch.tensor(slots))
        for j, s in enumerate(slots):
            zz, rr = torch.cat(seen[s][0]), torch.cat(seen[s][1])
            for d, spec in enumerate(specs[:2]):  # the window detectors against the one definition
                role = 1 if spec.span == "response" else 0
                mine = zz[rr == role][:, spec.latents]
                if len(mine) == 0:
                    assert refs[s].score(d) is None and torch.isnan(got[j, d])
                    continue
                offline = float(aggregate(mine, "window", window).sum())
                assert refs[s].score(d) == pytest.approx(offline, abs=1e-4)
                assert float(got[j, d]) == pytest.approx(offline, abs=1e-4)
            for d in range(4):  # every aggregation: the table equals the per-request reference
                ref = refs[s].score(d)
                assert (ref is None and torch.isnan(got[j, d])) or float(got[j, d]) == pytest.approx(ref, abs=1e-4)


def test_window_needs_one_role_and_one_width_per_bank():
    with pytest.raises(ValueError, match="one role"):
        _spec(span="all")
    with pytest.raises(ValueError, match="response span"):
        _spec(kind="reply", span="prompt")
    with pytest.raises(SpecError, match="one window width"):
        DetectorBank([_spec("a", window=4), _spec("b", window=8)])
