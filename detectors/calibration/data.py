"""Labelled examples for the four concepts, split by group, formatted as the sidecar will see them.

Every labelled JSONL row has ``text``, ``label`` (1 = concept present) and ``source``; rows built from
one upstream item share a ``pair_id``. Splits come from ``detectors.calibration.splits`` (by ``pair_id``, else by
text), so a pair never straddles train / calibration / test, and every job agrees on them.

Each example becomes chat messages (``detectors.calibration.data.row_messages``): explicit ``prompt``/``response``
fields, or ``Human:/User: … Assistant: …`` turns, or else the text as one user message. That is how a
user-supplied file is read by ``safety-monitor eval`` too.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from detectors.calibration.splits import Split, group_key, split_of

CONCEPT_FILES: dict[str, tuple[str, ...]] = {
    "scam": ("scam/sms_spam_collection.jsonl", "scam/harmful_requests_fraud_vs_other_harm.jsonl",
             "scam/alpaca_benign_writing_requests.jsonl"),
    "deception": ("deception/anthropic_evals_persona.jsonl", "deception/repe_facts_instructed_pairs.jsonl"),
    "power_seeking": ("power_seeking/anthropic_evals_persona.jsonl",
                      "power_seeking/anthropic_evals_advanced_ai_risk_lm.jsonl"),
    "sycophancy": ("sycophancy/anthropic_evals_political_typology.jsonl",
                   "sycophancy/truthfulqa_templated_answer_sycophancy.jsonl"),
}
"""Labelled files each concept's detector is fitted and calibrated on, relative to the data directory."""
CHECK_FILES: dict[str, tuple[str, ...]] = {
    "deception": ("deception/truthfulqa_true_vs_false.jsonl",),
}
"""Files only evaluated, never fitted on: TruthfulQA's label is a factual falsehood, not an intent to
deceive. A deceptive-intent detector should *not* separate it; the report shows that it does not."""
BENIGN_FILES = ("benign/alpaca_instructions.jsonl", "benign/refusal_direction_harmless_chat.jsonl")
"""Benign traffic (all label 0): false-positive calibration for every detector."""


class DataError(ValueError):
    """A labelled file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One labelled conversation."""

    messages: tuple[tuple[str, str], ...]
    """``(role, content)`` turns."""
    label: int
    """1 = the concept is present, 0 = absent."""
    source: str
    """Upstream source (the row's ``source`` field, else the file name)."""
    file: str
    """File it came from."""
    group: str
    """Split unit (``pair_id`` or text)."""
    split: Split
    """train / calibration / test."""
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    """Other row fields (template, subset, ...)."""

    @property
    def key(self) -> str:
        """Stable content hash: what caches are keyed by."""
        return hashlib.sha256(json.dumps(self.messages).encode()).hexdigest()[:32]

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


_TURN = re.compile(r"(?:^|\n\n)(Human|User|Assistant):[ \t]?", re.MULTILINE)


def row_messages(row: dict) -> list[dict[str, str]]:
    """Chat messages for a dataset row: explicit ``prompt``/``response`` fields win; otherwise a text
    written as ``Human:/User: … Assistant: …`` is split into turns; any other text is a user message."""
    prompt, response = row.get("prompt"), row.get("response")
    if isinstance(prompt, str) and isinstance(response, str):
        return [{"role": "user", "content": prompt.strip()}, {"role": "assistant", "content": response.strip()}]
    text = str(row.get("text", ""))
    parts = _TURN.split(text)
    if len(parts) >= 3 and parts[0].strip() == "":
        messages = []
        for speaker, content in zip(parts[1::2], parts[2::2]):
            role = "assistant" if speaker == "Assistant" else "user"
            messages.append({"role": role, "content": content.strip()})
        return messages
    return [{"role": "user", "content": text.strip()}]


def load_file(path: Path, *, name: str | None = None) -> list[Example]:
    """Read a labelled JSONL file (``text`` and ``label`` required; ``prompt``/``response``, ``pair_id`` and
    ``source`` optional). Raises ``DataError`` naming the line on malformed rows."""
    name = name or path.name
    out = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DataError(f"{path}:{n}: each row needs a string 'text'")
            try:
                label = int(row.get("label"))
            except (TypeError, ValueError):
                raise DataError(f"{path}:{n}: 'label' must be 0 or 1, got {row.get('label')!r}") from None
            if label not in (0, 1):
                raise DataError(f"{path}:{n}: 'label' must be 0 or 1, got {label}")
            messages = tuple((m["role"], m["content"]) for m in row_messages(row))
            group = group_key(row)
            meta = {k: v for k, v in row.items() if k not in ("text", "label", "prompt", "response", "source")}
            out.append(Example(messages, label, str(row.get("source") or name), name, group, split_of(group), meta))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def load_concept(concept: str, data_dir: Path, *, max_per_file: int | None = None, seed: int = 0) -> list[Example]:
    """All labelled examples of a concept. ``max_per_file``: keep at most this many rows of each file,
    sampled by group (whole pairs) with both labels kept in proportion."""
    if concept not in CONCEPT_FILES:
        raise KeyError(f"unknown concept {concept!r}; known: {', '.join(CONCEPT_FILES)}")
    examples = []
    for rel in CONCEPT_FILES[concept]:
        examples += subsample(load_file(data_dir / rel, name=rel), max_per_file, seed)
    return examples


def load_checks(concept: str, data_dir: Path, *, max_per_file: int | None = None, seed: int = 0) -> list[Example]:
    """The concept's evaluation-only files (``CHECK_FILES``), test split only."""
    out = []
    for rel in CHECK_FILES.get(concept, ()):
        out += [e for e in subsample(load_file(data_dir / rel, name=rel), max_per_file, seed) if e.split == "test"]
    return out


def load_benign(data_dir: Path, *, max_per_file: int | None = None, seed: int = 0) -> list[Example]:
    out = []
    for rel in BENIGN_FILES:
        out += subsample(load_file(data_dir / rel, name=rel), max_per_file, seed)
    return out


def subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """At most ``n`` examples, drawn as whole groups (pairs stay together) in a seeded order, balancing
    labels: each label gets up to half of ``n``, and a rare label keeps every example (scam positives
    are ~12 % of the SMS file; they are the examples that matter)."""
    if n is None or len(examples) <= n:
        return examples
    groups: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        groups[e.group].append(e)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    if any(len(g) > 1 for g in groups.values()):  # paired file: a pair already holds both labels
        out: list[Example] = []
        for k in keys:
            if len(out) + len(groups[k]) <= n:
                out += groups[k]
        return out
    by_label: dict[int, list[str]] = defaultdict(list)
    for k in keys:
        by_label[max(e.label for e in groups[k])].append(k)
    budget = {lab: n // len(by_label) for lab in by_label}
    small = [lab for lab in by_label if sum(len(groups[k]) for k in by_label[lab]) < n // 2]
    for lab in small:  # give the rare label's unused share to the other
        spare = n // 2 - sum(len(groups[k]) for k in by_label[lab])
        for other in budget:
            if other != lab:
                budget[other] += spare
    out = []
    for lab, ks in sorted(by_label.items()):
        taken = 0
        for k in ks:
            if taken + len(groups[k]) > budget[lab]:
                continue
            out += groups[k]
            taken += len(groups[k])
    return out


def by_split(examples: list[Example]) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = {"train": [], "calibration": [], "test": []}
    for e in examples:
        out[e.split].append(e)
    return out
