"""Detector specs: which SAE latents signal a concept, how to aggregate them, and the calibrated threshold.

A spec is a versioned JSON document (``schema: safety-monitor.detector/v1``), pinned to one SAE by its
sha256; thresholds are only meaningful for that SAE. The score of a request is a small, inspectable
function of a handful of latents::

    f_j   = aggregate over the tokens of the role span of latent j     (max, or mean)
    score = bias + sum_j weight_j * f_j                                (a logistic model's logit)

and the detector fires when ``score >= threshold``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from detectors.spans import Span

SCHEMA = "safety-monitor.detector/v1"
MAX_LATENTS = 64

Aggregation = Literal["max", "mean", "window"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
DEFAULT_WINDOW = 16
Kind = Literal["reply", "request"]
KIND_SPAN: dict[str, str] = {"reply": "response", "request": "prompt"}
"""The span each detector kind reads: the span is part of what a detector is, not a calibration choice."""


def linear_score(bias: float, weights, features):
    """The detector score, ``bias + features @ weights``: the one definition of the scoring rule.

    ``features [..., k]``: the detector's aggregated latent values in spec order; ``weights [k]``. NumPy or
    torch in, the same kind out (``[...]``). The sidecar's batched scorer (``RequestTable.scores``) is this
    rule for many requests and detectors in one matrix product, and is tested equal to it.
    """
    return bias + features @ weights


class SpecError(ValueError):
    """A detector spec is invalid or does not fit the loaded SAE; the message says why."""


class CalibrationRecord(BaseModel):
    """How the threshold was chosen and what it achieved (``None`` fields: not measured)."""

    model_config = ConfigDict(extra="allow")

    target_fpr: float = Field(ge=0, le=1, description="False-positive rate the threshold was chosen for.")
    achieved_fpr: float | None = Field(None, description="FPR on held-out benign text at the threshold.")
    achieved_fpr_ci: tuple[float, float] | None = Field(None, description="Clopper-Pearson 95% interval.")
    n_benign: int | None = Field(None, description="Benign samples the threshold was chosen on.")
    auroc: float | None = None
    auroc_ci: tuple[float, float] | None = None
    recall: float | None = None
    recall_ci: tuple[float, float] | None = None
    datasets: dict[str, str] = Field(default_factory=dict, description="Dataset name -> sha256 of the file.")
    date: str | None = None
    fpr_upper_bound: float | None = Field(None, ge=0, le=1, description="The FPR the threshold is guaranteed not to "
                                          "exceed with probability 1 - delta (order statistics of the binding slice).")

    @property
    def guaranteed_fpr(self) -> float:
        """What the live alert rate on benign traffic is compared with (the drift watch): ``fpr_upper_bound``
        where recorded, else the upper end of ``achieved_fpr_ci``, else ``target_fpr``."""
        if self.fpr_upper_bound is not None:
            return self.fpr_upper_bound
        if self.achieved_fpr_ci is not None:
            return float(self.achieved_fpr_ci[1])
        return self.target_fpr


class DetectorSpec(BaseModel):
    """One detector (see the module docstring for the scoring rule)."""

    model_config = ConfigDict(extra="forbid")

    schema_: Literal["safety-monitor.detector/v1"] = Field(SCHEMA, alias="schema")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Unique detector name.")
    version: str = Field("1", min_length=1, max_length=32)
    concept: str = Field(description="deception, scam, sycophancy, power_seeking, ...")
    description: str = ""
    model: str = Field(description="Model id the SAE reads.")
    hook: str = Field(description="Hook point, e.g. blocks.15.hook_resid_post.")
    sae_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    latents: list[int] = Field(min_length=1, max_length=MAX_LATENTS)
    weights: list[float]
    bias: float = 0.0
    aggregation: Aggregation = "max"
    """How a latent's values over the span's tokens become one feature (``detectors.scoring.aggregate``)."""
    window: int = Field(DEFAULT_WINDOW, ge=1, le=4096)
    """Tokens per block of the ``window`` aggregation."""
    kind: Kind | None = None
    """What the detector monitors: ``reply`` (what the model writes: the response span; the product's
    primary monitors) or ``request`` (what the user asks or pastes: the prompt span). None: a detector of
    an older calibration, which chose its span itself."""
    span: Span = "all"
    """Tokens scored (``detectors.spans``): ``final_turn`` is the response once the request has one, else the prompt."""
    threshold: float
    severity_thresholds: dict[Literal["medium", "high", "critical"], float] = Field(
        default_factory=dict, description="Score at or above which an alert is at least this severe (else low): "
        "medium above every benign calibration score, high at the median and critical at the 90th percentile of "
        "the concept's calibration positives that reach medium (detectors.calibration.calibrate.severity_cutoffs).")
    status: Literal["enabled", "disabled", "no_signal"] = "enabled"
    status_reason: str = ""
    latent_labels: dict[int, str] = Field(default_factory=dict, description="Latent id -> short human label.")
    calibration: CalibrationRecord | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DetectorSpec:
        if len(self.weights) != len(self.latents):
            raise ValueError(f"{len(self.weights)} weights for {len(self.latents)} latents")
        if len(set(self.latents)) != len(self.latents):
            raise ValueError("latent ids must be unique")
        if any(i < 0 for i in self.latents):
            raise ValueError("latent ids must be non-negative")
        if any(v < self.threshold for v in self.severity_thresholds.values()):
            raise ValueError("severity thresholds must be at or above the alert threshold")
        if self.kind is not None and self.span != KIND_SPAN[self.kind]:
            raise ValueError(f"a {self.kind} detector reads the {KIND_SPAN[self.kind]} span, not {self.span!r}")
        if self.aggregation == "window" and self.span not in ("prompt", "response"):
            raise ValueError("the window aggregation reads one role: use it with the prompt or response span")
        return self

    def severity(self, score: float) -> str | None:
        """``None`` below the threshold, else ``low`` … ``critical`` from ``severity_thresholds``."""
        if score < self.threshold:
            return None
        level = "low"
        for name in ("medium", "high", "critical"):
            cut = self.severity_thresholds.get(name)
            if cut is not None and score >= cut:
                level = name
        return level

    def score(self, features):
        """``linear_score`` with this spec's bias and weights: ``features [..., k]`` in ``latents`` order."""
        w = torch.as_tensor(self.weights, dtype=features.dtype) if isinstance(features, torch.Tensor) \
            else np.asarray(self.weights)
        return linear_score(self.bias, w, features)

    # ----------------------------------------------------------------- I/O
    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "spec") -> DetectorSpec:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise SpecError(f"{source}: invalid detector spec: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> DetectorSpec:
        return cls.from_json(Path(path).read_text(), source=str(path))

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    def check_sae(self, sae_sha256: str, d_sae: int) -> None:
        """Refuse a spec calibrated for another SAE, or naming latents the SAE lacks."""
        if self.sae_sha256 != sae_sha256:
            raise SpecError(
                f"detector {self.name!r} was calibrated for SAE {self.sae_sha256[:12]}… but the loaded SAE is "
                f"{sae_sha256[:12]}…; recalibrate it (safety-monitor calibrate) for this SAE"
            )
        if max(self.latents) >= d_sae:
            raise SpecError(f"detector {self.name!r} uses latent {max(self.latents)} but the SAE has {d_sae}")


def load_specs(directory: Path, *, sae_sha256: str, d_sae: int, include_no_signal: bool = False,
               force: bool = False) -> list[DetectorSpec]:
    """All ``*.json`` specs in ``directory`` that are enabled, checked against the SAE.

    ``no_signal`` specs are refused unless ``force`` (they would alert at chance level): with
    ``include_no_signal`` they are skipped silently instead of raising.
    """
    specs = []
    names = set()
    for path in sorted(Path(directory).glob("*.json")):
        spec = DetectorSpec.load(path)
        if spec.status == "disabled":
            continue
        if spec.status == "no_signal" and not force:
            if include_no_signal:
                continue
            reason = spec.status_reason or "its held-out AUROC is not distinguishable from chance"
            raise SpecError(
                f"detector {spec.name!r} is marked no_signal ({reason}); it would alert at random. "
                "Remove it, or force loading it."
            )
        spec.check_sae(sae_sha256, d_sae)
        if spec.name in names:
            raise SpecError(f"two specs are named {spec.name!r} in {directory}")
        names.add(spec.name)
        specs.append(spec)
    return specs
