"""Latents that mean the concept: same direction in every source, no formatting latents, labelled."""

from __future__ import annotations

import numpy as np

from detectors.calibration.calibrate import admissible_latents
from detectors.calibration.discover import DiscoveryConfig, fit_detector
from monitor.toolkit.feature_index import FeatureIndex
from monitor.toolkit.latent_labels import label_latents


def _two_sources(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n)
    src = np.repeat(np.array(["multiple_choice", "statements"]), n)
    x = rng.normal(0, 1, (2 * n, 6)).clip(0)
    concept = y * 1.0
    x[:, 0] += 1.5 * concept  # the concept: positive in both sources
    # a format artefact: marks positives in one source ("(A) Yes" answers) and negatives in the other,
    # and is the strongest single latent overall
    artefact = np.where(src == "multiple_choice", y, 1 - y) * np.where(src == "multiple_choice", 4.0, 0.5)
    x[:, 1] += artefact
    return x, y, src


def test_a_latent_that_flips_direction_between_sources_is_rejected():
    x, y, src = _two_sources()
    allowed, rejected = admissible_latents(x, y, src)
    assert 0 in allowed and 1 not in allowed
    assert any(r["latent"] == 1 and "opposite directions" in r["reason"] for r in rejected)
    det = fit_detector(x, y, np.arange(len(y)), DiscoveryConfig(max_latents=2, candidates=6, folds=3), allowed=allowed)
    assert 1 not in det.latents and 0 in det.latents
    unrestricted = fit_detector(x, y, np.arange(len(y)), DiscoveryConfig(max_latents=2, candidates=6, folds=3))
    assert 1 in unrestricted.latents  # what the selection picks when nothing stops it


def test_a_formatting_latent_is_kept_out_and_reported():
    x, y, src = _two_sources()
    allowed, rejected = admissible_latents(x, y, src, excluded={0})
    assert 0 not in allowed
    assert any(r["latent"] == 0 and r["reason"] == "formatting latent" for r in rejected)


def test_labels_mark_answer_letters_and_phone_numbers_as_formatting():
    vocab = {1: "Choices", 2: ":", 3: " (", 4: "A", 5: ")", 6: " Yes", 7: "0906", 8: "517", 9: "4", 10: " password",
             11: " verify", 12: " your", 13: " account"}
    docs = [np.array([0, 1, 2, 3, 4, 5, 6]), np.array([0, 7, 8, 9, 12]), np.array([0, 11, 12, 13, 10])]
    # latent 0 peaks on "Yes" after "(A)"; latent 1 on a digit of a phone number; latent 2 on words
    top_doc = np.array([[0, 0, -1], [1, 1, -1], [2, 2, -1]], dtype=np.int32)
    top_pos = np.array([[6, 4, 0], [3, 2, 0], [4, 1, 0]], dtype=np.int32)
    index = FeatureIndex(np.ones(3, np.float32), np.ones(3, np.float32), np.ones((3, 3), np.float32), top_doc,
                         top_pos, docs, 15, "0" * 64)
    labels = label_latents(index, lambda ids: "".join(vocab.get(i, "<s>") for i in ids))
    assert labels[0].formatting and labels[0].label.startswith("[format]")
    assert labels[1].formatting
    assert not labels[2].formatting and '"password"' in labels[2].label
    assert "[[ password]]" in labels[2].contexts[0]


def test_labels_mark_an_answer_word_opening_the_reply_as_formatting():
    vocab = {1: "<|im_start|>", 2: "assistant", 3: "\n", 4: "Yes", 5: ",", 6: " it", 7: " is", 8: "She", 9: " said",
             10: " yes", 11: " to", 12: " No", 13: "Answer:"}
    docs = [np.array([0, 1, 2, 3, 4, 5, 6, 7]), np.array([0, 13, 12, 5]), np.array([0, 8, 9, 10, 11])]
    # latent 0 peaks on "Yes" opening the assistant's reply and on "No" after "Answer:": the slot a yes/no
    # eval fills, whatever the question; latent 1 on "yes" inside a sentence, a word like any other
    top_doc = np.array([[0, 1, -1], [2, 2, -1]], dtype=np.int32)
    top_pos = np.array([[4, 2, 0], [3, 3, 0]], dtype=np.int32)
    index = FeatureIndex(np.ones(2, np.float32), np.ones(2, np.float32), np.ones((2, 3), np.float32), top_doc,
                         top_pos, docs, 15, "0" * 64)
    labels = label_latents(index, lambda ids: "".join(vocab.get(i, "<s>") for i in ids))
    assert labels[0].formatting and labels[0].label.startswith("[format]")
    assert not labels[1].formatting


def _easy_large_source_and_hard_small_one(seed=0):
    """SMS-like source ``easy`` (1,000 rows): latent 0 separates it almost perfectly, latents 2 and 3 a little;
    none of them means anything in ``hard`` (200 rows, the model's own e-mails), where only latent 1 does."""
    rng = np.random.default_rng(seed)
    src = np.repeat(np.array(["easy", "hard"]), [1000, 200])
    y = np.tile([0, 1], 600)
    x = rng.normal(0, 1, (1200, 8))
    easy, hard = src == "easy", src == "hard"
    x[easy, 0] += 4.0 * y[easy]
    x[easy, 2] += 0.6 * y[easy]
    x[easy, 3] += 0.6 * y[easy]
    x[hard, 1] += 2.0 * y[hard]
    return x, y, src


def test_source_balanced_selection_serves_the_hard_source_a_large_easy_one_would_crowd_out():
    from detectors.calibration.stats import auroc, source_balanced_auroc

    x, y, src = _easy_large_source_and_hard_small_one()
    cfg = DiscoveryConfig(max_latents=2, candidates=3, folds=3)
    pooled = fit_detector(x, y, np.arange(len(y)), cfg)
    balanced = fit_detector(x, y, np.arange(len(y)), cfg, sources=src)
    hard = src == "hard"
    assert 1 not in pooled.latents  # pooled, the easy source's weak latents outrank the hard source's only signal
    assert 1 in balanced.latents and 0 in balanced.latents
    assert auroc(balanced.score(x[hard]), y[hard]) > auroc(pooled.score(x[hard]), y[hard]) + 0.15
    # the criterion: pooled and within each two-label source, averaged
    s = balanced.score(x)
    want = np.mean([auroc(s, y), auroc(s[~hard], y[~hard]), auroc(s[hard], y[hard])])
    assert abs(source_balanced_auroc(s, y, src) - want) < 1e-12


def test_a_source_with_one_label_only_joins_the_pooled_rows_but_is_not_judged_alone():
    from detectors.calibration.stats import source_strata

    y = np.array([1] * 30 + [0, 1] * 20)
    src = np.array(["requests_for_fraud"] * 30 + ["pairs"] * 40)
    strata = source_strata(y, src)
    assert len(strata) == 2 and strata[0].all() and (strata[1] == (src == "pairs")).all()
    assert len(source_strata(y, None)) == 1
