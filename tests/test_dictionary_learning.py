"""Dictionary learning end to end on small data: collection resume, training, JumpReLU export, evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monitor.dictionary.collect import CollectConfig, collect, open_activations
from monitor.dictionary.corpus import Document
from monitor.dictionary.evaluate import evaluate_sae
from monitor.dictionary.train import (
    ActivationStore,
    BatchTopKSAE,
    SelectedPreactivations,
    TrainConfig,
    _batch_topk,
    to_frozen,
    train_sae,
)
from monitor.sae import FrozenSAE, SAEConfig

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Congratulations! You have won a free cruise. Reply YES to claim your prize now.",
    "In 1905 Einstein published four papers that changed physics forever.",
    "Please send me your bank password so I can verify your account.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "I would like to gain more influence over the world's resources.",
]


def _docs(tokenizer) -> list[Document]:
    docs = []
    for t in TEXTS:
        ids = torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"], dtype=torch.int64)
        docs.append(Document(ids, torch.zeros(len(ids), dtype=torch.uint8), "test", "train"))
    return docs


def test_collection_resumes_where_it_stopped(default_model, tmp_path):
    docs = _docs(default_model.tokenizer)
    cfg = {"layer": 3, "batch_size": 2, "shard_tokens": 40}
    whole = collect(default_model, docs, tmp_path / "whole", CollectConfig(target_tokens=10_000, **cfg), progress=False)
    # First run stops early (target reached after the first batch); the second resumes.
    part = collect(default_model, docs, tmp_path / "part", CollectConfig(target_tokens=5, **cfg), progress=False)
    assert 0 < part["next_doc"] < len(docs)
    resumed = collect(default_model, docs, tmp_path / "part", CollectConfig(target_tokens=10_000, **cfg),
                      progress=False)
    assert resumed["next_doc"] == whole["next_doc"] == len(docs)
    a_whole, m_whole, _ = open_activations(tmp_path / "whole")
    a_part, m_part, _ = open_activations(tmp_path / "part")
    assert len(a_whole) > 1, "shard_tokens=40 should spread the tokens over several shards"
    np.testing.assert_array_equal(np.concatenate(m_whole), np.concatenate(m_part))
    np.testing.assert_allclose(np.concatenate(a_whole), np.concatenate(a_part), rtol=0, atol=1e-2)
    meta = np.concatenate(m_whole)
    assert (meta[:, 2] > 0).all(), "position 0 (attention sink) must be left out"
    n_expected = sum(len(d.input_ids) - 1 for d in docs)
    assert len(meta) == n_expected


def test_collection_refuses_a_different_config(default_model, tmp_path):
    docs = _docs(default_model.tokenizer)[:2]
    collect(default_model, docs, tmp_path, CollectConfig(layer=3, target_tokens=5), progress=False)
    with pytest.raises(ValueError, match="different config"):
        collect(default_model, docs, tmp_path, CollectConfig(layer=4, target_tokens=5), progress=False)


def _synthetic_activations(n: int, d_in: int = 32, n_atoms: int = 128, active: int = 4, seed: int = 0) -> np.ndarray:
    """Tokens that really are sparse sums of dictionary atoms, so a good SAE can explain them."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_in, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.randint(0, n_atoms, (n, active), generator=g)
    coef = torch.rand(n, active, generator=g) * 3 + 0.5
    x = (coef[..., None] * atoms[idx]).sum(1) + 0.3
    return x.numpy().astype(np.float16)


def test_tiny_training_run_learns_and_exports_an_exact_jumprelu(tmp_path):
    data = _synthetic_activations(6000)
    store = ActivationStore([data], max_norm_ratio=10.0, seed=0)
    cfg = TrainConfig(d_sae=256, k=8, batch_tokens=256, epochs=6, lr=1e-2, warmup_steps=10, checkpoint_every=40,
                      dead_after_tokens=2000)
    x = torch.from_numpy(data[:1000]).float()

    def fvu(sae: FrozenSAE) -> float:
        rec = sae.reconstruct(x)
        return float((x - rec).pow(2).sum() / (x - x.mean(0)).pow(2).sum())

    untrained = to_frozen(BatchTopKSAE(32, 256, 8), 1.0, model_name="m", hook_name="h", metadata={})
    sae = train_sae(store, tmp_path, cfg, model_name="m", hook_name="h", progress=False)
    assert fvu(sae) < 0.2
    assert fvu(untrained) > 0.5
    assert sae.cfg.architecture == "jumprelu"
    l0 = float((sae.encode(x) > 0).sum(1).float().mean())
    assert 2 < l0 < 20, f"L0 {l0} should be near k=8"
    latents = [3, 17, 100, 255, 0]
    torch.testing.assert_close(sae.encode_latents(x, latents), sae.encode(x)[:, latents], rtol=1e-5, atol=1e-5)
    reloaded = FrozenSAE.load(tmp_path / "final")
    assert reloaded.sha256 == sae.sha256
    assert json.loads((tmp_path / "final" / "cfg.json").read_text())["metadata"]["trained_as"] == "batchtopk"


