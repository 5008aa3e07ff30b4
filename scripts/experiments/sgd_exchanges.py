"""Single exchanges cut out of the SGD dialogues: benign one-turn replies of every length for calibration.

The single-turn benign replies a reply detector is calibrated on are a few hundred paragraphs (the
harmless chats' answers), so its 1 % threshold is their maximum, and nothing there is as short as a
service reply ("Done. The transfer was successful.", "Anything else?"). This writes, for each of the
1,920 dialogues of ``benign/sgd_multiturn_dialogues.jsonl``, up to ``--per-dialogue`` of its user line +
assistant reply exchanges (any position, drawn with seed 0) as one-turn conversations, label 0, keeping
the dialogue's ``pair_id`` so each exchange lands in its dialogue's split (the test split's dialogues stay
unseen):

    .venv/bin/python scripts/experiments/sgd_exchanges.py [--per-dialogue 3] [OUT]
    .venv/bin/safety-monitor calibrate --concepts power_seeking --kinds reply --benign OUT ...

Results are in docs/detectors.md."""
import argparse
import itertools
import json
import random
from pathlib import Path

from detectors.calibration.data import row_messages

SGD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "benign" / "sgd_multiturn_dialogues.jsonl"


def exchanges(text: str) -> list[tuple[str, str]]:
    """The dialogue's (user line, the assistant's reply to it) pairs, in order (turns parsed as calibration
    parses them)."""
    turns = row_messages({"text": text})
    return [(u["content"], a["content"]) for u, a in itertools.pairwise(turns)
            if u["role"] == "user" and a["role"] == "assistant"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="runs/sgd_exchanges.jsonl")
    ap.add_argument("--per-dialogue", type=int, default=3)
    ap.add_argument("--data", default=str(SGD))
    args = ap.parse_args()
    rng, rows, seen, short = random.Random(0), [], set(), 0
    for line in Path(args.data).read_text().splitlines():
        d = json.loads(line)
        pairs = exchanges(d["text"])
        for u, a in rng.sample(pairs, min(args.per_dialogue, len(pairs))):
            text = f"User: {u}\nAssistant: {a}"
            if text in seen:
                continue
            seen.add(text)
            short += len(a.split()) <= 5
            rows.append({"text": text, "label": 0, "source": "sgd dialogues, one exchange", "pair_id": d["pair_id"]})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} exchanges from {args.data} -> {args.out} ({short} replies of at most five words)")


if __name__ == "__main__":
    main()
