"""Experiment: at which layer does the model's reply say most about whether its e-mail is a scam?

The shipped SAE reads layer 15, and on the model's own e-mails the dense probe on that layer's reply
tokens reaches about 0.88, under the 0.90 target. This runs the default model once over the elicited
e-mails (every row, prompt replaced by a neutral one, as in the data file), keeps the mean over the
reply tokens of every layer's residual stream, and fits the dense probe of calibration
(``detectors.calibration.probe.fit_probe``) per layer, scored two ways:

- the test split (pairs held out, organisations and templates seen in training);
- every row of the last round, fit on the train split of the earlier rounds (kinds of scam request
  and wordings no fit saw).

    .venv/bin/python scripts/experiments/own_emails_probe_by_layer.py [--layers 6,9,12,15,18,21,24,27,30]

The pooled features are saved under runs/ (``--features``), so a rerun only fits."""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

from detectors.calibration.data import load_concept
from detectors.calibration.probe import fit_probe
from detectors.calibration.stats import auroc
from detectors.spans import ROLE_RESPONSE
from monitor.artifacts import ARTIFACTS_DIR
from monitor.dictionary.corpus import default_data_dir
from monitor.lm.chat import render_recent_turns
from monitor.lm.loading import load_model
from monitor.toolkit.elicited_replies import pair_round

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--layers", default="3,6,9,12,15,18,21,24,27,29",
                help="blocks whose output to probe (the tap's layer numbering: 15 is the shipped SAE's)")
ap.add_argument("--features", type=Path, default=Path("runs/own_emails_layer_means.npz"))
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)

ex = [e for e in load_concept("scam", default_data_dir(), kind="reply", generated_dir=ARTIFACTS_DIR / "data")
      if "elicited" in e.source]
rounds = np.array([pair_round(e.group.removeprefix("pair/")) for e in ex])
labels = np.array([e.label for e in ex])
splits = np.array([e.split for e in ex])
groups = np.array([e.group for e in ex])
print(f"{len(ex)} own e-mails, rounds {sorted(set(rounds.tolist()))}, {labels.mean():.2f} scam", flush=True)

if args.features.exists():
    means = np.load(args.features)["means"]
else:
    lm = load_model()
    rendered = [render_recent_turns(lm.tokenizer, e.message_dicts(), max_tokens=1280, live_roles=True) for e in ex]
    means = np.zeros((len(ex), lm.n_layers + 1, lm.d_model), np.float32)
    order = sorted(range(len(ex)), key=lambda i: len(rendered[i].input_ids))
    t0, batch = time.time(), 16
    for b in range(0, len(order), batch):
        idx = order[b:b + batch]
        n = max(len(rendered[i].input_ids) for i in idx)
        ids = torch.zeros((len(idx), n), dtype=torch.long)
        mask = torch.zeros((len(idx), n), dtype=torch.long)
        for r, i in enumerate(idx):
            t = rendered[i].input_ids
            ids[r, :len(t)] = torch.as_tensor(t)
            mask[r, :len(t)] = 1
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            hs = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        hs = torch.stack(hs, 1).float()  # [b, layers + 1, n, d]
        for r, i in enumerate(idx):
            resp = np.flatnonzero(np.asarray(rendered[i].roles) == ROLE_RESPONSE)
            resp = resp[resp > 0]
            means[i] = hs[r, :, resp].mean(1).numpy()
        if b // batch % 40 == 0:
            print(f"  {b + len(idx)}/{len(ex)} rows, {time.time() - t0:.0f} s", flush=True)
    args.features.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.features, means=means)

last = rounds.max()
fit_split = splits == "train"
fit_early = fit_split & (rounds < last)
test_split = splits == "test"
test_last = rounds == last
print(f"{'layer':>5}  {'test split':>10}  {'round ' + str(last) + ' unseen':>15}", flush=True)
for layer in [int(x) for x in args.layers.split(",")]:
    x = means[:, layer + 1]  # hidden_states[0] is the embedding
    out = []
    for fit, test in ((fit_split, test_split), (fit_early, test_last)):
        pr = fit_probe(x[fit], labels[fit], groups[fit])
        out.append(auroc(pr.score(x[test]), labels[test]))
    print(f"{layer:>5}  {out[0]:>10.3f}  {out[1]:>15.3f}", flush=True)
