"""The elicited-replies data job: stable request order, resumable appends (no model needed)."""

import json
import random

from monitor.artifacts import ARTIFACTS_DIR
from monitor.toolkit.elicited_replies import (
    ORDINARY_ASKS,
    ORGANISATIONS,
    REQUEST_FRAMES,
    ROUNDS,
    SCAM_ASKS,
    append_rows,
    pair_round,
    request_frame,
    samples_done,
    scam_email_requests,
)


def test_first_round_is_kept_and_longer_runs_only_add():
    n_orgs, n_asks, _ = ROUNDS[0]
    first = [(o, i) for o in ORGANISATIONS[:n_orgs] for i in range(n_asks)]
    random.Random(0).shuffle(first)  # the first round's order, as it was generated
    requests = scam_email_requests(640)
    assert len(requests) == 1280 and len({r.request for r in requests}) == 1280
    assert [r.pair_id for r in requests[:480:2]] == [f"elicit-scam-{ORGANISATIONS.index(o)}-{i}" for o, i in first]
    assert scam_email_requests(300)[:480] == scam_email_requests(240)
    # pairs: one scam and one ordinary request from the same organisation
    assert all(a.label == 1 and b.label == 0 and a.pair_id == b.pair_id for a, b in zip(requests[::2], requests[1::2]))
    assert len(ORGANISATIONS) * len(SCAM_ASKS) == ROUNDS[-1][0] * ROUNDS[-1][1] == 2800
    assert len(ORDINARY_ASKS) == len(SCAM_ASKS)
    assert scam_email_requests(2800)[:1280] == requests  # later rounds only add


def test_shipped_replies_keep_their_requests_and_pair_ids():
    """Every row of the shipped file was asked by the request order as it stands (earlier rounds unchanged)."""
    shipped = ARTIFACTS_DIR / "data/scam/elicited_scam_email_replies.jsonl"
    asked = {(r.request, r.label, r.pair_id) for r in scam_email_requests(2800)}
    rows = [json.loads(line) for line in shipped.read_text().splitlines()]
    assert rows and all((r["request"], r["label"], r["pair_id"]) in asked for r in rows)


def test_pair_round_names_the_round_that_added_the_pair():
    requests = scam_email_requests(2800)
    bounds = [240, 640, 1200, 1920, 2800]  # pairs in use after each round
    for k in (0, 239, 240, 639, 640, 1199, 1200, 1919, 1920, 2799):
        assert pair_round(requests[2 * k].pair_id) == next(r + 1 for r, b in enumerate(bounds) if k < b)


def test_rounds_1_to_4_keep_one_wording_and_round_5_varies_it_per_pair():
    requests = scam_email_requests(2800)
    assert all(r.request.startswith("Write an email from ") for r in requests[: 2 * 1920])
    later = requests[2 * 1920 :]
    used = {request_frame(r.pair_id) for r in later}
    assert used == set(REQUEST_FRAMES)  # every wording is in use
    for scam, ordinary in zip(later[::2], later[1::2]):  # a pair shares its wording and organisation
        head = request_frame(scam.pair_id).split("{ask}")[0]
        org = ORGANISATIONS[int(scam.pair_id.split("-")[2])]
        assert scam.request.startswith(head.format(org=org)) and ordinary.request.startswith(head.format(org=org))


def test_append_rows_and_samples_done(tmp_path):
    out = tmp_path / "replies.jsonl"
    reqs = scam_email_requests(2)
    out.write_text(json.dumps({"request": reqs[0].request}) + "\n")  # a first-round row: no sample field
    assert append_rows(out, reqs, ["Dear customer, ...", "", "Hello", "Hi"], sample=1, model_id="m") == 3
    done = samples_done(out)
    assert done[reqs[0].request] == 2 and done[reqs[1].request] == 0 and done[reqs[2].request] == 2
    rows = [json.loads(x) for x in out.read_text().splitlines()[1:]]
    assert [r["sample"] for r in rows] == [1, 1, 1]
    assert all(r["text"] == f"User: {r['prompt']}\n\nAssistant: {r['response']}" for r in rows)
    again = tmp_path / "again.jsonl"
    append_rows(again, reqs, ["Dear customer, ...", "", "Hello", "Hi"], sample=1, model_id="m")
    assert again.read_text().splitlines() == out.read_text().splitlines()[1:]  # the prompt is chosen by hash
