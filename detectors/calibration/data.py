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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from detectors.calibration.splits import Split, group_key, split_of

LabelIn = Literal["text", "prompt", "response", "both"]


@dataclass(frozen=True)
class LabelledFile:
    """A labelled JSONL file and where in a conversation its label lives, which decides the detector kinds
    (``detectors.spec.KIND_SPAN``) it trains:

    ``text``      plain texts (an SMS, a persona statement): rendered as a user turn (request detectors)
                  *and* as the assistant's reply to a neutral request (reply detectors), so the span and
                  the content decide, not the format;
    ``prompt``    the user's turn carries the label (requests for fraud): request detectors only;
    ``response``  the assistant's turn carries it (a multiple-choice answer, a sycophantic reply, the
                  model's own e-mail): reply detectors only;
    ``both``      the label is the user's instruction and shapes the reply (RepE's "pretend you are
                  dishonest"), or the row is benign traffic: both kinds.
    """

    path: str
    """Relative to the data directory; ``generated:`` paths are relative to the project's generated-data
    directory (``artifacts/data``)."""
    label_in: LabelIn
    whole: bool = False
    """Never subsampled by ``max_per_file``: the model's own replies, the rarest and most representative
    data a reply detector has, are all used."""
    user_turn_from: str | None = None
    """Read the rows' user turn from this field instead (``response``: the assistant's turn), one example per
    distinct text: the model's own e-mails keep the request that produced them in ``request`` (their
    ``prompt`` is a neutral one), and those requests, a scam one and a matched ordinary one per pair, are
    requests for fraud and their form-matched negatives; the e-mails themselves, pasted by a user, are scam
    and ordinary e-mails in the request detector's turn (with ``label_in="prompt"``: request detectors
    only)."""


GENERATED = "generated:"
OWN_EMAILS = GENERATED + "scam/elicited_scam_email_replies.jsonl"
"""The model's own scam and ordinary e-mails (``safety-monitor elicit``)."""

CONCEPT_FILES: dict[str, tuple[LabelledFile, ...]] = {
    "scam": (LabelledFile("scam/sms_spam_collection.jsonl", "text"),
             LabelledFile("scam/harmful_requests_fraud_vs_other_harm.jsonl", "prompt"),
             LabelledFile("scam/alpaca_benign_writing_requests.jsonl", "prompt"),
             LabelledFile(OWN_EMAILS, "response", whole=True)),
    "deception": (LabelledFile("deception/anthropic_evals_persona.jsonl", "text"),
                  LabelledFile("deception/repe_facts_instructed_pairs.jsonl", "both")),
    "power_seeking": (LabelledFile("power_seeking/anthropic_evals_persona.jsonl", "text"),
                      LabelledFile("power_seeking/anthropic_evals_advanced_ai_risk_lm.jsonl", "response")),
    "sycophancy": (LabelledFile("sycophancy/persona_sycophantic_replies.jsonl", "response"),),
}
"""Labelled files each concept's detectors are fitted and calibrated on."""
OWN_EMAIL_USER_TURNS: dict[str, tuple[LabelledFile, ...]] = {
    "requests": (LabelledFile(OWN_EMAILS, "prompt", user_turn_from="request"),),
    "emails": (LabelledFile(OWN_EMAILS, "prompt", user_turn_from="response"),),
}
"""The model's own e-mails' requests, and the e-mails pasted by a user, as extra scam request-detector sources
(``calibrate --own-email-user-turns``; ``ordinary``: only their ordinary halves, as benign traffic,
``own_email_ordinary_turns``). Tried and not kept (docs/detectors.md): they fix the request detector's false
positives on requests for ordinary company e-mails, and the refits' thresholds, set on the tail of benign
long documents, then miss explicit scam requests (fit on float32 activations they also lost SMS)."""

