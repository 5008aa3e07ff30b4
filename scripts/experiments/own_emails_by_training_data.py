"""Experiment: how well does a reply detector rank the model's own scam e-mails, by training data?

Trains on the train split of the scam reply data (SMS spam rendered as replies, the elicited e-mails;
no benign traffic) and scores the elicited test split (first-round pairs, and all), for the SAE
detector (admissible latents, <= 32) and the dense probe, with max / mean / window over the reply.
Needs the float32 activation cache of that data:

    safety-monitor calibrate --concepts scam --kinds reply --compute-dtype float32 --activations-only
    .venv/bin/python scripts/experiments/own_emails_by_training_data.py

Results (2026-11-30) are in docs/detectors.md."""
import numpy as np
from scam_reply_data import load_scam_reply_data

from detectors.calibration.calibrate import admissible_latents
from detectors.calibration.discover import DiscoveryConfig, fit_detector
from detectors.calibration.probe import fit_probe
from detectors.calibration.span_features import dense_features, latent_features
from detectors.calibration.stats import auroc

data = load_scam_reply_data("float32")
sae, cache, excluded, ex = data.sae, data.cache, data.excluded, data.examples
own = lambda e: "elicited" in e.source
first = lambda e: "sample" not in e.meta
for train_set in ("all", "elicited only", "first round + SMS"):
    tr = [e for e in ex if e.split == "train" and (train_set == "all" or (train_set == "elicited only" and own(e))
                                                   or (train_set.startswith("first") and (not own(e) or first(e))))]
    te_all = [e for e in ex if e.split == "test" and own(e)]
    te_first = [e for e in te_all if first(e)]
    y = np.array([e.label for e in tr]); g = np.array([e.group for e in tr]); src = np.array([e.source for e in tr])
    for agg in ("max", "mean", "window"):
        f = latent_features(cache, sae, tr, span="response", aggregations=(agg,), progress=False)[agg]
        allowed, _ = admissible_latents(f, y, src, excluded)
        det = fit_detector(f, y, g, DiscoveryConfig(), allowed=allowed)
        out = []
        for name, te in (("first-round test", te_first), ("all test", te_all)):
            ft = latent_features(cache, sae, te, span="response", aggregations=(agg,), latents=det.latents,
                                 progress=False)[agg]
            s = det.score(ft, columns=list(range(len(det.latents))))
            out.append(f"{name} {auroc(s, np.array([e.label for e in te])):.3f} (n {len(te)})")
        print(f"[{train_set:18s}] SAE {agg:6s} {len(det.latents)} latents: " + ", ".join(out), flush=True)
    pr = fit_probe(dense_features(cache, tr, span="response"), y, g)
    out = [f"{name} {auroc(pr.score(dense_features(cache, te, span='response')), np.array([e.label for e in te])):.3f}"
           for name, te in (("first-round test", te_first), ("all test", te_all))]
    print(f"[{train_set:18s}] dense probe (mean): " + ", ".join(out), flush=True)
