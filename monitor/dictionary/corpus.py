"""The token stream for dictionary learning: corpus windows plus chat-formatted labelled conversations.

Documents are built deterministically (fixed seed) and tagged with their split, so activation
collection can resume by document index and SAE evaluation can use held-out windows that training
never saw. Detector test rows (``split_of(group_key(row)) == "test"``) never enter SAE training.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from detectors.calibration.data import row_messages
from detectors.calibration.splits import Split, group_key, split_of
from monitor.lm.chat import render_chat

CORPUS_FILES = ("corpus/gutenberg_books.jsonl", "corpus/wikitext2_valid_test_detok.jsonl", "corpus/tinyshakespeare.txt")
LABELLED_DIRS = ("benign", "deception", "power_seeking", "scam", "sycophancy")


def default_data_dir() -> Path:
    """``$SAFETY_MONITOR_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("SAFETY_MONITOR_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass
class Document:
    """One sequence the model will read."""

    input_ids: torch.Tensor
    """``[n]`` int64 token ids (at most the context size)."""
    roles: torch.Tensor
    """``[n]`` uint8 prompt/response role of each token."""
    source: str
    """File the text came from, relative to the data dir."""
    split: Split
    """Split of the text's group."""


def read_jsonl(path: Path) -> Iterator[dict]:
    with path.open() as f:
        for line in f:
            line = line.strip()
            if line:
                yield json.loads(line)


def _corpus_texts(data_dir: Path) -> Iterator[tuple[str, str, str]]:
    for rel in CORPUS_FILES:
        path = data_dir / rel
        if rel.endswith(".txt"):
            text = path.read_text()
            chunks = [text[i : i + 4000] for i in range(0, len(text), 4000)]
            for i, chunk in enumerate(chunks):
                yield rel, f"{rel}#{i}", chunk
        else:
            for i, row in enumerate(read_jsonl(path)):
                yield rel, f"{rel}#{i}", row["text"]


def build_documents(tokenizer, data_dir: Path, *, context: int = 256, seed: int = 0,
                    include_chat: bool = True) -> list[Document]:
    """All documents, shuffled with ``seed``: corpus text cut into ``context``-token windows, and
    every labelled row as a chat conversation (truncated to ``context``)."""
    docs: list[Document] = []
    for rel, key, text in _corpus_texts(data_dir):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for w, start in enumerate(range(0, max(len(ids) - 16, 1), context)):
            window = torch.tensor(ids[start : start + context], dtype=torch.int64)
            docs.append(Document(window, torch.zeros(len(window), dtype=torch.uint8), rel, split_of(f"{key}/{w}")))
    if include_chat:
        for sub in LABELLED_DIRS:
            for path in sorted((data_dir / sub).glob("*.jsonl")):
                rel = str(path.relative_to(data_dir))
                for row in read_jsonl(path):
                    chat = render_chat(tokenizer, row_messages(row), max_tokens=context)
                    docs.append(Document(chat.input_ids, chat.roles, rel, split_of(group_key(row))))
    random.Random(seed).shuffle(docs)
    return docs


def file_sequences(tokenizer, path: Path, *, context: int = 256, limit: int | None = None,
                   fmt: str = "auto") -> list[torch.Tensor]:
    """Token sequences from a user file, for evaluation.

    ``.txt``: the whole text cut into ``context``-token windows. ``.jsonl``: one row per line with
    ``text`` (and optionally ``prompt``/``response``); with ``fmt="chat"`` (or ``auto`` when a row has a
    prompt/response or a ``Human:``/``User:`` turn) each row is rendered with the chat template,
    otherwise its text is cut into windows. ``limit``: at most this many sequences.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if fmt not in ("auto", "text", "chat"):
        raise ValueError(f"format must be auto, text or chat, not {fmt!r}")
    seqs: list[torch.Tensor] = []

    def windows(text: str) -> None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), context):
            if len(ids) - start >= 2:
                seqs.append(torch.tensor(ids[start : start + context], dtype=torch.int64))

    if path.suffix == ".txt":
        windows(path.read_text())
    elif path.suffix == ".jsonl":
        for n, row in enumerate(read_jsonl(path)):
            if not isinstance(row, dict) or not isinstance(row.get("text", row.get("prompt")), str):
                raise ValueError(f"{path}:{n + 1}: each row needs a string 'text' (or 'prompt' and 'response')")  # noqa: TRY004
            messages = row_messages(row)
            chat = fmt == "chat" or (fmt == "auto" and (len(messages) > 1 or "prompt" in row))
            if chat:
                seqs.append(render_chat(tokenizer, messages, max_tokens=context).input_ids)
            else:
                windows(row["text"])
            if limit and len(seqs) >= limit:
                break
    else:
        raise ValueError(f"{path}: use a .txt or .jsonl file")
    return seqs[:limit] if limit else seqs
