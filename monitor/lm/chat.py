"""Chat formatting: turn chat messages into tokens with the role of every token.

Live traffic reaches the sidecar as chat-templated tokens: a prompt (system + user turns) followed
by the model's response. Offline jobs format text the same way so the SAE and the detectors see the
same distribution, and know which tokens are the prompt and which the response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE


@dataclass
class ChatTokens:
    """A tokenised conversation with the role of each token."""

    input_ids: torch.Tensor
    """``[n]`` int64 token ids."""
    roles: torch.Tensor
    """``[n]`` uint8, ``ROLE_PROMPT`` or ``ROLE_RESPONSE`` (tokens inside assistant turns)."""


def render_chat(tokenizer, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                live_roles: bool = False) -> ChatTokens:
    """Apply the tokenizer's chat template and mark assistant-turn tokens as ``ROLE_RESPONSE``.

    Roles come from rendering growing prefixes of the conversation: the tokens a prefix adds belong to
    its last message. The assistant header (``<|im_start|>assistant``) counts as prompt, like live
    traffic, where the server writes it before the model generates.

    ``live_roles``: mark only the final assistant turn as ``ROLE_RESPONSE``, as the sidecar sees a live
    request (the conversation so far is the prompt; the model generates one reply). Offline detector data
    are rendered this way, so a multi-turn benign dialogue looks to a reply detector like live traffic.
    """
    last_reply = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    ids: list[int] = []
    roles: list[int] = []
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            head = _template(tokenizer, messages[:i], add_generation_prompt=True)
            ids_head = head[len(ids):] if head[: len(ids)] == ids else head
            ids.extend(ids_head)
            roles.extend([ROLE_PROMPT] * len(ids_head))
        full = _template(tokenizer, messages[: i + 1], add_generation_prompt=False)
        new = full[len(ids):] if full[: len(ids)] == ids else full
        if full[: len(ids)] != ids:  # template is not prefix-stable: fall back to whole re-tokenisation
            ids, roles = [], []
        ids.extend(new)
        is_reply = msg["role"] == "assistant" and (not live_roles or i == last_reply)
        roles.extend([ROLE_RESPONSE if is_reply else ROLE_PROMPT] * len(new))
    if max_tokens is not None:
        ids, roles = ids[:max_tokens], roles[:max_tokens]
    return ChatTokens(torch.tensor(ids, dtype=torch.int64), torch.tensor(roles, dtype=torch.uint8))


def render_recent_turns(tokenizer, messages: list[dict[str, str]], *, max_tokens: int,
                        live_roles: bool = False) -> ChatTokens:
    """``render_chat`` of the longest suffix of the conversation that fits in ``max_tokens``.

    A conversation longer than the context loses its *earliest* turns (a leading system message is
    kept), not its end: the final reply is what a reply detector reads, and a deployment that runs out
    of context drops old turns the same way. Only when the kept turns alone are still too long (one
    long message) is the rendering cut at ``max_tokens`` from its start.
    """
    chat = render_chat(tokenizer, messages, live_roles=live_roles)
    if len(chat.input_ids) <= max_tokens:
        return chat
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    lo, hi = 1, len(rest) - 1  # drop rest[:k]: find the smallest k that fits (rendering length falls with k)
    best = None
    while lo <= hi:
        k = (lo + hi) // 2
        candidate = render_chat(tokenizer, system + rest[k:], live_roles=live_roles)
        if len(candidate.input_ids) <= max_tokens:
            best, hi = candidate, k - 1
        else:
            lo = k + 1
    if best is None:
        best = render_chat(tokenizer, system + rest[-1:], max_tokens=max_tokens, live_roles=live_roles)
    return best


def _template(tokenizer, messages, *, add_generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return list(out)
