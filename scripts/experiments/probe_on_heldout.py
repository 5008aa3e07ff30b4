"""Experiment: how far the dense probe carries to a held-out file, next to the detector's `eval` AUROC there.

A detector is judged against the dense probe on its own test split; on data of another kind (hand-written
replies, pasted texts) both may fall, and only the probe says whether the SAE's latents or the training data
are what stops it. This fits calibration's dense probe (``detectors.calibration.probe.fit_probe``: L2
logistic regression on the mean over the span of the raw layer activations) on the concept's train split,
rendered for the kind, and prints its AUROC on each held-out file (rows read as ``eval`` reads them):

    .venv/bin/python scripts/experiments/probe_on_heldout.py --concept power_seeking --kind reply \\
        --data runs/heldout/power_replies.jsonl [--data ...]

Activations come from (and go to) calibrate's cache (float32 unless ``--compute-dtype bfloat16``), so
after `calibrate --activations-only` for the same concept, kind and precision only the held-out rows run.
Results are in docs/detectors.md."""
import argparse
from pathlib import Path

import numpy as np
import torch

from detectors.calibration.activation_cache import ActivationCache
from detectors.calibration.data import load_concept, load_file
from detectors.calibration.probe import fit_probe
from detectors.calibration.span_features import dense_features
from detectors.calibration.stats import auroc
from detectors.spec import KIND_SPAN
from monitor.cli.detector_jobs import example_activations
from monitor.defaults import DEFAULT_LAYER, DEFAULT_MODEL_ID
from monitor.dictionary.corpus import default_data_dir
from monitor.lm.loading import cache_root, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concept", required=True)
    ap.add_argument("--kind", default="reply", choices=("reply", "request"))
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"),
                    help="the activations' precision (bfloat16: as the shipped specs were fit, on CPUs with "
                         "AVX512-BF16)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(DEFAULT_MODEL_ID)
    cache = ActivationCache(cache_root() / "detector-activations", lm.model_id, DEFAULT_LAYER, 1280,
                            compute_dtype=args.compute_dtype)
    span = KIND_SPAN[args.kind]
    train = [e for e in load_concept(args.concept, default_data_dir(), kind=args.kind, max_per_file=1000)
             if e.split == "train"]
    held = {p: load_file(Path(p)) for p in args.data}
    cache.ensure(train + [e for rows in held.values() for e in rows],
                 example_activations(lm, cache.layer, context=cache.context, compute_dtype=cache.compute_dtype))
    y = np.array([e.label for e in train])
    probe = fit_probe(dense_features(cache, train, span=span), y, np.array([e.group for e in train]))
    print(f"dense probe on {len(train)} train rows of {args.concept} ({args.kind}, mean over {span}): "
          f"CV AUROC {probe.cv_auroc:.3f}")
    for path, rows in held.items():
        scores = probe.score(dense_features(cache, rows, span=span))
        print(f"  {path}: AUROC {auroc(scores, np.array([e.label for e in rows])):.3f} (n {len(rows)})")


if __name__ == "__main__":
    main()
