"""Detector specs side by side on held-out sets: one markdown table, each spec at its own threshold.

A candidate spec (a recalibration written with ``calibrate --out DIR``) and the shipped one share a name,
so ``eval`` cannot load them together. This copies each spec under the name given, runs
``safety-monitor eval --json`` once per data file over all of them, and prints, per set and spec,
AUROC (when the set has both labels), recall and FPR:

    .venv/bin/python scripts/experiments/compare_specs.py \\
        --spec shipped=artifacts/smollm2-135m-instruct/layer15-9216/detectors/deception_reply.json \\
        --spec agentic=runs/dr_agentic/deception_reply.json \\
        --data runs/heldout/power_replies.jsonl --data runs/heldout/chitchat_bot_persona.jsonl \\
        --compute-dtype bfloat16
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _cell(m: dict) -> str:
    parts = [] if m.get("auroc") is None else [f"AUROC {m['auroc']:.3f}"]
    if m.get("recall") is not None:
        parts.append(f"recall {m['recall']:.2f}")
    if m.get("fpr") is not None:
        parts.append(f"FPR {100 * m['fpr']:.1f} %")
    return ", ".join(parts) or "–"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", action="append", required=True, help="NAME=PATH of a detector spec JSON (repeatable)")
    ap.add_argument("--data", action="append", required=True, help="labelled JSONL to score (repeatable)")
    ap.add_argument("--compute-dtype", default=None, help="passed to eval (bfloat16 on CPUs with AVX512-BF16)")
    args = ap.parse_args()
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        for arg in args.spec:
            name, _, path = arg.partition("=")
            if not path:
                ap.error(f"--spec {arg!r}: write NAME=PATH")
            spec = json.loads(Path(path).read_text())
            spec["name"] = name
            (Path(tmp) / f"{name}.json").write_text(json.dumps(spec))
            names.append(name)
        print("| set | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for data in args.data:
            cmd = [sys.executable, "-m", "monitor.cli.commands", "eval", "--data", data, "--detectors", tmp, "--json"]
            if args.compute_dtype:
                cmd += ["--compute-dtype", args.compute_dtype]
            done = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"eval failed on {data}:\n{done.stderr[-2000:]}", file=sys.stderr)
                return done.returncode
            result = json.loads(done.stdout.strip().splitlines()[-1])["detectors"]
            print(f"| {Path(data).stem} | " + " | ".join(_cell(result[n]) for n in names) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
