"""Data in the formats detectors meet live: single exchanges strung into multi-turn chats, plain texts
rendered as the user's turn, as a document pasted into a question, and as the model's reply."""

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
    assert [e.messages for e in got[:2]] == [(("user", r["text"]),) for r in rows]  # the persona frame, as a user turn
    assert [e.meta["rendered"] for e in got[2:]] == ["pasted", "pasted"]  # and pasted, like the concept's own texts
    assert {e.label for e in got} == {0} and all("benign for deception" in e.source for e in got)
    assert load_format_negatives("deception", tmp_path, kind="reply") == []
    assert load_format_negatives("scam", tmp_path) == [] and load_format_negatives("deception", tmp_path / "x") == []


def test_plain_texts_are_user_turns_pasted_documents_and_replies_with_the_same_label_and_split():
    from detectors.calibration.data import PASTE_FRAMES

    texts = [Example((("user", f"WINNER! claim prize {i} at 0800 123"),), i % 2, "sms", "sms.jsonl", f"g{i}",
                     ("train", "calibration", "test")[i % 3]) for i in range(60)]
    request = for_kind(texts, "text", "request")
    assert request[:60] == texts
    pasted = request[60:]
    for plain, p in zip(texts, pasted):
        assert (p.label, p.group, p.split, p.source) == (plain.label, plain.group, plain.split, plain.source)
        assert [r for r, _ in p.messages] == ["user"] and plain.messages[0][1] in p.messages[0][1]
        assert p.messages[0][1] != plain.messages[0][1] and p.key != plain.key  # its own cached activations
    # the wrapper carries no label: every frame wraps texts of both labels
    frame_of = {p.messages[0][1].replace(t.messages[0][1], "{text}"): set() for t, p in zip(texts, pasted)}
    for t, p in zip(texts, pasted):
        frame_of[p.messages[0][1].replace(t.messages[0][1], "{text}")].add(t.label)
    assert set(frame_of) == set(PASTE_FRAMES) and all(labels == {0, 1} for labels in frame_of.values())
    assert for_kind(texts, "text", "request") == request  # chosen by hash: the cache keys stay put
    reply = for_kind(texts, "text", "reply")
    assert all(r.messages[-1] == ("assistant", t.messages[0][1]) for r, t in zip(reply, texts))
