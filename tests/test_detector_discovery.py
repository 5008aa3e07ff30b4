"""Latent discovery: ranking, L1 selection under the latent budget, and weights that stay sane."""

from __future__ import annotations

import numpy as np

from detectors.calibration.discover import DiscoveryConfig, _prune, fit_detector, rank_latents
from detectors.calibration.stats import auroc


def _sparse_latents(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Non-negative, mostly-zero features like aggregated SAE latents."""
    return np.maximum(rng.normal(-1.0, 1.0, size=(n, d)), 0.0)


def test_planted_latents_are_found_within_the_budget():
    rng = np.random.default_rng(0)
    n, d = 600, 400
    y = rng.integers(0, 2, n)
    x = _sparse_latents(n, d, rng)
    planted = [7, 123, 321]
    x[:, planted] += y[:, None] * rng.uniform(0.8, 1.5, size=(n, len(planted)))
    groups = np.arange(n) // 2
    ranked = [r.latent for r in rank_latents(x, y, top=3)]
    assert sorted(ranked) == planted
    det = fit_detector(x, y, groups, DiscoveryConfig(max_latents=8, candidates=64))
    assert set(planted) <= set(det.latents) and len(det.latents) <= 8
    assert det.cv_auroc > 0.9
    assert all(det.weights[det.latents.index(j)] > 0 for j in planted)
    fresh_y = rng.integers(0, 2, 400)
    fresh = _sparse_latents(400, d, rng)
    fresh[:, planted] += fresh_y[:, None]
    assert auroc(det.score(fresh), fresh_y) > 0.9


def test_a_near_constant_latent_does_not_get_an_exploding_weight():
    """A latent that fires on every example with almost the same value (e.g. on the chat template)
    carries label noise at the 1e-4 level; standardising by its spread alone made its weight huge."""
    rng = np.random.default_rng(1)
    n = 600
    y = rng.integers(0, 2, n)
    x = _sparse_latents(n, 40, rng)
    x[:, 0] += y * 1.0  # the real signal
    x[:, 1] = 1.2 + 2e-4 * y + rng.normal(0, 1e-4, n)  # near-constant, faintly label-correlated
    det = fit_detector(x, y, np.arange(n), DiscoveryConfig(max_latents=8, candidates=40))
    weights = dict(zip(det.latents, det.weights, strict=True))
    assert 0 in weights
    # Moving the constant latent by a realistic amount on new traffic must not swamp the score.
    assert abs(weights.get(1, 0.0)) * 0.5 < 5.0


def test_a_wide_l1_model_is_pruned_back_to_the_budget_keeping_the_strong_latents():
    """With a penalty grid that jumps from nothing straight to far more than the budget, the set comes
    from pruning the wide model (recursive elimination), and the strongest latents survive it."""
    rng = np.random.default_rng(2)
    n, d = 800, 200
    y = rng.integers(0, 2, n)
    x = _sparse_latents(n, d, rng)
    strong, weak = [3, 50, 99], list(range(110, 140))
    x[:, strong] += y[:, None] * 1.5
    x[:, weak] += y[:, None] * 0.15
    cfg = DiscoveryConfig(max_latents=6, candidates=200, c_grid=(10.0,), prune_from=100.0)
    det = fit_detector(x, y, np.arange(n), cfg)
    assert len(det.latents) == 6
    assert set(strong) <= set(det.latents)
    kept = _prune((x - x.mean(0)) / x.std(0), y, np.arange(d), 6)
    assert len(kept) == 6 and set(strong) <= set(kept.tolist())


def test_judged_rows_choose_the_concept_contrast_not_the_benign_one():
    """Benign rows (label 0) only train: a latent that merely tells the concept's texts from benign
    traffic must not crowd out the one that tells the concept's positives from its negatives."""
    rng = np.random.default_rng(3)
    n_concept, n_benign = 300, 3000
    y = np.r_[rng.integers(0, 2, n_concept), np.zeros(n_benign, dtype=int)]
    own = np.arange(len(y)) < n_concept
    x = _sparse_latents(len(y), 50, rng)
    x[own, 0] += 2.0  # "topic" latent: every concept row, positive or not
    x[:, 1] += np.where(own, y * 1.5, 1.0)  # the contrast; benign text resembles the positives here
    ranked_all = [r.latent for r in rank_latents(x, y, top=1)]
    assert ranked_all == [0]  # over all rows, the topic latent looks best
    det = fit_detector(x, y, np.arange(len(y)), DiscoveryConfig(max_latents=1, candidates=1), judged=own)
    assert det.latents == [1]
    assert auroc(det.score(x[own]), y[own]) > 0.85


def test_training_weights_give_benign_rows_a_fixed_share_of_the_negatives():
    from detectors.calibration.calibrate import training_weights

    labels = np.r_[np.ones(10), np.zeros(30), np.zeros(960)]
    own = np.arange(1000) < 40
    w = training_weights(labels, own, 0.5)
    assert np.isclose(w.sum(), 1000)
    assert np.isclose(w[:10].sum(), 500) and np.isclose(w[10:40].sum(), 250) and np.isclose(w[40:].sum(), 250)
    only_concept = training_weights(labels[:40], own[:40], 0.5)
    assert np.isclose(only_concept[:10].sum(), 20) and np.isclose(only_concept[10:].sum(), 20)


def test_training_weights_can_share_the_benign_weight_equally_among_traffic_slices():
    from detectors.calibration.calibrate import training_weights

    labels = np.r_[np.ones(10), np.zeros(30), np.zeros(960)]
    own = np.arange(1000) < 40
    slices = np.array(["single_turn"] * 40 + ["single_turn"] * 900 + ["multi_turn"] * 50 + ["long"] * 10)
    w = training_weights(labels, own, 0.5, slices)
    assert np.isclose(w.sum(), 1000) and np.isclose(w[:10].sum(), 500) and np.isclose(w[10:40].sum(), 250)
    for part in (slice(40, 940), slice(940, 990), slice(990, 1000)):  # the ten long rows weigh as the 900 short
        assert np.isclose(w[part].sum(), 250 / 3)
    assert np.allclose(training_weights(labels, own, 0.5, np.array(["single_turn"] * 1000)),
                       training_weights(labels, own, 0.5))


def _detector(cv: float):
    from detectors.calibration.discover import LinearDetector

    return LinearDetector(latents=[0], weights=[1.0], bias=0.0, cv_auroc=cv)


def test_the_span_choice_that_generalises_across_sources_beats_a_slightly_better_cv():
    from detectors.calibration.calibrate import SpanChoice

    all_tokens = SpanChoice(_detector(0.996), {}, {"persona": 0.92, "repe": 0.35})
    prompt = SpanChoice(_detector(0.990), {}, {"persona": 0.85, "repe": 0.80})
    assert np.isclose(all_tokens.selection_score, 0.5 * (0.996 + 0.635))
    assert prompt.selection_score > all_tokens.selection_score
    assert SpanChoice(_detector(0.97), {}, {}).selection_score == 0.97  # one source: CV alone


def test_leave_one_source_out_needs_both_labels_in_and_without_the_source():
    from detectors.calibration.calibrate import _loso_sources
    from detectors.calibration.data import Example

    def ex(label, source, split):
        return Example(messages=(("user", f"{source} {label} {split}"),), label=label, source=source, file="f",
                       group=f"{source}{label}{split}", split=split)

    examples = [ex(lab, src, split) for src in ("a", "b") for lab in (0, 1) for split in ("train", "test")]
    examples += [ex(0, "negatives-only", split) for split in ("train", "test")]
    train = [e for e in examples if e.split == "train"]
    src_tr, y_tr = np.array([e.source for e in train]), np.array([e.label for e in train])
    own = np.ones(len(train), dtype=bool)
    assert _loso_sources(examples, src_tr, own, y_tr) == ["a", "b"]
    one = [e for e in examples if e.source == "a"]
    one_train = [e for e in one if e.split == "train"]
    assert _loso_sources(one, np.array([e.source for e in one_train]), np.ones(2, dtype=bool),
                         np.array([e.label for e in one_train])) == []
