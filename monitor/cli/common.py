"""What every ``safety-monitor`` sub-command shares: the error a user can fix, and loading the ``--sae`` argument."""

from __future__ import annotations

from pathlib import Path


class UsageError(Exception):
    """A mistake the user can fix; printed without a traceback."""


def load_sae_arg(path: str | None, d_model: int | None = None):
    """The SAE at ``path``, else the shipped default; ``UsageError`` when there is neither."""
    from monitor.artifacts import ARTIFACTS_DIR, default_sae_dir
    from monitor.sae import FrozenSAE

    sae_dir = Path(path) if path else default_sae_dir()
    if sae_dir is None:
        raise UsageError(
            "an SAE is needed: pass --sae PATH (SAELens, sparsify, Gemma Scope or dictionary_learning layout). "
            f"The shipped SAE lives under {ARTIFACTS_DIR}/smollm2-135m-instruct/ and is named in "
            f"{ARTIFACTS_DIR / 'defaults.json'}; `safety-monitor sae train` makes a new one."
        )
    return FrozenSAE.load(sae_dir, d_model=d_model)
