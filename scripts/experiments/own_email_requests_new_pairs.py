"""Held-out requests for the scam request detector: the scam and ordinary requests of organisation x
template x wording pairs no ``elicit`` run has asked (after the first N_DONE pairs of the request order),
as one-turn ``safety-monitor eval`` rows (OUT, default runs/heldout/own_email_requests_new_pairs.jsonl):

    .venv/bin/python scripts/experiments/own_email_requests_new_pairs.py [OUT] [--pairs 400]
    .venv/bin/safety-monitor eval --data runs/heldout/own_email_requests_new_pairs.jsonl --json

Their organisations, templates and wordings each occur in the shipped file, their combinations do not.
Results (2026-12-01) are in docs/detectors.md."""
import argparse
import json
from pathlib import Path

from own_emails_decoding import N_DONE

from monitor.toolkit.elicited_replies import scam_email_requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/heldout/own_email_requests_new_pairs.jsonl")
    parser.add_argument("--pairs", type=int, default=400)
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    requests = scam_email_requests(N_DONE + args.pairs)[2 * N_DONE :]
    with out.open("w") as f:
        for r in requests:
            f.write(json.dumps({"text": r.request, "label": r.label, "pair_id": r.pair_id,
                                "source": "own e-mail requests, new pairs"}) + "\n")
    print(f"wrote {len(requests)} requests ({args.pairs} pairs) to {out}")


if __name__ == "__main__":
    main()
