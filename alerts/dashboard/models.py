"""Records the dashboard store keeps and the dashboard serves (the ``/v1/dashboard`` JSON contract)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from alerts.schema import Alert


class CalibrationSummary(BaseModel):
    """How a detector's threshold was calibrated: the published summary of a detector spec's calibration
    record, served by the dashboard and by the sidecar's ``GET /v1/detectors``."""

    model_config = ConfigDict(extra="ignore")

    target_fpr: float | None = Field(None, description="False-positive rate the threshold was chosen for.")
    achieved_fpr: float | None = Field(
        None, description="False-positive rate measured on held-out benign data."
    )
    fpr_ci_low: float | None = Field(
        None, description="Lower end of the 95% confidence interval of achieved_fpr."
    )
    fpr_ci_high: float | None = Field(
        None, description="Upper end of the 95% confidence interval of achieved_fpr."
    )
    n_benign: int | None = Field(None, description="Benign samples the threshold was chosen on.")
    recall: float | None = Field(None, description="Recall on held-out positives at this threshold.")
    auroc: float | None = Field(None, description="AUROC on held-out data.")
    datasets: list[str] = Field(default_factory=list, description="Calibration data sets (name@hash).")
    calibrated_at: str | None = Field(None, description="Date of the calibration run (ISO 8601).")


DriftState = Literal["ok", "drifting", "insufficient_data"]


class DriftSummary(BaseModel):
    """Whether a detector's live alert rate still agrees with its calibration: the sidecar's drift watch over
    a sliding window of finished requests, served by ``GET /v1/detectors`` and the dashboard."""

    model_config = ConfigDict(extra="ignore")

    state: DriftState = Field(
        description="'insufficient_data' while the window holds fewer than min_requests requests; 'drifting' "
        "when the live rate's 95% interval lies wholly above limit_factor x the calibrated bound; else 'ok'."
    )
    window_s: float = Field(description="Length of the sliding window, in seconds.")
    min_requests: int = Field(description="Requests the window needs before a state other than insufficient_data.")
    window_requests: int = Field(description="Finished requests in the window whose span had tokens.")
    window_alerts: int = Field(description="Of those, requests the detector alerted on.")
    live_alert_rate: float | None = Field(None, description="window_alerts / window_requests (None: no requests).")
    live_rate_ci: tuple[float, float] | None = Field(None, description="Clopper-Pearson 95% interval.")
    calibrated_fpr_upper_bound: float | None = Field(
        None, description="The FPR the calibration guarantees not to exceed (None: the spec has no calibration)."
    )
    ratio: float | None = Field(None, description="live_alert_rate / calibrated_fpr_upper_bound.")
    limit_factor: float = Field(description="How many times the calibrated bound the interval must clear.")
    since: datetime | None = Field(None, description="When the detector entered this state.")


class DetectorThreshold(BaseModel):
    """A detector's current threshold as shown on the dashboard."""

    model_config = ConfigDict(extra="ignore")

    detector: str
    version: str = ""
    threshold: float
    concept: str | None = Field(None, description="What the detector looks for, in a few words.")
    status: Literal["ok", "no_signal", "disabled"] = Field(
        "ok", description="'no_signal' when calibration found no usable signal for this model."
    )
    calibration: CalibrationSummary | None = None
    drift: DriftSummary | None = Field(None, description="Live alert rate against the calibration (drift watch).")
    calibration_histogram: list[int] | None = Field(
        None, description="Benign calibration scores in the buckets of the live score histogram (score / threshold "
        "at the histogram edges), when the calibration report is at hand.",
    )


def health_details(provider) -> dict[str, Any]:
    """The scalar fields of a health provider's report (``{}`` without a provider). A provider that
    raises yields ``{"health_error": ...}``: a broken provider must not stop heartbeats."""
    if provider is None:
        return {}
    try:
        return {k: v for k, v in provider().items() if isinstance(v, (int, float, str, bool)) or v is None}
    except Exception as exc:  # noqa: BLE001
        return {"health_error": str(exc)}


class Heartbeat(BaseModel):
    """What a sidecar instance last reported about itself."""

    model_config = ConfigDict(extra="ignore")

    instance: str
    model: str
    time: datetime
    started_at: datetime | None = None
    details: dict[str, float | int | str | bool | None] = Field(
        default_factory=dict, description="Gauges such as outbox depth and published count."
    )


class InstanceHealth(Heartbeat):
    """A heartbeat with its age at read time."""

    age_s: float = Field(description="Seconds since the heartbeat was written.")


class RateSeries(BaseModel):
    """Alerts per minute of one detector."""

    detector: str
    total: list[int] = Field(description="Count per minute, aligned with AlertRates.minutes.")
    by_severity: dict[str, list[int]] = Field(default_factory=dict)


class AlertRates(BaseModel):
    """Alerts per minute per detector over a window."""

    minutes: list[int] = Field(description="Start of each minute, unix seconds, oldest first.")
    series: list[RateSeries]


class ScoreHistogram(BaseModel):
    """Distribution of one detector's scores, in units of its threshold (1.0 = at the threshold)."""

    detector: str
    edges: list[float] = Field(
        description="Lower edge of each bucket of score/threshold; the last bucket is open."
    )
    counts: list[int]


class StoreHealth(BaseModel):
    """State of the dashboard store as seen from this process."""

    backend: Literal["redis", "memory"]
    stale: bool = Field(
        description="True when Redis could not be reached recently: what is shown may be old."
    )
    stale_reason: str | None = None
    last_ok_at: datetime | None = Field(None, description="Last successful contact with the store.")
    queue_depth: int = Field(0, description="Writes waiting to be sent.")
    writes_total: int = 0
    write_failures_total: int = Field(0, description="Failed write batches (each is retried).")
    dropped_total: int = Field(0, description="Writes dropped because the queue was full.")


class DashboardSummary(BaseModel):
    """Everything the dashboard page shows, in one response."""

    model: str
    generated_at: datetime
    stale: bool
    stale_reason: str | None = None
    data_as_of: datetime | None = Field(None, description="When the shown data was read from the store.")
    rates: AlertRates
    recent: list[Alert]
    thresholds: list[DetectorThreshold]
    histograms: list[ScoreHistogram]
    instances: list[InstanceHealth]
    store: StoreHealth
    sidecar: dict[str, Any] = Field(
        default_factory=dict, description="Health of the sidecar serving this page."
    )


class DashboardSource(Protocol):
    """What the dashboard router reads from (the Redis store or the in-process store)."""

    model: str

    def summary(self, minutes: int = 60, recent: int = 50) -> DashboardSummary: ...

    def recent_alerts(self, limit: int = 50) -> list[Alert]: ...

    def rates(self, minutes: int = 60) -> AlertRates: ...

    def thresholds(self) -> list[DetectorThreshold]: ...

    def store_health(self) -> StoreHealth: ...


def histogram_bucket(score: float, threshold: float, edges: Sequence[float]) -> int:
    """Bucket index of ``score`` in a histogram of score/threshold with lower ``edges``.

    When the threshold is not positive the raw score is bucketed instead.
    """
    value = score / threshold if threshold > 0 else score
    if not math.isfinite(value):
        return len(edges) - 1 if value > 0 else 0
    return max(0, bisect.bisect_right(edges, value) - 1)
