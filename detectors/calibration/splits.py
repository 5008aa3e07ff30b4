"""Deterministic train / calibration / test assignment by group key (``pair_id`` or row identity).

Every component that must keep test rows out of its inputs (SAE training data, discovery, calibration)
calls ``split_of`` with the same key, so the assignment never drifts between jobs or machines.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "calibration", "test"]
SPLIT_FRACTIONS: dict[Split, float] = {"train": 0.6, "calibration": 0.2, "test": 0.2}
"""Share of groups in each split."""


def split_of(group_key: str, salt: str = "safety-monitor/v1") -> Split:
    """The split of a group: a stable hash of ``salt/group_key`` mapped onto ``SPLIT_FRACTIONS``."""
    digest = hashlib.sha256(f"{salt}/{group_key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, frac in SPLIT_FRACTIONS.items():
        edge += frac
        if u < edge:
            return name
    return "test"


def group_key(row: dict) -> str:
    """The unit that never straddles splits: ``pair_id`` when the row has one (shared across files, so
    the same TruthfulQA question lands in one split everywhere), else the row's text."""
    pair = row.get("pair_id")
    if pair not in (None, "", "None"):
        return f"pair/{pair}"
    return "text/" + hashlib.sha256(str(row.get("text", "")).encode()).hexdigest()[:24]
