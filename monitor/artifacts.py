"""Where shipped artefacts live: the default SAE and detector specs under ``artifacts/``."""

from __future__ import annotations

import json
import os
from pathlib import Path

ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "artifacts"
"""``artifacts/`` at the repository root."""
DEFAULTS_FILE = ARTIFACTS_DIR / "defaults.json"
"""Names the default SAE directory (relative to ``artifacts/``)."""


def default_sae_dir() -> Path | None:
    """``$SAFETY_MONITOR_SAE``, else the SAE named in ``artifacts/defaults.json``, else None."""
    env = os.environ.get("SAFETY_MONITOR_SAE")
    if env:
        return Path(env)
    if DEFAULTS_FILE.is_file():
        rel = json.loads(DEFAULTS_FILE.read_text()).get("sae")
        if rel and (ARTIFACTS_DIR / rel).is_dir():
            return ARTIFACTS_DIR / rel
    return None


def default_sae_sha256() -> str | None:
    """The sha256 the default SAE is pinned to (``artifacts/defaults.json``), if any."""
    if DEFAULTS_FILE.is_file():
        return json.loads(DEFAULTS_FILE.read_text()).get("sae_sha256")
    return None
