"""Detector specs and streaming scores: the running aggregate equals the whole-request score."""

from __future__ import annotations

import pytest
import torch

from detectors.scoring import DetectorBank, score_tokens
from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from detectors.spec import DetectorSpec, SpecError, load_specs

SHA = "ab" * 32


def spec(name="scam", latents=(5, 2, 9), weights=(1.0, -0.5, 2.0), **kw) -> DetectorSpec:
    base = {"name": name, "concept": name, "model": "m", "hook": "blocks.15.hook_resid_post", "sae_sha256": SHA,
                "latents": list(latents), "weights": list(weights), "bias": -1.0, "threshold": 0.5}
    base.update(kw)
    return DetectorSpec(**base)


def test_streamed_chunks_score_like_the_whole_request():
    specs = [spec(), spec("power", latents=(2, 7), weights=(1.5, 0.5), aggregation="mean", span="response"),
             spec("deception", latents=(9,), weights=(3.0,), span="prompt")]
    bank = DetectorBank(specs)
    assert bank.latents == [2, 5, 7, 9]
    g = torch.Generator().manual_seed(0)
    z = torch.relu(torch.randn(40, 4, generator=g))
    roles = torch.tensor([ROLE_PROMPT] * 25 + [ROLE_RESPONSE] * 15, dtype=torch.uint8)
    whole = bank.new_request()
    whole.update(z, roles)
    streamed = bank.new_request()
    streamed.update(z[:25], roles[:25])  # prefill
    for t in range(25, 40):  # decode steps
        streamed.update(z[t : t + 1], roles[t : t + 1])
    for i in range(3):
        assert streamed.score(i) == pytest.approx(whole.score(i), rel=1e-6)
    # Reference computation written out by hand.
    cols = {lat: j for j, lat in enumerate(bank.latents)}
    f = z[:, [cols[5], cols[2], cols[9]]].max(0).values
    assert whole.score(0) == pytest.approx(-1.0 + float(f @ torch.tensor([1.0, -0.5, 2.0])), rel=1e-6)
    resp = z[25:, [cols[2], cols[7]]].mean(0)
    assert whole.score(1) == pytest.approx(-1.0 + float(resp @ torch.tensor([1.5, 0.5])), rel=1e-6)
    assert whole.score(2) == pytest.approx(-1.0 + 3.0 * float(z[:25, cols[9]].max()), rel=1e-6)


def test_a_span_without_tokens_has_no_score_yet():
    bank = DetectorBank([spec(span="response")])
    req = bank.new_request()
    req.update(torch.ones(3, 3), torch.zeros(3, dtype=torch.uint8))
    assert req.score(0) is None


def test_score_tokens_matches_the_bank():
    s = spec()
    z = torch.relu(torch.randn(10, 3))
    roles = torch.zeros(10, dtype=torch.uint8)
    assert score_tokens(s, z, roles) == pytest.approx(-1.0 + float(z.max(0).values @ torch.tensor(s.weights)))


def test_severity_follows_the_thresholds():
    s = spec(severity_thresholds={"medium": 1.0, "high": 2.0, "critical": 4.0})
    assert [s.severity(v) for v in (0.4, 0.5, 1.5, 3.0, 9.0)] == [None, "low", "medium", "high", "critical"]
    with pytest.raises(ValueError, match="severity thresholds"):
        spec(severity_thresholds={"high": 0.1})


def test_spec_round_trip_and_rejections(tmp_path):
    s = spec()
    path = s.save(tmp_path / "scam.json")
    again = DetectorSpec.load(path)
    assert again == s and again.to_json() == s.to_json()
    assert '"schema": "safety-monitor.detector/v1"' in s.to_json()
    with pytest.raises(SpecError, match="calibrated for SAE"):
        again.check_sae("cd" * 32, d_sae=100)
    with pytest.raises(SpecError, match="uses latent 9"):
        again.check_sae(SHA, d_sae=5)
    with pytest.raises(SpecError, match="invalid detector spec"):
        DetectorSpec.from_json('{"name": "x"}')
    with pytest.raises(ValueError, match="weights"):
        spec(weights=(1.0,))


def test_no_signal_specs_are_refused_unless_forced(tmp_path):
    spec().save(tmp_path / "scam.json")
    spec("sycophancy", status="no_signal", status_reason="held-out AUROC CI includes 0.5").save(
        tmp_path / "sycophancy.json")
    with pytest.raises(SpecError, match="no_signal.*AUROC CI includes 0.5"):
        load_specs(tmp_path, sae_sha256=SHA, d_sae=100)
    assert [s.name for s in load_specs(tmp_path, sae_sha256=SHA, d_sae=100, include_no_signal=True)] == ["scam"]
    assert len(load_specs(tmp_path, sae_sha256=SHA, d_sae=100, force=True)) == 2


def test_final_turn_scores_the_prompt_until_the_response_starts():
    bank = DetectorBank([spec(latents=(0,), weights=(1.0,), bias=0.0, span="final_turn")])
    req = bank.new_request()
    req.update(torch.tensor([[5.0], [1.0]]), torch.tensor([ROLE_PROMPT, ROLE_PROMPT], dtype=torch.uint8))
    assert req.score(0) == 5.0
    req.update(torch.tensor([[2.0]]), torch.tensor([ROLE_RESPONSE], dtype=torch.uint8))
    assert req.score(0) == 2.0  # now only the response counts
