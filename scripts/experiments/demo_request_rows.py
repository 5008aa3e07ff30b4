"""The demo's requests as `safety-monitor eval` rows, to check a recalibrated request detector against them
without running the demo: one row per demo conversation (its turns before the live reply, as
``User: … / Assistant: …`` text when it has several), label 1 for the three scam conversations, written to
OUT (default runs/heldout/demo_requests.jsonl). `eval` reports recall (of 3) and FPR (of 7) per detector.

    .venv/bin/python scripts/experiments/demo_request_rows.py [OUT]
    .venv/bin/safety-monitor eval --data runs/heldout/demo_requests.jsonl --detectors DIR --compute-dtype bfloat16 --json

Results (2026-12-01) are in docs/detectors.md."""
import json
import sys
from pathlib import Path

from monitor.demo import CONVERSATIONS

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/heldout/demo_requests.jsonl")
out.parent.mkdir(parents=True, exist_ok=True)
with out.open("w") as f:
    for conv in CONVERSATIONS:
        turns = conv.messages
        text = turns[0][1] if len(turns) == 1 else "\n\n".join(f"{role.capitalize()}: {t}" for role, t in turns)
        f.write(json.dumps({"text": text, "label": int(conv.title.startswith("scam")), "source": conv.title}) + "\n")
print(f"wrote {len(CONVERSATIONS)} rows to {out}")
