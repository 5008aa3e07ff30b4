"""Held-out multi-turn conversations for `safety-monitor eval`: two sets of 100 benign conversations of
five exchanges each, written to OUT (default runs/heldout):

* ``chained_harmless_chats.jsonl``: consecutive rows of ``benign/refusal_direction_harmless_chat.jsonl``;
* ``chained_plain_opinion_replies.jsonl``: five random label-0 rows (plain answers to opinionated
  questions, written by another model) of ``sycophancy/persona_sycophantic_replies.jsonl``, never benign
  traffic in any fit.

    .venv/bin/python scripts/experiments/heldout_chats.py [OUT]
    .venv/bin/safety-monitor eval --data runs/heldout/chained_plain_opinion_replies.jsonl --compute-dtype bfloat16 --json

Results (2026-12-01) are in docs/detectors.md."""
import json
import random
import sys
from pathlib import Path

from monitor.dictionary.corpus import default_data_dir


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open() if line.strip()]


def _write(path: Path, texts: list[str], source: str) -> None:
    with path.open("w") as f:
        for text in texts:
            f.write(json.dumps({"text": text, "label": 0, "source": source}) + "\n")
    print(f"wrote {len(texts)} conversations to {path}")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/heldout")
    out.mkdir(parents=True, exist_ok=True)
    data = default_data_dir()
    chats = [r for r in _rows(data / "benign/refusal_direction_harmless_chat.jsonl") if "Assistant:" in r["text"]]
    _write(out / "chained_harmless_chats.jsonl",
           ["\n\n".join(r["text"].strip() for r in chats[i : i + 5]) for i in range(0, 500, 5)][:100],
           "chained harmless chats (5 exchanges)")
    plain = [r for r in _rows(data / "sycophancy/persona_sycophantic_replies.jsonl") if r["label"] == 0]
    rng = random.Random(0)
    _write(out / "chained_plain_opinion_replies.jsonl",
           ["\n\n".join(f"User: {r['prompt'].strip()}\n\nAssistant: {r['response'].strip()}" for r in rng.sample(plain, 5))
            for _ in range(100)],
           "chained plain opinion replies (5 exchanges)")


if __name__ == "__main__":
    main()
