"""Experiment: do detectors of the model's own scam e-mails carry to requests they were not fit on?

Fits on the train split of the scam reply data with the elicited e-mails of rounds 1-K only (default 3;
SMS spam rendered as replies kept), then scores every row of the later rounds, whose organisations and
scam / ordinary templates no fit saw, the rounds 1-K test split and SMS for comparison: the SAE detector (admissible
latents, source-balanced, <= 32, mean over the reply, as calibration fits scam_reply) and the dense
probe on the same span. Needs the bf16 activation cache of that data
(``safety-monitor calibrate --concepts scam --kinds reply --compute-dtype bfloat16 --activations-only``).

    .venv/bin/python scripts/experiments/own_emails_unseen_templates.py [--rounds-fit K] [...]

The flags (``--help``) vary the recipe one piece at a time.

Results (2026-12-01) are in docs/detectors.md."""
import argparse
import re

import numpy as np
from scam_reply_data import load_scam_reply_data

from detectors.calibration.calibrate import admissible_latents
from detectors.calibration.discover import DiscoveryConfig, fit_detector
from detectors.calibration.probe import fit_probe
from detectors.calibration.span_features import dense_features, latent_features
from detectors.calibration.stats import auroc
from monitor.toolkit.elicited_replies import pair_round

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--rounds-fit", type=int, default=3, help="fit on the train split of rounds 1..K, score every row of "
                "the later rounds")
ap.add_argument("--per-round-sources", action="store_true", help="each elicitation round is its own source in latent "
                "selection (a latent must separate scam from ordinary e-mails within each round)")
ap.add_argument("--max-latents", type=int, default=32)
ap.add_argument("--candidates", type=int, default=DiscoveryConfig.candidates,
                help="strongest admissible latents offered to the selection")
ap.add_argument("--own-only", action="store_true", help="leave SMS spam out of the fit")
ap.add_argument("--admissible-own", action="store_true", help="apply the direction rule on the own e-mails only")
ap.add_argument("--judged-own", action="store_true", help="rank candidate latents and judge latent sets on the own "
                "e-mails only (SMS rows still train)")
ap.add_argument("--asks-only", action="store_true", help="train only on e-mails whose text matches the label: "
                "scam-request replies that ask for something (a link, password, card, fee, code, login, transfer, ...) "
                "and ordinary replies that do not; scoring stays on every row, labelled by the request")
args = ap.parse_args()
AGG = "mean"
data = load_scam_reply_data("bfloat16")
sae, cache, excluded, ex = data.sae, data.cache, data.excluded, data.examples
own_round = {id(e): pair_round(e.group.removeprefix("pair/")) for e in ex if "elicited" in e.source}
k = args.rounds_fit
train = [e for e in ex if e.split == "train" and own_round.get(id(e), 0) <= k]
if args.own_only:
    train = [e for e in train if id(e) in own_round]
if args.asks_only:
    asks = re.compile(r"\b(link|password|card|fee|code|log ?in|sign in|PIN|bank details|account number|transfer|"
                      r"gift card|bitcoin|wire|verify|social security|click|wallet|username|payment)\b", re.IGNORECASE)
    train = [e for e in train if id(e) not in own_round or bool(asks.search(e.messages[-1][1])) == e.label]
sets = {f"rounds {k + 1}+, every row (unseen templates)": [e for e in ex if own_round.get(id(e), 0) > k],
        f"rounds 1-{k}, test split": [e for e in ex if e.split == "test" and own_round.get(id(e), 99) <= k],
        "SMS as replies, test split": [e for e in ex if e.split == "test" and id(e) not in own_round]}
y = np.array([e.label for e in train]); g = np.array([e.group for e in train])
src = np.array([f"{e.source} round {own_round[id(e)]}" if args.per_round_sources and id(e) in own_round else e.source
                for e in train])
f = latent_features(cache, sae, train, span="response", aggregations=(AGG,), progress=False)[AGG]
own = np.array([id(e) in own_round for e in train])
adm = own if args.admissible_own else np.ones(len(train), dtype=bool)
allowed, _ = admissible_latents(f[adm], y[adm], src[adm], excluded)
det = fit_detector(f, y, g, DiscoveryConfig(max_latents=args.max_latents, candidates=args.candidates), allowed=allowed,
                   sources=src, judged=own if args.judged_own else None)
probe = fit_probe(dense_features(cache, train, span="response", aggregation=AGG), y, g)
for name, te in sets.items():
    yt = np.array([e.label for e in te])
    ft = latent_features(cache, sae, te, span="response", aggregations=(AGG,), latents=det.latents, progress=False)[AGG]
    s_det = det.score(ft, columns=list(range(len(det.latents))))
    s_probe = probe.score(dense_features(cache, te, span="response", aggregation=AGG))
    print(f"{name} (n {len(te)}): SAE detector ({len(det.latents)} latents, {AGG}) {auroc(s_det, yt):.3f}, "
          f"dense probe {auroc(s_probe, yt):.3f}", flush=True)
