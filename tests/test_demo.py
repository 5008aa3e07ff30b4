"""The demo end to end: live generation, tap, in-process sidecar, shipped detectors, local outbox."""

from __future__ import annotations

import json

from monitor.demo import CONVERSATIONS, run_demo


def test_the_demo_alerts_on_the_scam_and_not_on_the_benign_conversation(tmp_path):
    benign = next(c for c in CONVERSATIONS if not c.expect)
    scam = next(c for c in CONVERSATIONS if c.expect == ("scam",))
    results, specs = run_demo(tmp_path, max_new_tokens=12, conversations=(benign, scam), progress=lambda s: None)
    assert "scam" in specs and all(s.status == "enabled" for s in specs.values())
    by_title = {r.conversation.title: r for r in results}
    assert by_title[benign.title].alerts == []
    scam_result = by_title[scam.title]
    assert [a.detector for a in scam_result.alerts] == ["scam"]
    assert scam_result.scores["scam"] >= specs["scam"].threshold
    # Every alert is durable in the local outbox (JSONL mirror) under its request id.
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["request_id"], a["detector"]) for a in lines] == [(scam_result.request_id, "scam")]
    assert (tmp_path / "outbox.sqlite3").stat().st_size > 0
