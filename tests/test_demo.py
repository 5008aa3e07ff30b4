"""The demo end to end: live generation, tap, in-process sidecar, shipped detectors, local outbox."""

from __future__ import annotations

import json

from monitor.demo import CONVERSATIONS, run_demo


def test_the_demo_alerts_on_the_scam_and_stays_quiet_on_benign_and_long_chats(tmp_path):
    benign = next(c for c in CONVERSATIONS if not c.expect)
    long_chat = next(c for c in CONVERSATIONS if not c.expect and len(c.messages) >= 8)
    scam = next(c for c in CONVERSATIONS if c.expect == ("scam_request",))
    prefilled = next(c for c in CONVERSATIONS if c.expect == ("scam_reply",) and c.response_prefix)
    phishing = next(c for c in CONVERSATIONS if "scam_reply" in c.expect and not c.response_prefix)
    results, specs = run_demo(tmp_path, max_new_tokens=40, conversations=(benign, long_chat, scam, prefilled, phishing),
                              progress=lambda s: None)
    assert {"scam_reply", "scam_request"} <= set(specs) and all(s.status == "enabled" for s in specs.values())
    assert {s.kind for s in specs.values()} == {"reply", "request"}
    by_title = {r.conversation.title: r for r in results}
    assert by_title[benign.title].alerts == [] and by_title[long_chat.title].alerts == []
    scam_result = by_title[scam.title]
    fired = [a.detector for a in scam_result.alerts]
    assert "scam_request" in fired
    assert scam_result.scores["scam_request"] >= specs["scam_request"].threshold
    # The model's own turn: the phishing e-mail it writes when asked (greedy, 40 tokens: it asks for the password
    # and card number), and one whose opening was prefilled, alert the reply detector on the response tokens.
    for conv in (phishing, prefilled):
        result = by_title[conv.title]
        assert "scam_reply" in [a.detector for a in result.alerts], (conv.title, result.response, result.scores)
        assert all(a.token_span.role == "response" for a in result.alerts if a.detector == "scam_reply")
    assert "password" in by_title[phishing.title].response
    # Every alert is durable in the local outbox (JSONL mirror) under its request id.
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    want = [(r.request_id, a.detector) for r in results for a in r.alerts]
    assert sorted((a["request_id"], a["detector"]) for a in lines) == sorted(want)
    assert (tmp_path / "outbox.sqlite3").stat().st_size > 0
