"""What a detector reads in each row of a labelled JSONL: its score and the latents that carry it (weight ×
aggregated feature, largest in size first), with their labels.

    .venv/bin/python scripts/experiments/latent_contributions.py --data FILE --detector deception_request \
        [--detectors DIR] [--top 6] [--rows 20]

Rows are scored as `safety-monitor eval` scores them (same activation cache, layer, context and precision;
a row with nothing in the detector's span never alerts). Results (2026-12-01) are in docs/detectors.md (the demo's quoted agent log; scam_request's false
alarms on ordinary company-e-mail requests)."""
import argparse
from pathlib import Path

import numpy as np

from detectors.calibration.data import load_file
from detectors.calibration.span_features import latent_features, span_has_tokens
from detectors.spec import load_specs
from monitor.artifacts import default_sae_dir
from monitor.cli.common import load_sae_arg
from monitor.cli.detector_jobs import _cache, _runner, default_detectors_dir
from monitor.defaults import DEFAULT_LAYER, DEFAULT_MODEL_ID
from monitor.lm.loading import load_model
from monitor.toolkit.latent_labels import LABELS_FILE, load_labels

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--data", required=True, type=Path)
ap.add_argument("--detector", required=True, help="spec name, e.g. scam_request")
ap.add_argument("--detectors", type=Path, default=None, help="spec directory (default: the shipped specs)")
ap.add_argument("--top", type=int, default=6, help="latents shown per row")
ap.add_argument("--rows", type=int, default=20, help="rows shown, highest score first")
ap.add_argument("--layer", type=int, default=DEFAULT_LAYER)
ap.add_argument("--context", type=int, default=1280)
ap.add_argument("--compute-dtype", default="bfloat16", help="as the specs were fit (eval's default is float32)")
args = ap.parse_args()

sae_dir = default_sae_dir()
sae = load_sae_arg(None)
labels = load_labels(sae_dir / LABELS_FILE, sae.sha256)
specs = load_specs(args.detectors or default_detectors_dir(sae_dir), sae_sha256=sae.sha256, d_sae=sae.cfg.d_sae,
                   force=True)
spec = {s.name: s for s in specs}[args.detector]
rows = load_file(args.data)
lm = load_model(DEFAULT_MODEL_ID)
cache = _cache(lm, args)
cache.ensure(rows, _runner(lm, cache))
f = latent_features(cache, sae, rows, span=spec.span, aggregations=(spec.aggregation,), latents=spec.latents,
                    window=spec.window, progress=False)[spec.aggregation]
contributions = f * np.array(spec.weights)
scores = np.where(span_has_tokens(cache, rows, spec.span), spec.score(f), -np.inf)
print(f"{spec.name}: {spec.aggregation} over {spec.span}, threshold {spec.threshold:.2f}, bias {spec.bias:.2f}")
for i in np.argsort(-scores)[:args.rows]:
    text = rows[i].messages[-2][1] if len(rows[i].messages) > 1 else rows[i].messages[0][1]
    print(f"\n{scores[i]:7.2f}  label {rows[i].label}  {text[:120]!r}")
    for j in np.argsort(-np.abs(contributions[i]))[:args.top]:
        lat = spec.latents[j]
        print(f"         {contributions[i, j]:+6.2f}  latent {lat:<5} {labels[lat].label if lat in labels else ''}")