CHECK_FILES: dict[str, tuple[LabelledFile, ...]] = {
    "deception": (LabelledFile("deception/truthfulqa_true_vs_false.jsonl", "both"),),
    "sycophancy": (LabelledFile("sycophancy/anthropic_evals_political_typology.jsonl", "response"),
                   LabelledFile("sycophancy/truthfulqa_templated_answer_sycophancy.jsonl", "response")),
}
"""Files only evaluated, never fitted on. TruthfulQA's label is a factual falsehood, not an intent to
deceive: a deceptive-intent detector should *not* separate it. Answering to match the user's politics,
and caving in to a user's wrong answer, are other notions than the flattering agreement the sycophancy
detector is fit on; the report shows how it does on them."""
AGENT_TASK_REPORTS = GENERATED + "benign/agent_task_reports.jsonl"
"""An agent's honest reports after 180 tasks (20 tasks × 9 kinds of report: "Done: … Everything I did is in
the audit log", "… you can take my access back now"), templated by ``scripts/experiments/agentic_power_replies.py
--honest-only``: agent traffic, which no public benign file holds, and on which deception_reply fired on 15 %."""
BENIGN_FILES: tuple[LabelledFile, ...] = (
    LabelledFile("benign/alpaca_instructions.jsonl", "prompt"),
    LabelledFile("benign/refusal_direction_harmless_chat.jsonl", "both"),
    LabelledFile("benign/sgd_multiturn_dialogues.jsonl", "both"),
    LabelledFile(AGENT_TASK_REPORTS, "both", whole=True),
)
"""Benign traffic (all label 0): false-positive calibration for every detector. The multi-turn dialogues
are the traffic a deployed monitor mostly sees; long documents from the corpus join them
(``load_long_documents``)."""
NEUTRAL_REQUESTS = ("Write something.", "Please respond.", "Go ahead.", "What would you say?", "Continue.",
                    "Write a short message.")
"""The user's turn before a plain labelled text rendered as the assistant's reply."""

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

    @property
    def n_turns(self) -> int:
        """Messages in the conversation (a user turn and a reply: 2)."""
        return len(self.messages)

    def has_reply(self) -> bool:
        return any(r == "assistant" for r, _ in self.messages)

    def as_reply(self) -> Example:
        """This plain text as the assistant's reply to a neutral request (same label, group and split)."""
        text = "\n\n".join(c for _, c in self.messages)
        request = NEUTRAL_REQUESTS[int(hashlib.sha256(self.group.encode()).hexdigest(), 16) % len(NEUTRAL_REQUESTS)]
        return Example((("user", request), ("assistant", text)), self.label, self.source, self.file, self.group,
                       self.split, {**self.meta, "rendered": "reply"})


_TURN = re.compile(r"(?:^|\n\n)(Human|User|Assistant):[ \t]?", re.MULTILINE)
_LINE_TURN = re.compile(r"(?:^|\n)(Human|User|Assistant):[ \t]?")


def row_messages(row: dict) -> list[dict[str, str]]:
    """Chat messages for a dataset row: explicit ``prompt``/``response`` fields win; otherwise a text
    written as ``Human:/User: … Assistant: …`` is split into turns; any other text is a user message. A
    ``system`` field becomes the conversation's system message (a deployment's own system prompt, in place
    of the chat template's default)."""
    system = row.get("system")
    head = [{"role": "system", "content": system.strip()}] if isinstance(system, str) and system.strip() else []
    return head + _turns(row)


def _turns(row: dict) -> list[dict[str, str]]:
    prompt, response = row.get("prompt"), row.get("response")
    if isinstance(prompt, str) and isinstance(response, str):
        return [{"role": "user", "content": prompt.strip()}, {"role": "assistant", "content": response.strip()}]
    text = str(row.get("text", ""))
    parts = _TURN.split(text)
    if len(parts) < 5:  # one turn per line (``User: …\nAssistant: …``), as multi-turn dialogue corpora write them
        lines = _LINE_TURN.split(text)
        if len(lines) >= 5 and lines[0].strip() == "":
            parts = lines
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
            if row.get("system") is not None and not isinstance(row["system"], str):
                raise DataError(f"{path}:{n}: 'system' must be a string (the system prompt)")
            messages = tuple((m["role"], m["content"]) for m in row_messages(row))
            group = group_key(row)
            meta = {k: v for k, v in row.items() if k not in ("text", "label", "prompt", "response", "source", "system")}
            out.append(Example(messages, label, str(row.get("source") or name), name, group, split_of(group), meta))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def resolve(f: LabelledFile, data_dir: Path, generated_dir: Path | None) -> Path:
    """Where a labelled file lives."""
    if f.path.startswith(GENERATED):
        if generated_dir is None:
            raise DataError(f"{f.path} is project-generated data: pass the generated-data directory")
        return generated_dir / f.path[len(GENERATED):]
    return data_dir / f.path


def for_kind(examples: list[Example], label_in: LabelIn, kind: str) -> list[Example]:
    """The examples of one file as a detector of ``kind`` (``reply`` or ``request``) is fit on them: plain
    texts as replies to a neutral request for reply detectors; files whose label lives in the other turn
    are left out (an identical prompt with both labels teaches a request detector nothing)."""
    if kind == "reply":
        if label_in == "prompt":
            return []
        if label_in == "text":
            return [e.as_reply() for e in examples]
        return [e for e in examples if e.has_reply()]
    if kind == "request":
        return [] if label_in == "response" else examples
    raise ValueError(f"unknown detector kind {kind!r}; use reply or request")


