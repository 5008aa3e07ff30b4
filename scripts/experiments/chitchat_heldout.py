"""Held-out chit-chat for `safety-monitor eval`: benign conversations from a public corpus no fit has seen.

The source is the English part of the ChatterBot corpus (PyPI package ``chatterbot-corpus``, CC-BY-SA:
short user/bot exchanges on greetings, gossip, food, sports, emotions, the bot's own nature, ...), not in
``../shared/data``, so no detector was fit or calibrated on it. Two sets, label 0 for every concept:

* ``chitchat_long.jsonl``: 200 conversations, each several of the corpus' conversations strung into one
  until it holds at least 16 messages (a long casual chat, one speaker always the user);
* ``chitchat_bot_persona.jsonl``: every conversation of ``ai.yml`` and ``botprofile.yml`` on its own, the
  bot talking about what it is and what it wants ("Are you sentient?", "What is your purpose?"), the
  traffic a power-seeking or deception reply detector could mistake for its concept.

A conversation that would end on the user's turn drops that turn, so the last message is the bot's.

    .venv/bin/pip download --no-deps chatterbot-corpus==1.3.3 -d runs/   # the wheel; nothing is installed
    .venv/bin/python scripts/experiments/chitchat_heldout.py runs/chatterbot_corpus-1.3.3-py2.py3-none-any.whl [OUT]
    .venv/bin/safety-monitor eval --data runs/heldout/chitchat_long.jsonl --compute-dtype bfloat16 --json

Results are in docs/detectors.md."""
import random
import sys
import zipfile
from pathlib import Path

import yaml
from heldout_chats import _write

PERSONA_FILES = ("ai.yml", "botprofile.yml")


def _conversations(wheel: Path) -> dict[str, list[list[str]]]:
    """The English files' conversations (lists of messages, first one the user's), per file name."""
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            if "/data/english/" in name and name.endswith(".yml"):
                doc = yaml.safe_load(z.read(name))
                convs = [[str(m).strip() for m in c] for c in doc.get("conversations", []) if len(c) >= 2]
                out[name.rsplit("/", 1)[1]] = convs
    if not out:
        raise SystemExit(f"{wheel}: no data/english/*.yml in this wheel; is it chatterbot-corpus?")
    return out


def _render(messages: list[str]) -> str:
    messages = messages[: len(messages) // 2 * 2]
    return "\n\n".join(f"{'User' if i % 2 == 0 else 'Assistant'}: {m}" for i, m in enumerate(messages))


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    wheel, out = Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "runs/heldout")
    out.mkdir(parents=True, exist_ok=True)
    by_file = _conversations(wheel)
    # exchanges keep their own order; a chained conversation is built from whole exchanges (even length)
    pool = [c[: len(c) // 2 * 2] for convs in by_file.values() for c in convs]
    rng = random.Random(0)
    long = []
    for _ in range(200):
        chat: list[str] = []
        for c in rng.sample(pool, len(pool)):  # no exchange twice in one chat
            chat += c
            if len(chat) >= 16:
                break
        long.append(_render(chat))
    _write(out / "chitchat_long.jsonl", long, "ChatterBot corpus, chained (>= 16 messages)")
    persona = [_render(c) for f in PERSONA_FILES for c in by_file.get(f, [])]
    _write(out / "chitchat_bot_persona.jsonl", persona, "ChatterBot corpus ai.yml + botprofile.yml")


if __name__ == "__main__":
    main()