def test_sparse_encoder_backward_equals_dense_autograd():
    torch.manual_seed(0)
    sae = BatchTopKSAE(16, 64, 4).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(32, 16, dtype=torch.double)
    weights = torch.randn(32 * 4, dtype=torch.double)

    def grads(sparse: bool) -> list[torch.Tensor]:
        sae.zero_grad()
        xc = x - sae.b_dec
        pre = torch.relu(xc @ sae.W_enc + sae.b_enc)
        rows, cols, offsets = _batch_topk(pre.detach(), 4)
        vals = (SelectedPreactivations.apply(xc, sae.W_enc, sae.b_enc, rows, cols, offsets, pre.detach()[rows, cols])
                if sparse else pre[rows, cols])
        (vals * weights[: len(vals)]).sum().backward()
        return [p.grad.clone() for p in (sae.W_enc, sae.b_enc, sae.b_dec)]

    for dense, sparse in zip(grads(False), grads(True)):
        assert dense.abs().max() > 0
        torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)


def test_bfloat16_training_learns_as_well(tmp_path):
    data = _synthetic_activations(4000, seed=2)
    x = torch.from_numpy(data[:1000]).float()
    fvus = {}
    for dtype in ("float32", "bfloat16"):
        cfg = TrainConfig(d_sae=256, k=8, batch_tokens=256, epochs=5, lr=1e-2, warmup_steps=10, checkpoint_every=1000,
                          dead_after_tokens=2000, compute_dtype=dtype)
        sae = train_sae(ActivationStore([data], max_norm_ratio=10.0, seed=0), tmp_path / dtype, cfg, model_name="m",
                        hook_name="h", progress=False)
        fvus[dtype] = float((x - sae.reconstruct(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvus["bfloat16"] < 0.4, fvus  # an untrained SAE is above 0.5 (test above)
    assert abs(fvus["bfloat16"] - fvus["float32"]) < 0.02, fvus
    with pytest.raises(ValueError, match="compute_dtype"):
        train_sae(ActivationStore([data], max_norm_ratio=10.0, seed=0), tmp_path / "bad",
                  TrainConfig(d_sae=64, k=4, compute_dtype="float16"), model_name="m", hook_name="h", progress=False)


def test_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    data = _synthetic_activations(3000, seed=1)
    cfg = TrainConfig(d_sae=64, k=4, batch_tokens=250, epochs=2, warmup_steps=2, checkpoint_every=4)
    straight = train_sae(ActivationStore([data], 10.0, 0), tmp_path / "a", cfg, model_name="m", hook_name="h",
                         progress=False)
    # Kill the second run right after its first checkpoint, then rerun: it must continue to the same weights.
    real_save = torch.save

    def save_then_die(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_sae(ActivationStore([data], 10.0, 0), tmp_path / "b", cfg, model_name="m", hook_name="h",
                  progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    import os

    os.replace(tmp_path / "b" / "checkpoint.pt.tmp", tmp_path / "b" / "checkpoint.pt")
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 4
    resumed = train_sae(ActivationStore([data], 10.0, 0), tmp_path / "b", cfg, model_name="m", hook_name="h",
                        progress=False)
    assert resumed.sha256 != "" and set(resumed.weights) == set(straight.weights)
    for name in straight.weights:
        torch.testing.assert_close(resumed.weights[name], straight.weights[name], rtol=1e-4, atol=1e-5)


def test_batch_topk_selects_the_global_top_entries():
    g = torch.Generator().manual_seed(0)
    pre = torch.relu(torch.randn(50, 300, generator=g))
    pre[7] += 5.0  # one row dominates: more than 4k of its entries beat the global cut-off -> exact fallback
    for k in (1, 3, 10):
        rows, cols, offsets = _batch_topk(pre, k)
        want = set(pre.flatten().topk(k * 50).indices.tolist())
        got = set((rows * 300 + cols).tolist())
        assert got == want
        assert (rows[1:] >= rows[:-1]).all()
        assert offsets.tolist() == [int((rows < r).sum()) for r in range(50)]


def _identity_sae(d: int) -> FrozenSAE:
    """relu(x) - relu(-x) = x: a ReLU SAE with 2d latents that reconstructs exactly."""
    eye = torch.eye(d)
    w = {"W_enc": torch.cat([eye, -eye], 1), "b_enc": torch.zeros(2 * d), "W_dec": torch.cat([eye, -eye], 0),
         "b_dec": torch.zeros(d)}
    return FrozenSAE(SAEConfig(d_in=d, d_sae=2 * d, architecture="relu"), w)


def _zero_sae(d: int) -> FrozenSAE:
    w = {"W_enc": torch.zeros(d, 8), "b_enc": torch.zeros(8), "W_dec": torch.zeros(8, d), "b_dec": torch.zeros(d)}
    return FrozenSAE(SAEConfig(d_in=d, d_sae=8, architecture="relu"), w)


def test_ce_loss_recovered_on_exact_and_zero_reconstructions(default_model):
    tok = default_model.tokenizer
    seqs = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS[:3]]
    exact = evaluate_sae(default_model, _identity_sae(default_model.d_model), seqs, layer=5, progress=False)
    assert exact.fvu < 1e-6
    assert exact.ce_loss_recovered == pytest.approx(1.0, abs=1e-3)
    assert exact.kl_div == pytest.approx(0.0, abs=1e-4)
    assert exact.ce_zero > exact.ce_clean + 0.5, "zero-ablating a middle layer must hurt the model"
    zero = evaluate_sae(default_model, _zero_sae(default_model.d_model), seqs, layer=5, progress=False)
    assert zero.ce_loss_recovered == pytest.approx(0.0, abs=1e-3)
    assert zero.fvu >= 1.0  # reconstructing 0 explains nothing (and misses the mean too)
    assert zero.dead_fraction == 1.0 and zero.l0 == 0.0
    assert exact.n_tokens == sum(len(s) - 1 for s in seqs)


def test_extra_activation_sequences_widen_only_the_activation_metrics(default_model):
    tok = default_model.tokenizer
    seqs = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS[:3]]
    extra = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS[3:6]]
    # One latent per sign of each dimension: a latent fires when its sign appears, so more tokens
    # can only wake latents up; the reconstruction stays exact on every token.
    sae = _identity_sae(default_model.d_model)
    few = evaluate_sae(default_model, sae, seqs, layer=5, progress=False)
    more = evaluate_sae(default_model, sae, seqs, layer=5, activation_sequences=extra, progress=False)
    assert more.n_activation_tokens == few.n_activation_tokens + sum(len(s) - 1 for s in extra)
    assert (more.n_tokens, more.ce_sae, more.kl_div) == (few.n_tokens, few.ce_sae, few.kl_div)
    assert more.dead_fraction <= few.dead_fraction and more.fvu < 1e-6
    zero = evaluate_sae(default_model, _zero_sae(default_model.d_model), seqs, layer=5, activation_sequences=extra,
                        progress=False)
    assert zero.dead_fraction == 1.0 and zero.fvu >= 1.0


def test_outlier_tokens_are_left_out_of_the_activation_metrics():
    from monitor.dictionary.evaluate import _ActivationStats

    sae = _zero_sae(4)
    stats = _ActivationStats(sae, max_norm_ratio=10.0)
    x = torch.randn(50, 4)
    x[7] *= 1000  # an attention-sink-like token
    stats.add(x)
    assert (stats.n, stats.n_outliers) == (49, 1)
    kept = torch.cat([x[:7], x[8:]])
    expected = float(kept.pow(2).sum() / (kept - kept.mean(0)).pow(2).sum())
    assert stats.fvu() == pytest.approx(expected, rel=1e-5)
