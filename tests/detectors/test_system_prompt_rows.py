"""Rows with a deployment's own system prompt (``system``): what ``eval`` and ``calibrate`` read."""

from __future__ import annotations

import json

import pytest

from detectors.calibration.data import DataError, load_file


def _write(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_system_prompt_opens_the_conversation_and_stays_out_of_meta(tmp_path):
    path = _write(tmp_path, [
        {"system": "You are the support assistant of Northwind Bank.", "text": "User: hi\n\nAssistant: hello",
         "label": 0},
        {"text": "User: hi\n\nAssistant: hello", "label": 0},
    ])
    with_system, without = load_file(path)
    assert with_system.messages == (("system", "You are the support assistant of Northwind Bank."),
                                    ("user", "hi"), ("assistant", "hello"))
    assert without.messages == (("user", "hi"), ("assistant", "hello"))
    assert "system" not in with_system.meta
    # One conversation under two system prompts is one group: it never straddles splits.
    assert with_system.group == without.group and with_system.key != without.key


def test_a_system_prompt_that_is_not_text_is_a_clear_error(tmp_path):
    path = _write(tmp_path, [{"text": "hi", "label": 0}, {"text": "hi", "label": 0, "system": ["a", "b"]}])
    with pytest.raises(DataError, match=r"rows.jsonl:2: 'system' must be a string"):
        load_file(path)
