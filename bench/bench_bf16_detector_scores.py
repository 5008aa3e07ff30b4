"""Detector scores from bf16-autocast activations vs float32 ones, side by side in one run.

The shipped detectors were calibrated on activations computed with the model's matrix products under
bf16 autocast (``calibrate --compute-dtype bfloat16``, 2.5x faster); the sidecar runs the model in
float32. This scores the same examples (test-split rows of every concept file and benign traffic) with
both and prints, per detector: the largest and the mean absolute score difference, the threshold, and
how many alert decisions differ. Also times the two activation passes.

    .venv/bin/python bench/bench_bf16_detector_scores.py [--per-file 60] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from detectors.calibration.activation_cache import ActivationCache
from detectors.calibration.data import BENIGN_FILES, CONCEPT_FILES, load_file, resolve
from detectors.calibration.span_features import latent_features
from detectors.spec import load_specs
from monitor.artifacts import ARTIFACTS_DIR, default_sae_dir
from monitor.cli.detector_jobs import example_activations
from monitor.defaults import DEFAULT_LAYER
from monitor.dictionary.corpus import default_data_dir
from monitor.lm.loading import load_model
from monitor.sae import FrozenSAE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-file", type=int, default=60, help="test-split rows per labelled file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data_dir, sae_dir = default_data_dir(), default_sae_dir()
    sae = FrozenSAE.load(sae_dir)
    specs = load_specs(sae_dir / "detectors", sae_sha256=sae.sha256, d_sae=sae.cfg.d_sae, force=True)
    files = {f.path: f for fs in (*CONCEPT_FILES.values(), BENIGN_FILES) for f in fs}  # each file once
    examples = []
    for rel, f in sorted(files.items()):
        path = resolve(f, data_dir, ARTIFACTS_DIR / "data")
        examples += [e for e in load_file(path, name=rel) if e.split == "test"][: args.per_file]
    lm = load_model()
    scores, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "bfloat16"):
            cache = ActivationCache(Path(tmp), lm.model_id, DEFAULT_LAYER, compute_dtype=dtype)
            t0 = time.perf_counter()
            cache.ensure(examples, example_activations(lm, DEFAULT_LAYER, context=cache.context, compute_dtype=dtype),
                         progress=not args.json)
            seconds[dtype] = time.perf_counter() - t0
            scores[dtype] = {
                s.name: s.bias + latent_features(cache, sae, examples, span=s.span, aggregations=(s.aggregation,),
                                                 latents=s.latents, progress=False)[s.aggregation] @ np.asarray(s.weights)
                for s in specs}
    result = {"n_examples": len(examples), "seconds": seconds, "speedup": seconds["float32"] / seconds["bfloat16"],
              "detectors": {}}
    for s in specs:
        a, b = scores["float32"][s.name], scores["bfloat16"][s.name]
        result["detectors"][s.name] = {
            "max_abs_diff": float(np.abs(a - b).max()), "mean_abs_diff": float(np.abs(a - b).mean()),
            "score_sd": float(a.std()), "threshold": s.threshold,
            "alerts_float32": int((a >= s.threshold).sum()), "decisions_differing": int(((a >= s.threshold) != (b >= s.threshold)).sum())}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{len(examples)} examples; activations float32 {seconds['float32']:.1f} s, bf16 {seconds['bfloat16']:.1f} s "
          f"({result['speedup']:.2f}x)")
    print(f"{'detector':<15}{'max |diff|':>11}{'mean |diff|':>12}{'score sd':>10}{'threshold':>10}{'alerts':>8}{'differ':>8}")
    for name, r in result["detectors"].items():
        print(f"{name:<15}{r['max_abs_diff']:>11.3f}{r['mean_abs_diff']:>12.4f}{r['score_sd']:>10.2f}{r['threshold']:>10.2f}"
              f"{r['alerts_float32']:>8}{r['decisions_differing']:>8}")


if __name__ == "__main__":
    main()
