"""The alert event: what the sidecar publishes when a detector fires.

One JSON object per alert, versioned by its ``schema`` field
(``"safety-monitor.alert/v1"``). Readers ignore fields they do not know, so a
later v1 producer may add optional fields without breaking older consumers;
an incompatible change gets a new schema id. ``event_id`` is a UUIDv7 (time
ordered) and is the deduplication key: delivery is at-least-once.

Two kinds of event share the schema and the topic (``kind``): ``detection`` (a detector fired on one
request; an event without ``kind`` is one) and ``detector_drift`` (a detector's live alert rate left
its calibrated false-positive rate behind: ``drift`` carries the numbers). A drift event fills every
field a detection has, so a v1 consumer that ignores ``kind`` still parses it: ``score`` is the live
alert rate, ``threshold`` the drift limit it crossed, ``request_id`` names the drift episode
(``detector-drift:<detector>:<version>:<unix seconds>``) and ``token_span`` is ``[0, 1)`` (no tokens).

``safety-monitor alerts schema docs/alert.schema.json`` regenerates the JSON Schema that
non-Python consumers validate against.
"""

from __future__ import annotations

import enum
import json
import math
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_ID = "safety-monitor.alert/v1"
"""Value of the ``schema`` field of every v1 alert."""

SCHEMA_URI = "urn:safety-monitor:alert:v1"
"""``$id`` of the exported JSON Schema."""

_UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class Severity(enum.StrEnum):
    """How urgent an alert is; ordered ``low < medium < high < critical``."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for low up to 3 for critical."""
        return _SEVERITY_ORDER.index(self)

    @classmethod
    def parse(cls, value: str | Severity) -> Severity:
        """Case-insensitive lookup with an error that lists the valid names."""
        if isinstance(value, Severity):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown severity {value!r}; use one of: {names}") from None

    @classmethod
    def from_rank(cls, rank: int) -> Severity:
        return _SEVERITY_ORDER[rank]


_SEVERITY_ORDER = (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)


# --- UUIDv7 ---------------------------------------------------------------------------------

_uuid7_lock = threading.Lock()
_uuid7_last_ms = -1
_uuid7_counter = 0


def uuid7() -> uuid.UUID:
    """A new RFC 9562 UUIDv7: 48-bit Unix milliseconds, then a 12-bit counter, then 62 random bits.

    Within one process the values are strictly increasing (the counter in ``rand_a`` is
    RFC 9562 "method 1"; when it overflows inside one millisecond the timestamp is advanced
    by one), so sorting event ids sorts alerts by creation time.
    """
    global _uuid7_last_ms, _uuid7_counter
    with _uuid7_lock:
        ms = time.time_ns() // 1_000_000
        if ms > _uuid7_last_ms:
            # Random start, top bit clear, leaves room for 2048 ids in the same millisecond.
            _uuid7_counter = secrets.randbits(11)
        else:
            ms = _uuid7_last_ms
            _uuid7_counter += 1
            if _uuid7_counter > 0xFFF:
                ms += 1
                _uuid7_counter = 0
        _uuid7_last_ms = ms
        counter = _uuid7_counter
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= secrets.randbits(62)
    return uuid.UUID(int=value)


def uuid7_time(value: str | uuid.UUID) -> datetime:
    """The creation time encoded in a UUIDv7 (millisecond precision, UTC)."""
    u = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    if u.version != 7:
        raise ValueError(f"{u} is a version {u.version} UUID, not UUIDv7")
    return datetime.fromtimestamp((u.int >> 80) / 1000.0, tz=UTC)


def _new_event_id() -> str:
    return str(uuid7())


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- event ----------------------------------------------------------------------------------


class TokenSpan(BaseModel):
    """Where in the request the detector fired, in token positions of that request."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    start: int = Field(
        ge=0, description="First token of the span (inclusive), counted from the request's first token."
    )
    end: int = Field(ge=0, description="One past the last token of the span (exclusive).")
    peak: int | None = Field(None, ge=0, description="Token with the highest detector score, if known.")
    role: Literal["prompt", "response"] | None = Field(
        None, description="Whether the span lies in the prompt or in the model's response."
    )

    @model_validator(mode="after")
    def _ordered(self) -> TokenSpan:
        if self.end <= self.start:
            raise ValueError(f"token_span end ({self.end}) must be greater than start ({self.start})")
        if self.peak is not None and not (self.start <= self.peak < self.end):
            raise ValueError(
                f"token_span peak ({self.peak}) must lie in [start, end) = [{self.start}, {self.end})"
            )
        return self


class LatentActivation(BaseModel):
    """One SAE latent that contributed to the score."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    latent: int = Field(ge=0, description="Latent index in the SAE dictionary.")
    activation: float = Field(description="Latent activation (max over the span).")
    label: str | None = Field(None, max_length=200, description="Human label of the latent, if any.")
    weight: float | None = Field(
        None, description="Detector weight of this latent; activation*weight is its contribution."
    )

    @field_validator("activation", "weight")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


