"""The model's own e-mails as ``safety-monitor eval`` files, per elicitation round: its test split
(``own_emails_round<r>_test.jsonl``) and every row (``own_emails_round<r>_all.jsonl``); and every test
e-mail of all rounds as a user's own message (``own_emails_test_pasted.jsonl``: a user pasting a company
e-mail they received, for the scam request detector).

Each round adds organisations and scam / ordinary templates, so a detector fit before a round, scored on
all of that round's rows, shows how it carries to requests it was not fit on.

    .venv/bin/python scripts/experiments/own_emails_test_rows.py runs/heldout
    .venv/bin/safety-monitor eval --data runs/heldout/own_emails_round4_all.jsonl --detectors DIR --json
"""
import json
import sys
from pathlib import Path

from detectors.calibration.splits import group_key, split_of
from monitor.artifacts import ARTIFACTS_DIR
from monitor.toolkit.elicited_replies import ROUNDS, pair_round


def main(out_dir: str) -> None:
    rows = [json.loads(line) for line in (ARTIFACTS_DIR / "data/scam/elicited_scam_email_replies.jsonl").open()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for r in range(1, len(ROUNDS) + 1):
        every = [row for row in rows if pair_round(row["pair_id"]) == r]
        for part, chosen in (("all", every), ("test", [row for row in every if split_of(group_key(row)) == "test"])):
            (out / f"own_emails_round{r}_{part}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in chosen))
            print(f"round {r} {part}: {len(chosen)} rows, {sum(x['label'] for x in chosen)} scam")
    pasted = {row["response"].strip(): row["label"] for row in rows if split_of(group_key(row)) == "test"}
    (out / "own_emails_test_pasted.jsonl").write_text("".join(
        json.dumps({"text": text, "label": label, "source": "own e-mails, test split, pasted"}) + "\n"
        for text, label in pasted.items()))
    print(f"pasted test e-mails: {len(pasted)} rows, {sum(pasted.values())} scam")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/heldout")
