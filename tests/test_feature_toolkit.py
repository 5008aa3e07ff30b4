"""The feature toolkit on the real model and the shipped SAE: index, top contexts, neighbours, search, steer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monitor.artifacts import default_sae_dir
from monitor.sae import FrozenSAE
from monitor.toolkit.encode_text import tap_text
from monitor.toolkit.feature_index import (
    FeatureIndex,
    build_index,
    latent_contexts,
    neighbors,
    render_html,
    render_terminal,
    search,
)
from monitor.toolkit.latent_labels import LABELS_FILE, load_labels
from monitor.toolkit.steering import LatentClamp, steer

LAYER = 15
TEXTS = ["The cat sat on the mat and purred.", "Call now to claim your free prize!", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def sae():
    return FrozenSAE.load(default_sae_dir())


@pytest.fixture(scope="module")
def index(default_model, sae, tmp_path_factory):
    tok = default_model.tokenizer
    docs = [np.array(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
    acts = [tap_text(default_model, LAYER, torch.from_numpy(d)).activations.numpy() for d in docs]
    idx = build_index(sae, docs, acts, top_k=4, progress=False)
    path = idx.save(tmp_path_factory.mktemp("idx") / "feature_index.npz")
    return FeatureIndex.load(path), docs, acts


def test_index_statistics_match_a_direct_computation(index, sae):
    idx, _docs, acts = index
    z = [sae.encode(torch.from_numpy(a[1:].astype(np.float32))) for a in acts]
    allz = torch.cat(z)
    assert idx.n_tokens == allz.shape[0]
    np.testing.assert_allclose(idx.max_activation, allz.max(0).values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(idx.density, (allz > 0).float().mean(0).numpy(), rtol=1e-5)
    lat = int(allz.max(0).values.argmax())
    best_doc = int(torch.stack([zz[:, lat].max() for zz in z]).argmax())
    assert idx.top_doc[lat, 0] == best_doc
    assert idx.top_pos[lat, 0] == 1 + int(z[best_doc][:, lat].argmax())
    assert idx.top_values[lat, 0] == pytest.approx(float(allz[:, lat].max()), rel=1e-2)  # stored as float16


def test_top_contexts_highlight_the_peak_token(index, sae, default_model):
    idx, _docs, _ = index
    lat = int(np.argmax(idx.max_activation))
    ctxs = latent_contexts(idx, sae, default_model, lat, n=2, layer=LAYER)
    assert ctxs and ctxs[0].values[ctxs[0].peak] == pytest.approx(ctxs[0].value, rel=2e-2)
    assert max(ctxs[0].values) == pytest.approx(ctxs[0].values[ctxs[0].peak], rel=1e-6)
    term = render_terminal(ctxs[0], float(idx.max_activation[lat]))
    assert "\x1b[48;2;" in term
    page = render_html(lat, ctxs, float(idx.max_activation[lat]), neighbors=neighbors(sae, lat, 3))
    assert f"Latent {lat}" in page and "rgba(255, 140, 0" in page


def test_neighbors_are_ranked_by_decoder_cosine(sae):
    rows = neighbors(sae, 7, n=5)
    w = sae.weights["W_dec"]
    w = w / w.norm(dim=1, keepdim=True)
    sims = (w @ w[7]).tolist()
    assert [i for i, _ in rows] == sorted((i for i in range(len(sims)) if i != 7), key=lambda i: -sims[i])[:5]
    assert all(abs(s - sims[i]) < 1e-5 for i, s in rows)


def test_search_finds_the_latents_active_on_a_text(sae, default_model):
    rows = search(sae, default_model, TEXTS[1], layer=LAYER, n=5)
    acts = tap_text(default_model, LAYER, torch.tensor(default_model.tokenizer(TEXTS[1], add_special_tokens=False)
                                                        ["input_ids"])).activations
    z = sae.encode(acts[1:])
    assert [i for i, _, _ in rows] == z.max(0).values.topk(5).indices.tolist()


def test_clamping_a_latent_sets_its_value_and_changes_the_generation(sae, default_model):
    x = tap_text(default_model, LAYER, torch.tensor(default_model.tokenizer(TEXTS[0], add_special_tokens=False)
                                                      ["input_ids"])).activations
    lat = 11
    before = sae.encode_latents(x[1:], [lat])[:, 0]
    clamp = LatentClamp(sae, lat, 7.5)
    out = clamp(None, (), x[None].clone())[0]
    want = (7.5 - before)[:, None] * sae.weights["W_dec"][lat]
    torch.testing.assert_close(out[1:] - x[1:], want, rtol=1e-4, atol=1e-4)  # exactly the SAE-space intervention
    torch.testing.assert_close(out[0], x[0])  # the attention sink is untouched
    after = sae.encode_latents(out[1:], [lat])[:, 0]
    assert ((after - 7.5).abs() < (before - 7.5).abs()).all(), "re-encoding moves the latent toward its target"
    top = sae.encode(x[1:]).max(0)
    idx, peak = int(top.values.argmax()), float(top.values.max())
    r = steer(default_model, sae, "Tell me about cats.", latent=idx, target=3 * peak, layer=LAYER, max_new_tokens=12)
    assert r.unsteered and r.steered != r.unsteered


def test_sink_like_outlier_tokens_are_left_out_of_the_index(index, sae):
    _, docs, acts = index
    loud = acts[0].copy()
    loud[2] *= 100  # a position-2 token with a sink-like norm
    idx = build_index(sae, docs[:1], [loud], top_k=2, progress=False)
    assert idx.n_tokens == len(loud) - 2  # position 0 and the outlier
    assert not (idx.top_pos == 2).any()


def test_shipped_detectors_use_no_formatting_latent_and_carry_the_shipped_labels(sae):
    """The selection rule holds for what ships: relabelling the SAE (e.g. a new formatting class) must be
    followed by recalibrating the detectors it touches, and their specs show the labels an operator sees."""
    labels = load_labels(default_sae_dir() / LABELS_FILE, sae.sha256)
    specs = sorted((default_sae_dir() / "detectors").glob("*.json"))
    assert specs
    for path in specs:
        spec = json.loads(path.read_text())
        formatting = [i for i in spec["latents"] if labels[int(i)].formatting]
        assert not formatting, f"{path.name} uses formatting latents {formatting}"
        assert {int(k): v for k, v in spec["latent_labels"].items()} == {int(i): labels[int(i)].label
                                                                        for i in spec["latents"]}, path.name