AlertKind = Literal["detection", "detector_drift"]
"""What an event reports: one request that a detector fired on, or a detector whose live alert rate drifted."""


class DriftDetails(BaseModel):
    """Why a ``detector_drift`` event was raised: the live alert rate over the drift window, its interval,
    and the calibrated false-positive rate it is compared with."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    window_requests: int = Field(ge=0, description="Finished requests in the window (the detector's span had tokens).")
    window_alerts: int = Field(ge=0, description="Of those, requests the detector alerted on.")
    window_s: float = Field(gt=0, description="Length of the sliding window, in seconds.")
    live_alert_rate: float = Field(ge=0, le=1, description="window_alerts / window_requests.")
    live_rate_ci: tuple[float, float] = Field(description="Clopper-Pearson 95% interval of live_alert_rate.")
    calibrated_fpr_upper_bound: float = Field(
        ge=0, le=1, description="The false-positive rate the calibration guarantees not to exceed."
    )
    ratio: float = Field(ge=0, description="live_alert_rate / calibrated_fpr_upper_bound.")
    limit_factor: float = Field(
        gt=0, description="Drifting: the interval's lower end exceeds this many times the calibrated bound."
    )


class Alert(BaseModel):
    """A detector firing on one request: the event consumers receive.

    Serialise with :meth:`to_json` (uses the wire names, e.g. ``schema``); parse with
    :meth:`from_json`, which ignores unknown fields.
    """

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        title="SafetyMonitorAlert",
        json_schema_serialization_defaults_required=True,
        json_schema_extra={"additionalProperties": True},
    )

    schema_id: Literal["safety-monitor.alert/v1"] = Field(
        SCHEMA_ID, alias="schema", description="Event schema and major version."
    )
    event_id: str = Field(
        default_factory=_new_event_id,
        pattern=_UUID_PATTERN,
        description="UUIDv7, unique per alert; the deduplication key (delivery is at-least-once).",
    )
    time: AwareDatetime = Field(
        default_factory=_utcnow, description="When the alert was raised (RFC 3339, UTC)."
    )
    model: str = Field(min_length=1, max_length=256, description="Id of the monitored model.")
    sae_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="sha256 of the frozen SAE weights that produced the latents."
    )
    detector: str = Field(pattern=_NAME_PATTERN, description="Detector name, e.g. 'scam'.")
    detector_version: str = Field(min_length=1, max_length=64, description="Detector spec version.")
    score: float = Field(description="Detector score of the span.")
    threshold: float = Field(description="Calibrated threshold the score crossed.")
    severity: Severity = Field(description="low, medium, high or critical.")
    request_id: str = Field(
        min_length=1, max_length=256, description="Id of the model request; also the Kafka message key."
    )
    token_span: TokenSpan
    top_latents: list[LatentActivation] = Field(
        default_factory=list, max_length=64, description="Latents that contributed most, largest first."
    )
    snippet: str | None = Field(
        None, max_length=4000, description="Redacted text of the span; absent unless the operator enabled it."
    )
    instance: str = Field("", max_length=256, description="Sidecar instance that raised the alert.")
    kind: AlertKind = Field(
        "detection",
        description="'detection' (a detector fired on request_id; also when absent) or 'detector_drift' (the "
        "detector's live alert rate drifted from its calibration; see 'drift').",
    )
    drift: DriftDetails | None = Field(None, description="For kind 'detector_drift': the live rate and the bound.")

    @field_validator("score", "threshold")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("time")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.astimezone(UTC)

    @model_validator(mode="after")
    def _drift_details(self) -> Alert:
        if self.kind == "detector_drift" and self.drift is None:
            raise ValueError("a detector_drift event carries its 'drift' details")
        return self

    def to_json(self) -> bytes:
        """The wire form: UTF-8 JSON with wire field names."""
        return self.model_dump_json(by_alias=True).encode()

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict with wire field names."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, data: bytes | str) -> Alert:
        """Parse and validate one event; raises ``pydantic.ValidationError`` when it is not a v1 alert."""
        return cls.model_validate_json(data)


_OPTIONAL_LATER = ("kind", "drift")


def alert_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the v1 alert event, as published in ``docs/alert.schema.json``."""
    schema = Alert.model_json_schema(by_alias=True, mode="serialization")
    out: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_URI,
    }
    out.update(schema)
    # Added in a later v1 producer: optional, so events written before them stay valid.
    out["required"] = [f for f in out["required"] if f not in _OPTIONAL_LATER]
    out["description"] = (
        "A safety-monitor alert event. Delivery is at-least-once: deduplicate by event_id. "
        "Unknown properties may appear in later v1 events and must be ignored."
    )
    return out


def write_json_schema(path: str | Path) -> None:
    """Write :func:`alert_json_schema` to ``path`` (stable key order, trailing newline)."""
    Path(path).write_text(json.dumps(alert_json_schema(), indent=2, sort_keys=True) + "\n")
