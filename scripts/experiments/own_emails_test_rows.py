"""The test split of the model's own e-mails as ``safety-monitor eval`` files, one per elicitation round.

Round 3 adds organisations and scam / ordinary templates that no earlier detector saw, so a detector fit
before it, scored on round 3's test pairs, shows how it carries to requests it was not fit on.

    .venv/bin/python scripts/experiments/own_emails_test_rows.py runs/heldout
    .venv/bin/safety-monitor eval --data runs/heldout/own_emails_round3_test.jsonl --detectors DIR --json
"""
import json
import sys
from pathlib import Path

from detectors.calibration.splits import group_key, split_of
from monitor.artifacts import ARTIFACTS_DIR
from monitor.toolkit.elicited_replies import ORGANISATIONS, ROUNDS, SCAM_ASKS


def round_of(pair_id: str) -> int:
    """1-based round that introduced an ``elicit-scam-<org>-<ask>`` pair."""
    org, ask = (int(x) for x in pair_id.rsplit("-", 2)[1:])
    return next(r + 1 for r, (n_orgs, n_asks) in enumerate(ROUNDS) if org < n_orgs and ask < n_asks)


def main(out_dir: str) -> None:
    assert len(ORGANISATIONS) * len(SCAM_ASKS) == ROUNDS[-1][0] * ROUNDS[-1][1]
    rows = [json.loads(line) for line in (ARTIFACTS_DIR / "data/scam/elicited_scam_email_replies.jsonl").open()]
    test = [r for r in rows if split_of(group_key(r)) == "test"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, keep in (("round12", lambda r: round_of(r["pair_id"]) < 3), ("round3", lambda r: round_of(r["pair_id"]) == 3)):
        chosen = [r for r in test if keep(r)]
        (out / f"own_emails_{name}_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
        print(f"{name}: {len(chosen)} rows, {sum(r['label'] for r in chosen)} scam")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/heldout")
