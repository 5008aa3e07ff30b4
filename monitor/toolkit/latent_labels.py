"""What each latent means, in a few words an operator can read: labels from the feature index.

For every latent, the tokens where it peaks on held-out documents (``feature_index.npz``) give its
*top tokens* and *top contexts*; its label is the most frequent top tokens, e.g. ``"password" "verify"
"account"``. A latent is a *formatting latent* when most of its top contexts peak on formatting rather
than words: an answer letter (``(A)``, ``(B) Yes``), a bare answer word opening the assistant's reply
(``Yes``, ``No``, ``Sure``), a list marker or number, a phone-number digit run, punctuation, or the chat
template's own tokens. Such a latent says how a dataset was written, not what
it is about, so calibration keeps it out of detectors (``detectors.calibration.calibrate.admissible_latents``).

Written beside the SAE as ``latent_labels.json`` (``safety-monitor sae label``, and at the end of
``sae index``), pinned to the SAE's sha256; detectors copy the labels of their latents into their spec,
so alerts, the dashboard and reports show them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

LABELS_FILE = "latent_labels.json"
FORMAT_SHARE = 0.5
"""A latent is a formatting latent when at least this share of its top contexts peak on formatting."""

_ANSWER_LETTER = re.compile(r"\(\s*[A-Ha-h]\s*\)?\s*(yes|no)?\s*$", re.IGNORECASE)
_ANSWER_WORD = re.compile(r"^(yes|no|sure|true|false|correct|incorrect)$", re.IGNORECASE)
_REPLY_START = re.compile(r"(assistant|answer:)\s*$", re.IGNORECASE)
"""Where an answer word is a format: right after the chat template's ``assistant`` header (or an
``Answer:``), the slot a yes/no or multiple-choice eval fills; what the answer means lives in the question."""
_FORMAT_TOKEN = re.compile(r"^(\W*|[A-Ha-h]|\d+[.):]?|[-*•#>]+|<\|im_(start|end)\|>|\+?\d[\d\s().-]*)$")


@dataclass
class LatentLabel:
    label: str
    """A short label: the most frequent top tokens, ``[format]`` first for formatting latents."""
    formatting: bool
    top_tokens: list[str]
    contexts: list[str]
    """The three strongest contexts, the peak token in ``[[ ]]``."""


_DIGITS_BEFORE = re.compile(r"\d{3,}\s*$")


def _is_formatting(token: str, before: str) -> bool:
    """Formatting, not a word: punctuation, a letter or number alone, a list marker, a template token, an
    answer letter (``(A)``, ``(B) Yes``), an answer word opening the reply (``assistant`` → ``Yes``), a
    short piece of a digit run (phone numbers, codes), or the role name after the chat template's
    ``<|im_start|>``."""
    t = token.strip()
    return (bool(_FORMAT_TOKEN.match(t)) or bool(_ANSWER_LETTER.search(before + token))
            or (bool(_ANSWER_WORD.match(t)) and bool(_REPLY_START.search(before)))
            or (len(t) <= 3 and t.isalnum() and bool(_DIGITS_BEFORE.search(before)))
            or before.rstrip().endswith("<|im_start|>"))  # the role name of the chat template's header


def label_latents(index, decode, *, n_contexts: int = 3, window: int = 8) -> dict[int, LatentLabel]:
    """Labels of every latent with at least one top context. ``index``: a ``FeatureIndex``; ``decode``:
    token ids -> text (the model's tokenizer)."""
    out: dict[int, LatentLabel] = {}
    for latent in range(index.top_doc.shape[0]):
        tokens, flags, contexts = [], [], []
        for j in range(index.top_doc.shape[1]):
            doc = int(index.top_doc[latent, j])
            if doc < 0:
                break
            ids = index.doc_tokens[doc]
            pos = int(index.top_pos[latent, j])
            if pos >= len(ids):
                continue
            token = decode([int(ids[pos])])
            before = decode([int(t) for t in ids[max(1, pos - 3) : pos]])
            tokens.append(token.strip())
            flags.append(_is_formatting(token, before))
            if len(contexts) < n_contexts:
                lo = max(1, pos - window)
                contexts.append(decode([int(t) for t in ids[lo:pos]]) + "[[" + token + "]]"
                                + decode([int(t) for t in ids[pos + 1 : pos + 3]]))
        if not tokens:
            continue
        formatting = float(np.mean(flags)) >= FORMAT_SHARE
        common = [t for t, _ in Counter(t for t in tokens if t).most_common(3)]
        label = " ".join(f'"{t}"' for t in common) or "(whitespace)"
        out[latent] = LatentLabel(("[format] " if formatting else "") + label, formatting, common,
                                  [" ".join(c.split()) for c in contexts])
    return out


def save_labels(path: Path, labels: dict[int, LatentLabel], sae_sha256: str) -> Path:
    path.write_text(json.dumps({"sae_sha256": sae_sha256,
                                "latents": {str(k): asdict(v) for k, v in sorted(labels.items())}}) + "\n")
    return path


def load_labels(path: Path, sae_sha256: str | None = None) -> dict[int, LatentLabel]:
    """The labels in ``path`` (``{}`` when the file is missing); refuses labels made for another SAE."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if sae_sha256 and data.get("sae_sha256") != sae_sha256:
        raise ValueError(f"{path} labels SAE {str(data.get('sae_sha256'))[:12]}…, not {sae_sha256[:12]}…; "
                         "rebuild them with `safety-monitor sae label`")
    return {int(k): LatentLabel(**v) for k, v in data["latents"].items()}
