"""Rows whose user turn lives in another field (the model's own e-mails keep their request in ``request``)."""

from __future__ import annotations

import json

import pytest

from detectors.calibration.data import (
    GENERATED,
    DataError,
    LabelledFile,
    _load,
    for_kind,
    load_file,
    own_email_ordinary_turns,
    user_turns,
)


def _rows(tmp_path, rows):
    path = tmp_path / "scam" / "replies.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reply(request, label, pair, sample):
    return {"prompt": "Write the email.", "response": f"Dear customer, reply {sample} to: {request}",
            "text": "x", "label": label, "request": request, "pair_id": pair, "source": "generated:own"}


def test_each_distinct_request_becomes_one_user_turn_in_its_pairs_split(tmp_path):
    rows = [_reply(f"Write a {kind} email from Org {p}.", label, f"pair-{p}", s)
            for p in range(40) for kind, label in (("scam", 1), ("ordinary", 0)) for s in range(2)]
    path = _rows(tmp_path, rows)
    replies = load_file(path)
    requests = user_turns(replies, "request")
    assert len(requests) == 80  # two samples per request, one request example
    assert {e.messages for e in requests} == {(("user", r["request"]),) for r in rows}
    by_group = {e.group: e.split for e in replies}
    assert all(e.split == by_group[e.group] for e in requests)  # a pair never straddles splits
    assert {e.source for e in requests} == {"generated:own (request as the user's turn)"}
    # The model's e-mails themselves, pasted by a user: the final assistant turn as the user's message.
    pasted = user_turns(replies, "response")
    assert len(pasted) == 160 and {e.messages for e in pasted} == {(("user", r["response"]),) for r in rows}
    # The file trains the request detector through its requests and the reply detector through its replies.
    files = (LabelledFile(GENERATED + "scam/replies.jsonl", "response", whole=True),
             LabelledFile(GENERATED + "scam/replies.jsonl", "prompt", user_turn_from="request"))
    request_kind = _load(files, tmp_path, tmp_path, "request", None, 0)
    reply_kind = _load(files, tmp_path, tmp_path, "reply", None, 0)
    assert {e.messages for e in request_kind} == {e.messages for e in requests}
    assert len(reply_kind) == 160 and all(e.messages[-1][0] == "assistant" for e in reply_kind)
    assert for_kind(requests, "prompt", "reply") == []


def test_a_row_without_the_field_is_a_clear_error(tmp_path):
    path = _rows(tmp_path, [_reply("Write it.", 1, "p", 0), {"text": "no request here", "label": 0}])
    with pytest.raises(DataError, match="no string 'request'"):
        user_turns(load_file(path), "request")


def test_ordinary_own_emails_and_their_requests_become_benign_request_turns(tmp_path):
    rows = [_reply(f"Write a {kind} email from Org {p}.", label, f"pair-{p}", 0)
            for p in range(30) for kind, label in (("scam", 1), ("ordinary", 0))]
    path = tmp_path / "scam" / "elicited_scam_email_replies.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    benign = own_email_ordinary_turns(tmp_path)
    ordinary = [r for r in rows if r["label"] == 0]
    assert len(benign) == 60 and all(e.label == 0 and e.source.endswith("(benign for scam)") for e in benign)
    assert {e.messages[0][1] for e in benign} == {r["request"] for r in ordinary} | {r["response"] for r in ordinary}
