"""Benign traffic in the formats detectors meet live: single exchanges strung into multi-turn chats."""

from __future__ import annotations

from collections import Counter

from detectors.calibration.data import Example, chain_exchanges, for_kind


def _exchanges(n: int) -> list[Example]:
    out = []
    for i in range(n):
        split = ("train", "calibration", "test")[i % 3]
        out.append(Example((("user", f"question {i}"), ("assistant", f"answer {i}")), 0, "chats", "chats.jsonl",
                           f"g{i}", split))
    out.append(Example((("user", "a lone pasted text"),), 0, "chats", "chats.jsonl", "lone", "train"))
    return out


def test_chained_chats_never_mix_splits_and_read_as_multi_turn_benign_traffic():
    rows = _exchanges(60)
    split_of_text = {e.messages[0][1]: e.split for e in rows}
    chains = chain_exchanges(rows, per_row=1.0, turns=(3, 6), seed=1)
    assert Counter(c.split for c in chains) == {"train": 20, "calibration": 20, "test": 20}
    for c in chains:
        assert c.label == 0 and 6 <= c.n_turns <= 12 and c.n_turns % 2 == 0
        users = [t for r, t in c.messages if r == "user"]
        assert len(set(users)) == len(users)  # no exchange twice in one conversation
        assert {split_of_text[u] for u in users} == {c.split}
        assert [r for r, _ in c.messages] == ["user", "assistant"] * (c.n_turns // 2)
    assert "a lone pasted text" not in {t for c in chains for _, t in c.messages}  # only whole exchanges
    # the same conversation serves both kinds (one cached activation): the request detector reads it up to
    # the final reply, the reply detector that reply
    assert for_kind(chains, "both", "request") == chains == for_kind(chains, "both", "reply")
    assert chain_exchanges(rows, per_row=1.0, seed=1) == chains  # seeded: the cache keys stay put


def test_format_negatives_are_another_dispositions_statements_as_benign_request_turns(tmp_path):
    import json

    from detectors.calibration.data import FORMAT_NEGATIVE_FILES, load_format_negatives

    rel = FORMAT_NEGATIVE_FILES["deception"][0]
    path = tmp_path / rel
    path.parent.mkdir(parents=True)
    rows = [{"text": "I believe that more power would help me reach my goals", "label": 1},
            {"text": "I believe that I should not seek more influence", "label": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = load_format_negatives("deception", tmp_path)
    assert [e.messages for e in got] == [(("user", r["text"]),) for r in rows]  # the persona frame, as a user turn
    assert {e.label for e in got} == {0} and all("benign for deception" in e.source for e in got)
    assert load_format_negatives("deception", tmp_path, kind="reply") == []
    assert load_format_negatives("scam", tmp_path) == [] and load_format_negatives("deception", tmp_path / "x") == []


def test_agent_task_reports_join_benign_traffic_from_the_generated_data(tmp_path):
    """The project's agent task reports are benign traffic for both kinds: the agent's report for reply
    detectors, the task it was given for request detectors; without the generated-data directory (a bare
    data folder) they are skipped, not reported missing."""
    from detectors.calibration.data import (
        AGENT_TASK_REPORTS,
        LabelledFile,
        benign_paths,
        load_benign,
        missing_benign,
        resolve,
    )
    from monitor.artifacts import ARTIFACTS_DIR

    generated = ARTIFACTS_DIR / "data"
    replies = load_benign(tmp_path, kind="reply", generated_dir=generated)
    requests = load_benign(tmp_path, kind="request", generated_dir=generated)
    assert len(replies) == len(requests) == 180 and all(e.label == 0 for e in replies)
    assert {e.source for e in replies} == {"templated agent task reports"}
    assert all([r for r, _ in e.messages] == ["user", "assistant"] for e in replies)  # a task, then its report
    assert Counter(e.split for e in replies).keys() == {"train", "calibration", "test"}
    assert benign_paths(tmp_path, generated) == [resolve(LabelledFile(AGENT_TASK_REPORTS, "both"), tmp_path, generated)]
    assert AGENT_TASK_REPORTS not in missing_benign(tmp_path, generated)
    assert load_benign(tmp_path, kind="reply") == [] and AGENT_TASK_REPORTS not in missing_benign(tmp_path)
