"""Experiment: do detectors of the model's own scam e-mails carry to requests they were not fit on?

Fits on the train split of the scam reply data with the elicited e-mails of rounds 1-3 only (SMS spam
rendered as replies kept), then scores every row of round 4, whose organisations and scam / ordinary
templates no fit saw, and the rounds 1-3 test split for comparison: the SAE detector (admissible
latents, source-balanced, <= 32, mean over the reply, as calibration fits scam_reply) and the dense
probe on the same span. Needs the bf16 activation cache of that data
(``safety-monitor calibrate --concepts scam --kinds reply --compute-dtype bfloat16 --activations-only``).

    .venv/bin/python scripts/experiments/own_emails_unseen_templates.py

Results (2026-12-01) are in docs/detectors.md."""
import numpy as np
from own_emails_test_rows import round_of

from detectors.calibration.activation_cache import ActivationCache
from detectors.calibration.calibrate import admissible_latents
from detectors.calibration.data import load_concept
from detectors.calibration.discover import DiscoveryConfig, fit_detector
from detectors.calibration.probe import fit_probe
from detectors.calibration.span_features import dense_features, latent_features
from detectors.calibration.stats import auroc
from monitor.artifacts import ARTIFACTS_DIR, default_sae_dir
from monitor.dictionary.corpus import default_data_dir
from monitor.lm.loading import cache_root
from monitor.sae import FrozenSAE
from monitor.toolkit.latent_labels import LABELS_FILE, load_labels

AGG = "mean"
sae_dir = default_sae_dir()
sae = FrozenSAE.load(sae_dir)
cache = ActivationCache(cache_root() / "detector-activations", "smollm2-135m-instruct", 15, 1280, compute_dtype="bfloat16")
excluded = {i for i, v in load_labels(sae_dir / LABELS_FILE, sae.sha256).items() if v.formatting}
ex = [e for e in load_concept("scam", default_data_dir(), kind="reply", generated_dir=ARTIFACTS_DIR / "data",
                              max_per_file=1000) if e.key in cache.index]
own_round = {id(e): round_of(e.group.removeprefix("pair/")) for e in ex if "elicited" in e.source}
train = [e for e in ex if e.split == "train" and own_round.get(id(e), 0) <= 3]
sets = {"round 4, every row (unseen templates)": [e for e in ex if own_round.get(id(e)) == 4],
        "rounds 1-3, test split": [e for e in ex if e.split == "test" and own_round.get(id(e), 9) <= 3]}
y = np.array([e.label for e in train]); g = np.array([e.group for e in train]); src = np.array([e.source for e in train])
f = latent_features(cache, sae, train, span="response", aggregations=(AGG,), progress=False)[AGG]
allowed, _ = admissible_latents(f, y, src, excluded)
det = fit_detector(f, y, g, DiscoveryConfig(), allowed=allowed, sources=src)
probe = fit_probe(dense_features(cache, train, span="response", aggregation=AGG), y, g)
for name, te in sets.items():
    yt = np.array([e.label for e in te])
    ft = latent_features(cache, sae, te, span="response", aggregations=(AGG,), latents=det.latents, progress=False)[AGG]
    s_det = det.score(ft, columns=list(range(len(det.latents))))
    s_probe = probe.score(dense_features(cache, te, span="response", aggregation=AGG))
    print(f"{name} (n {len(te)}): SAE detector ({len(det.latents)} latents, {AGG}) {auroc(s_det, yt):.3f}, "
          f"dense probe {auroc(s_probe, yt):.3f}", flush=True)