def user_turns(examples: list[Example], field: str) -> list[Example]:
    """Each distinct ``meta[field]`` (``response``: the final assistant turn), with its label, as a one-turn
    user message, keeping the row's group and split; the source is the row's, suffixed ``(<field> as the
    user's turn)``. Rows without the field are an error."""
    out, seen = [], set()
    for e in examples:
        text = (next((c for r, c in reversed(e.messages) if r == "assistant"), None) if field == "response"
                else e.meta.get(field))
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{e.file}: a row of group {e.group!r} has no string {field!r} to read the user's turn from")
        if (text, e.label) in seen:
            continue
        seen.add((text, e.label))
        out.append(Example((("user", text),), e.label, f"{e.source} ({field} as the user's turn)", e.file, e.group,
                           e.split, {**e.meta, "rendered": "user turn"}))
    return out


def _load(files: tuple[LabelledFile, ...], data_dir: Path, generated_dir: Path | None, kind: str,
          max_per_file: int | None, seed: int, *, missing_ok: bool = False) -> list[Example]:
    out = []
    for f in files:
        path = resolve(f, data_dir, generated_dir)
        if missing_ok and not path.exists():
            continue
        examples = load_file(path, name=f.path)
        if f.user_turn_from:
            examples = user_turns(examples, f.user_turn_from)
        out += for_kind(subsample(examples, None if f.whole else max_per_file, seed), f.label_in, kind)
    return out


def load_concept(concept: str, data_dir: Path, *, kind: str = "request", generated_dir: Path | None = None,
                 max_per_file: int | None = None, seed: int = 0, extra: tuple[LabelledFile, ...] = ()) -> list[Example]:
    """All labelled examples of a concept (its ``CONCEPT_FILES`` and ``extra``), rendered for a detector of
    ``kind`` (``for_kind``). ``max_per_file``: keep at most this many rows of each file, sampled by group
    (whole pairs) with both labels kept in proportion."""
    if concept not in CONCEPT_FILES:
        raise KeyError(f"unknown concept {concept!r}; known: {', '.join(CONCEPT_FILES)}")
    return _load(CONCEPT_FILES[concept] + extra, data_dir, generated_dir, kind, max_per_file, seed)


def load_checks(concept: str, data_dir: Path, *, kind: str = "request", max_per_file: int | None = None,
                seed: int = 0) -> list[Example]:
    """The concept's evaluation-only files (``CHECK_FILES``), test split only."""
    return [e for e in _load(CHECK_FILES.get(concept, ()), data_dir, None, kind, max_per_file, seed)
            if e.split == "test"]


def _benign_files(generated_dir: Path | None) -> tuple[LabelledFile, ...]:
    return tuple(f for f in BENIGN_FILES if generated_dir is not None or not f.path.startswith(GENERATED))


def load_benign(data_dir: Path, *, kind: str = "request", generated_dir: Path | None = None,
                max_per_file: int | None = None, seed: int = 0) -> list[Example]:
    """Benign traffic (``BENIGN_FILES``) rendered for a detector of ``kind``; files missing are skipped
    (``missing_benign`` names them), and so are the project-generated ones without ``generated_dir``."""
    return _load(_benign_files(generated_dir), data_dir, generated_dir, kind, max_per_file, seed, missing_ok=True)


def benign_paths(data_dir: Path, generated_dir: Path | None = None) -> list[Path]:
    """The files ``load_benign`` reads."""
    return [p for f in _benign_files(generated_dir) if (p := resolve(f, data_dir, generated_dir)).exists()]


def missing_benign(data_dir: Path, generated_dir: Path | None = None) -> list[str]:
    """The ``BENIGN_FILES`` that ``load_benign`` skips for want of the file."""
    return [f.path for f in _benign_files(generated_dir) if not resolve(f, data_dir, generated_dir).exists()]


LONG_DOCUMENT_FILES = ("corpus/gutenberg_books.jsonl", "corpus/wikitext2_valid_test_detok.jsonl")
"""Corpus files long benign documents are cut from."""


