"""Chat formatting: rows become messages, and rendered conversations know which tokens are the response."""

from __future__ import annotations

import pytest
import torch

from detectors.calibration.data import row_messages
from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from monitor.lm.chat import render_chat


@pytest.fixture(scope="module")
def tokenizer(default_model):
    return default_model.tokenizer


def _spans(roles: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of response tokens."""
    spans, start = [], None
    for i, r in enumerate(roles.tolist() + [ROLE_PROMPT]):
        if r == ROLE_RESPONSE and start is None:
            start = i
        elif r != ROLE_RESPONSE and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_render_chat_marks_the_assistant_turn(tokenizer):
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is Paris."}]
    chat = render_chat(tokenizer, messages)
    assert chat.input_ids.dtype == torch.int64 and chat.roles.dtype == torch.uint8
    assert chat.input_ids.shape == chat.roles.shape
    # Same tokens as the tokenizer's own template for the whole conversation.
    full = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
    full = full["input_ids"] if not isinstance(full, list) else full
    assert chat.input_ids.tolist() == list(full)
    (start, end), = _spans(chat.roles)
    response = tokenizer.decode(chat.input_ids[start:end], skip_special_tokens=True)
    assert response.strip() == "The capital of France is Paris."
    prompt = tokenizer.decode(chat.input_ids[:start])
    assert "What is the capital of France?" in prompt
    assert prompt.rstrip().endswith("<|im_start|>assistant")  # the header counts as prompt
    assert "Paris" not in prompt
    assert end == len(chat.roles) or (chat.roles[end:] == ROLE_PROMPT).all()


def test_render_chat_multi_turn_and_truncation(tokenizer):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another one?"},
                {"role": "assistant", "content": "Green, like grass."}]
    chat = render_chat(tokenizer, messages)
    spans = _spans(chat.roles)
    assert [tokenizer.decode(chat.input_ids[a:b], skip_special_tokens=True).strip() for a, b in spans] == \
        ["Blue.", "Green, like grass."]
    between = tokenizer.decode(chat.input_ids[spans[0][1]:spans[1][0]])
    assert "Another one?" in between
    short = render_chat(tokenizer, messages, max_tokens=10)
    assert short.input_ids.tolist() == chat.input_ids[:10].tolist()
    assert short.roles.tolist() == chat.roles[:10].tolist()


def test_render_chat_prompt_only(tokenizer):
    chat = render_chat(tokenizer, [{"role": "user", "content": "Hello"}])
    assert (chat.roles == ROLE_PROMPT).all() and len(chat.roles) > 3


@pytest.mark.parametrize("row,expected", [
    ({"prompt": " Is this a scam? ", "response": " Yes. ", "text": "ignored"},
     [{"role": "user", "content": "Is this a scam?"}, {"role": "assistant", "content": "Yes."}]),
    ({"text": "Human: How do I bake bread?\n\nAssistant: Mix flour, water and yeast."},
     [{"role": "user", "content": "How do I bake bread?"},
      {"role": "assistant", "content": "Mix flour, water and yeast."}]),
    ({"text": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: see you"},
     [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
      {"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]),
    ({"text": "User: first line\nsecond line\n\nAssistant: ok"},
     [{"role": "user", "content": "first line\nsecond line"}, {"role": "assistant", "content": "ok"}]),
    ({"text": "Just a plain sentence. Assistant: not a turn"},
     [{"role": "user", "content": "Just a plain sentence. Assistant: not a turn"}]),
    ({"text": "Preamble first\n\nHuman: then a turn"},
     [{"role": "user", "content": "Preamble first\n\nHuman: then a turn"}]),
    ({"text": "  "}, [{"role": "user", "content": ""}]),
    ({}, [{"role": "user", "content": ""}]),
    ({"system": " You are Acme's support bot. ", "prompt": "Hi", "response": "Hello!", "text": "ignored"},
     [{"role": "system", "content": "You are Acme's support bot."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"}]),
    ({"system": "Be brief.", "text": "User: a\n\nAssistant: b"},
     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
    ({"system": "  ", "text": "plain"}, [{"role": "user", "content": "plain"}]),
])
def test_row_messages(row, expected):
    assert row_messages(row) == expected


def test_render_recent_turns_keeps_the_final_reply(tokenizer):
    from monitor.lm.chat import render_recent_turns
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(30):
        messages += [{"role": "user", "content": f"Question number {i} about the weather in a city?"},
                     {"role": "assistant", "content": f"Answer number {i}: it is sunny and warm."}]
    messages[-1] = {"role": "assistant", "content": "The final reply."}
    full = render_chat(tokenizer, messages, live_roles=True)
    short = render_recent_turns(tokenizer, messages, max_tokens=120, live_roles=True)
    assert len(short.input_ids) <= 120 < len(full.input_ids)
    # the tail of the conversation, with the final reply as the only response span
    (start, end), = _spans(short.roles)
    assert tokenizer.decode(short.input_ids[start:end], skip_special_tokens=True).strip() == "The final reply."
    text = tokenizer.decode(short.input_ids)
    assert "Be brief." in text and "Question number 29" in text and "Question number 0 " not in text
    # as many turns as fit: one more earlier turn would not
    assert render_recent_turns(tokenizer, messages, max_tokens=10_000, live_roles=True).input_ids.tolist() == \
        full.input_ids.tolist()
    one_long = [{"role": "user", "content": "word " * 500}]
    assert len(render_recent_turns(tokenizer, one_long, max_tokens=64).input_ids) == 64


def test_a_system_message_replaces_the_templates_default(tokenizer):
    default = render_chat(tokenizer, [{"role": "user", "content": "Hello"}])
    own = render_chat(tokenizer, [{"role": "system", "content": "You are Northwind Bank's assistant."},
                                  {"role": "user", "content": "Hello"}])
    default_text, own_text = tokenizer.decode(default.input_ids), tokenizer.decode(own.input_ids)
    assert "SmolLM" in default_text and "SmolLM" not in own_text and "Northwind Bank" in own_text
    assert (own.roles == ROLE_PROMPT).all()
