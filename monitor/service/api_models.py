"""Request and response bodies of the sidecar API: the OpenAPI document is generated from these."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from alerts.dashboard.models import CalibrationSummary, DriftSummary
from alerts.schema import Alert
from detectors.spans import Span
from detectors.spec import Aggregation, Kind

REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,127}$"


class ErrorBody(BaseModel):
    """Every error the sidecar answers itself (auth, limits, bad batches, back-pressure, reload)."""

    error: str = Field(description="Machine-readable code, e.g. 'malformed_batch', 'queue_full', 'forbidden'.")
    detail: str = Field(description="What was wrong and what to do about it.")
    request_ids: list[str] | None = Field(None, description="For 'unknown_request': the request ids concerned.")


class IngestAccepted(BaseModel):
    """``202`` answer of ``POST /v1/activations``."""

    accepted_tokens: int = Field(ge=0, description="Tokens queued for scoring.")
    requests: int = Field(ge=0, description="Model requests the batch carried.")
    queue_tokens: int = Field(ge=0, description="Tokens waiting in the queue after this batch.")


class Health(BaseModel):
    """``GET /healthz``."""

    status: Literal["ok"] = "ok"
    uptime_s: float


class ReadinessCheck(BaseModel):
    ok: bool
    detail: str = ""


class Readiness(BaseModel):
    """``GET /readyz``: 200 when every check passes, else 503 with the same body."""

    ready: bool
    checks: dict[str, ReadinessCheck]


class DetectorInfo(BaseModel):
    """One loaded detector."""

    name: str
    version: str
    concept: str
    description: str = ""
    threshold: float
    severity_thresholds: dict[str, float] = Field(default_factory=dict)
    aggregation: Aggregation
    window: int = Field(description="Tokens per block of the window aggregation.")
    kind: Kind | None = Field(None, description="'reply' (the model's turn) or 'request' (the user's turn).")
    span: Span
    n_latents: int = Field(description="Latents the detector reads.")
    status: str
    calibration: CalibrationSummary | None = None
    drift: DriftSummary | None = Field(None, description="Live alert rate against the calibrated FPR (the drift "
                                       "watch; None when drift.enabled is off).")


class SkippedDetector(BaseModel):
    """A spec file in the detector directory that is not scored."""

    file: str
    name: str | None = None
    status: str = Field(description="'disabled' or 'no_signal'.")
    reason: str = ""
    threshold: float | None = None


class DetectorList(BaseModel):
    """``GET /v1/detectors``."""

    model: str
    hook: str
    sae_sha256: str
    generation: int = Field(description="1 at start-up, +1 per successful reload.")
    loaded_at: datetime
    source: str
    monitored_latents: int = Field(description="Union of the detectors' latents: what the SAE computes per token.")
    detectors: list[DetectorInfo]
    skipped: list[SkippedDetector] = Field(default_factory=list)


class ReloadResult(BaseModel):
    """``POST /v1/admin/reload``."""

    generation: int
    detectors: list[str]
    previous: list[str]


class ScoreRequest(BaseModel):
    """``POST /v1/score``: a text to run through the model in-process."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=100_000, description="The text (a user turn when chat is true).")
    chat: bool = Field(True, description="Wrap the text as a user turn of the model's chat template.")
    response: str | None = Field(None, max_length=100_000,
                                 description="Optional assistant reply (chat only): its tokens get the response role.")
    request_id: str | None = Field(None, pattern=REQUEST_ID_PATTERN, description="Id for alerts; default: random.")


class ScoreResponse(BaseModel):
    """Scores of the whole text, and the alerts it raised (also emitted like any other alert)."""

    request_id: str
    n_tokens: int
    scores: dict[str, float | None] = Field(description="Detector -> score (None: its span had no tokens).")
    alerts: list[Alert]