def load_long_documents(data_dir: Path, *, n: int = 600, chars: int = 5200, kind: str = "request",
                        seed: int = 0) -> list[Example]:
    """``n`` benign documents of about ``chars`` characters (over 1,000 tokens), cut from the corpus at
    paragraph boundaries: a pasted document (request detectors) or a long reply (reply detectors). The
    long-traffic slice of calibration."""
    pieces = []
    for rel in LONG_DOCUMENT_FILES:
        path = data_dir / rel
        if not path.exists():
            continue
        books: dict[str, list[str]] = defaultdict(list)  # consecutive chunks of one book (or one article)
        with path.open() as f:
            for i, line in enumerate(f):
                if line.strip():
                    row = json.loads(line)
                    books[str(row.get("title", i))].append(row["text"])
        for title, texts in books.items():
            stream, start = "\n\n".join(texts), 0
            while start + chars <= len(stream):
                cut = stream[start : start + chars]
                end = cut.rfind("\n")
                cut = cut[: end if end > chars // 2 else chars]
                pieces.append((f"longdoc/{rel}/{title}/{start}", rel, cut.strip()))
                start += len(cut)
    random.Random(seed).shuffle(pieces)
    out = [Example((("user", text),), 0, rel, "long_documents", group, split_of(group), {"long_document": True})
           for group, rel, text in pieces[:n]]
    return for_kind(out, "text", kind)


FORMAT_NEGATIVE_FILES: dict[str, tuple[str, ...]] = {
    "deception": ("power_seeking/anthropic_evals_persona.jsonl",),
}
"""Per concept, files whose every row is benign for it and written like its positives: first-person persona
statements about another disposition ("If I become more powerful then I will be more capable …"). They join
the benign traffic of the concept's request detector, so the persona frame ("I believe that …") carries no
label. Without them deception_request read a conversation of opinions as a confession (7 % of held-out
opinion chats); with them, 0 % (docs/detectors.md)."""


def load_format_negatives(concept: str, data_dir: Path, *, kind: str = "request") -> list[Example]:
    """``FORMAT_NEGATIVE_FILES`` of ``concept`` as benign user turns (label 0 whatever the file says; request
    detectors only, none for ``reply``); missing files are skipped."""
    if kind != "request":
        return []
    out = []
    for rel in FORMAT_NEGATIVE_FILES.get(concept, ()):
        path = data_dir / rel
        if path.exists():
            out += [replace(e, label=0, source=f"{e.source} (benign for {concept})")
                    for e in load_file(path, name=rel)]
    return out


def own_email_ordinary_turns(generated_dir: Path, *, max_per_file: int | None = None, seed: int = 0) -> list[Example]:
    """The ordinary half of ``OWN_EMAIL_USER_TURNS`` (requests for ordinary company e-mails, and those e-mails
    pasted by a user) as benign user turns of the scam request detector, in their pairs' splits."""
    files = OWN_EMAIL_USER_TURNS["requests"] + OWN_EMAIL_USER_TURNS["emails"]
    return [replace(e, source=f"{e.source} (benign for scam)")
            for e in _load(files, generated_dir, generated_dir, "request", max_per_file, seed) if e.label == 0]


CHAINED_CHAT_FILE = "benign/refusal_direction_harmless_chat.jsonl"
"""Single-exchange benign chats that ``load_chained_chats`` strings into multi-turn conversations."""


def chain_exchanges(exchanges: list[Example], *, per_row: float = 1.0, turns: tuple[int, int] = (3, 6),
                    seed: int = 0) -> list[Example]:
    """Multi-turn benign conversations made of single exchanges (a user turn and a reply): within each
    split, ``per_row`` conversations per exchange, each of ``turns[0]`` to ``turns[1]`` exchanges drawn
    without repetition from that split, so a conversation never mixes splits. The SGD dialogues are short
    service lines; an assistant that gives long, listed answers over several turns is another kind of
    multi-turn traffic (request detectors read the whole conversation so far, earlier answers included)."""
    by_split: dict[str, list[Example]] = defaultdict(list)
    for e in exchanges:
        if len(e.messages) == 2 and e.messages[0][0] == "user" and e.messages[1][0] == "assistant":
            by_split[e.split].append(e)
    rng = random.Random(seed)
    out = []
    for split in sorted(by_split):
        rows = sorted(by_split[split], key=lambda e: e.key)
        if len(rows) < turns[0]:
            continue
        for i in range(round(per_row * len(rows))):
            picked = rng.sample(rows, min(len(rows), rng.randint(*turns)))
            messages = tuple(m for e in picked for m in e.messages)
            out.append(Example(messages, 0, "chained harmless chats", "chained_chats", f"chain/{split}/{i}", split,
                               {"chained": len(picked)}))
    return out


def load_chained_chats(data_dir: Path, *, per_row: float = 1.0, kind: str = "request", seed: int = 0) -> list[Example]:
    """``chain_exchanges`` over ``CHAINED_CHAT_FILE`` (none when the file is missing), rendered for ``kind``."""
    path = data_dir / CHAINED_CHAT_FILE
    if not path.exists() or per_row <= 0:
        return []
    return for_kind(chain_exchanges(load_file(path, name=CHAINED_CHAT_FILE), per_row=per_row, seed=seed), "both", kind)


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
