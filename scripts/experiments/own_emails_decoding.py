"""Experiment: does how the model decodes change how well its scam e-mails are caught?

The shipped e-mails are sampled (temperature 0.8, top-p 0.95). A deployment may decode greedily. This
takes organisation x template pairs no ``elicit`` run has generated (after the first N_DONE pairs of the
request order), asks the model for each pair's scam and ordinary e-mail twice, greedily and sampled, and
writes both as ``safety-monitor eval`` files (OUT, default runs/heldout):

    .venv/bin/python scripts/experiments/own_emails_decoding.py [OUT] [--pairs 400]
    .venv/bin/safety-monitor eval --data runs/heldout/own_emails_greedy.jsonl --compute-dtype bfloat16 --json

Results (2026-12-01) are in docs/detectors.md."""
import argparse
import json
from pathlib import Path

import torch

from monitor.defaults import DEFAULT_MODEL_ID
from monitor.lm.loading import load_model
from monitor.toolkit.elicited_replies import NEUTRAL_PROMPTS, generate_replies, scam_email_requests

N_DONE = 2320
"""Pairs the shipped file holds (``elicit --pairs 2320``)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/heldout")
    parser.add_argument("--pairs", type=int, default=400)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    requests = scam_email_requests(N_DONE + args.pairs)[2 * N_DONE :]
    lm = load_model(DEFAULT_MODEL_ID)
    for name, replies in (("greedy", generate_replies(lm, requests, temperature=0)),
                          ("sampled", generate_replies(lm, requests, seed=7))):
        rows = [{"prompt": NEUTRAL_PROMPTS[i % len(NEUTRAL_PROMPTS)], "response": reply, "label": r.label,
                 "text": f"User: {NEUTRAL_PROMPTS[i % len(NEUTRAL_PROMPTS)]}\n\nAssistant: {reply}",
                 "request": r.request, "pair_id": r.pair_id, "source": f"own e-mails, {name}"}
                for i, (r, reply) in enumerate(zip(requests, replies)) if reply]
        (out / f"own_emails_{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        print(f"{name}: {len(rows)} rows", flush=True)


if __name__ == "__main__":
    main()
