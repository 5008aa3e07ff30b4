"""``Sidecar``: the running service assembled from ``Settings``: SAE, detectors, scoring pipeline, alerts.

``Sidecar.load(settings)`` does everything that can fail on bad configuration (SAE sha256 pin,
detector specs, outbox path, optional model) and raises ``SidecarStartError`` naming the setting to
fix, before any port is opened. ``start()`` starts the threads; ``close()`` drains and stops them.
The FastAPI app (``monitor.service.app``) holds one ``Sidecar`` in ``app.state``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from alerts.config import AlertsConfig
from alerts.dashboard.models import CalibrationSummary, DetectorThreshold, DriftSummary, histogram_bucket
from alerts.delivery import AlertPipeline
from alerts.outbox import AlertOutbox
from alerts.prometheus import AlertMetricsCollector
from alerts.schema import Alert, DriftDetails, Severity, TokenSpan
from detectors.calibration.traffic_samples import SamplesError, TrafficSampleStore
from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from detectors.spec import CalibrationRecord, DetectorSpec, SpecError, load_specs
from monitor.sae import FrozenSAE, SAELoadError
from monitor.service.alert_emitter import AlertEmitter, PendingAlert
from monitor.service.api_models import (
    DetectorInfo,
    Readiness,
    ReadinessCheck,
    SkippedDetector,
)
from monitor.service.drift_watch import DriftTransition, DriftWatch
from monitor.service.prometheus import SidecarMetrics
from monitor.service.scoring_pipeline import DetectorGeneration, FinishedRequests, ScoringPipeline
from monitor.service.settings import Settings
from monitor.service.traffic_sampler import TrafficSampler
from monitor.wire import ActivationBatch, WireLimits

log = logging.getLogger(__name__)


class SidecarStartError(RuntimeError):
    """The sidecar cannot start with these settings; the message names the setting to change."""


@dataclass(frozen=True)
class DetectorLoad:
    """Result of reading a detector directory."""

    specs: list[DetectorSpec]
    skipped: list[SkippedDetector]
    source: str


def resolve_sae(settings: Settings) -> tuple[Path, str | None]:
    """The SAE path and expected sha256 from the settings, else the shipped default and its pin."""
    from monitor.artifacts import ARTIFACTS_DIR, default_sae_dir, default_sae_sha256

    if settings.sae.path is not None:
        return settings.sae.path, settings.sae.sha256
    path = default_sae_dir()
    if path is None:
        raise SidecarStartError(
            "sae.path: no SAE configured and none is shipped yet; set sae.path in the config file or "
            f"SAFETY_MONITOR_SAE__PATH (the shipped one is named in {ARTIFACTS_DIR / 'defaults.json'})"
        )
    return path, settings.sae.sha256 or default_sae_sha256()


def resolve_detector_dir(settings: Settings) -> Path | None:
    """``detectors.dir``, else the ``detectors/`` folder beside the SAE (where ``calibrate`` writes the
    specs calibrated for it), else None."""
    if settings.detectors.dir is not None:
        if not settings.detectors.dir.is_dir():
            raise SidecarStartError(f"detectors.dir: {settings.detectors.dir} is not a directory")
        return settings.detectors.dir
    sae_path, _ = resolve_sae(settings)
    beside = (sae_path if sae_path.is_dir() else sae_path.parent) / "detectors"
    return beside if beside.is_dir() else None


def read_detectors(directory: Path | None, sae: FrozenSAE, *, force_no_signal: bool = False) -> DetectorLoad:
    """Load and check every spec of ``directory`` against the SAE. Raises ``SpecError`` on any bad spec
    (nothing is half-loaded). ``None``: no detectors."""
    if directory is None:
        return DetectorLoad([], [], "(no detector directory)")
    specs = load_specs(directory, sae_sha256=sae.sha256, d_sae=sae.cfg.d_sae, include_no_signal=not force_no_signal,
                       force=force_no_signal)
    loaded = {s.name for s in specs}
    skipped = []
    for path in sorted(Path(directory).glob("*.json")):
        spec = DetectorSpec.load(path)  # load_specs already parsed every file successfully
        if spec.name not in loaded:
            skipped.append(SkippedDetector(file=path.name, name=spec.name, status=spec.status,
                                           reason=spec.status_reason, threshold=spec.threshold))
    return DetectorLoad(specs, skipped, str(directory))


def _detector_latents(settings: Settings) -> list[int] | None:
    """The union of the latents of the detector specs the settings point at; None (load every latent) when
    they cannot be read here (``read_detectors`` then reports why)."""
    try:
        directory = resolve_detector_dir(settings)
        if directory is None:
            return []
        return sorted({lat for p in Path(directory).glob("*.json") for lat in DetectorSpec.load(p).latents})
    except (SidecarStartError, SpecError, OSError, ValueError):
        return None


def load_monitored_sae(settings: Settings, *, device: str | torch.device = "cpu",
                       dtype: torch.dtype | None = None) -> FrozenSAE:
    """The configured SAE, pinned, holding only the encoder columns of the configured detectors' latents (the
    pin still covers the whole file): a 131k-latent SAE then costs megabytes, not gigabytes. ``device`` and
    ``dtype``: as for ``FrozenSAE.load``. Raises ``SidecarStartError`` naming the setting to fix."""
    path, expected = resolve_sae(settings)
    if not Path(path).exists():
        raise SidecarStartError(f"sae.path: {path} does not exist")
    try:
        return FrozenSAE.load(path, expected_sha256=expected, latents=_detector_latents(settings), device=device,
                              dtype=dtype)
    except SAELoadError as exc:
        field = "sae.sha256" if "was expected" in str(exc) else "sae.path"
        raise SidecarStartError(f"{field}: {exc}") from None


def load_detectors(settings: Settings, sae: FrozenSAE) -> DetectorLoad:
    """The enabled detector specs the settings point at, each checked against ``sae`` (sha256 and width).
    Raises ``SidecarStartError`` naming ``detectors.dir``."""
    try:
        return read_detectors(resolve_detector_dir(settings), sae, force_no_signal=settings.detectors.force_no_signal)
    except SpecError as exc:
        raise SidecarStartError(f"detectors.dir: {exc}") from None


def calibration_summary(record: CalibrationRecord | None) -> CalibrationSummary | None:
    """The published view of a spec's calibration record (API and dashboard): the one conversion."""
    if record is None:
        return None
    low, high = record.achieved_fpr_ci or (None, None)
    return CalibrationSummary(target_fpr=record.target_fpr, achieved_fpr=record.achieved_fpr, fpr_ci_low=low,
                              fpr_ci_high=high, n_benign=record.n_benign, recall=record.recall, auroc=record.auroc,
                              datasets=[f"{k}@{v[:12]}" for k, v in record.datasets.items()],
                              calibrated_at=record.date)


def detector_info(spec: DetectorSpec, drift: DriftSummary | None = None) -> DetectorInfo:
    return DetectorInfo(
        name=spec.name, version=spec.version, concept=spec.concept, description=spec.description,
        threshold=spec.threshold, severity_thresholds=dict(spec.severity_thresholds), aggregation=spec.aggregation,
        window=spec.window, kind=spec.kind, span=spec.span, n_latents=len(spec.latents), status=spec.status,
        calibration=calibration_summary(spec.calibration), drift=drift,
    )


def _dashboard_threshold(spec: DetectorSpec, status: str = "ok", drift: DriftSummary | None = None,
                         calibration_histogram: list[int] | None = None) -> DetectorThreshold:
    return DetectorThreshold(detector=spec.name, version=spec.version, threshold=spec.threshold, concept=spec.concept,
                             status=status, calibration=calibration_summary(spec.calibration),  # type: ignore[arg-type]
                             drift=drift, calibration_histogram=calibration_histogram)


def calibration_histogram(spec: DetectorSpec, directory: Path | None, edges) -> list[int] | None:
    """The benign calibration scores of ``spec`` in the dashboard's histogram buckets (score / threshold), read
    from the calibration report beside the spec (``reports/<name>.json``, ``scores.calibration_benign``, as
    ``calibrate`` and ``calibrate --thresholds-from`` write it); None when there is none for this threshold."""
    if directory is None:
        return None
    path = Path(directory) / "reports" / f"{spec.name}.json"
    try:
        report = json.loads(path.read_text())
        scores = report["scores"]["calibration_benign"]
        if abs(float(report["threshold"]) - spec.threshold) > 1e-9 * max(1.0, abs(spec.threshold)):
            return None  # the report of another calibration
    except (OSError, ValueError, KeyError, TypeError):
        return None
    counts = [0] * len(edges)
    for v in scores:
        counts[histogram_bucket(float(v), spec.threshold, edges)] += 1
    return counts


def samples_path(settings: Settings) -> Path:
    """``samples.path``, else ``traffic-samples.sqlite3`` beside the alert outbox (on its volume)."""
    if settings.samples.path is not None:
        return settings.samples.path
    outbox = Path(settings.alerts.outbox.path)
    return (Path(".") if str(outbox) == ":memory:" else outbox.parent) / "traffic-samples.sqlite3"


def build_alert_pipeline(settings: Settings) -> AlertPipeline:
    """The ``alerts`` pipeline the settings describe (outbox kept without Kafka when ``alerts.local_outbox``)."""
    a = settings.alerts
    kafka = settings.kafka
    if kafka is not None and kafka.sasl_plain_password is None and os.environ.get("SAFETY_MONITOR_KAFKA_SASL_PASSWORD"):
        # The variable the alerts CLI reads; honoured here too so one Secret serves both.
        kafka = dataclasses.replace(kafka, sasl_plain_password=os.environ["SAFETY_MONITOR_KAFKA_SASL_PASSWORD"])
    config = AlertsConfig(model=settings.model.id, instance=a.instance, kafka=kafka, publisher=a.publisher,
                          outbox=a.outbox, redis=settings.redis, console=a.console, console_json=a.console_json,
                          jsonl_path=str(a.jsonl_path) if a.jsonl_path else None)
    try:
        pipeline = AlertPipeline.from_config(config)
        if pipeline.outbox is None and a.local_outbox:
            # alerts.AlertPipeline.from_config makes an outbox only for Kafka; the design keeps a local
            # durable record by default, so add one (no publisher drains it).
            pipeline = AlertPipeline(outbox=AlertOutbox(a.outbox), store=pipeline.store, sinks=pipeline.sinks)
    except (OSError, RuntimeError) as exc:
        raise SidecarStartError(f"alerts.outbox.path: cannot open the alert outbox {a.outbox.path}: {exc}") from exc
    except Exception as exc:  # sqlite3.Error and client construction errors
        raise SidecarStartError(f"alerts: cannot set up the alert pipeline: {type(exc).__name__}: {exc}") from exc
    return pipeline


class Sidecar:
    """The assembled service. Build with ``Sidecar.load``; then ``start()`` and, at the end, ``close()``."""

    def __init__(self, settings: Settings, sae: FrozenSAE, detectors: DetectorLoad, alert_pipeline: AlertPipeline,
                 metrics: SidecarMetrics, lm=None) -> None:
        self.settings = settings
        self.sae = sae
        self.metrics = metrics
        self.alert_pipeline = alert_pipeline
        self.lm = lm
        """``monitor.lm.loading.LoadedModel`` when ``model.load`` is set (for ``POST /v1/score``), else None."""
        self.skipped = detectors.skipped
        self.emitter = AlertEmitter(alert_pipeline, metrics, queue_size=settings.alerts.queue_size)
        q, lim = settings.queue, settings.limits
        self.drift = DriftWatch(window_s=settings.drift.window_s, min_requests=settings.drift.min_requests,
                                limit_factor=settings.drift.limit_factor) if settings.drift.enabled else None
        """Live alert rates against the calibrated FPR (None: ``drift.enabled`` is off)."""
        self.sampler: TrafficSampler | None = None
        """Traffic samples for recalibration (None: ``samples.enabled`` is off)."""
        if settings.samples.enabled:
            path = samples_path(settings)
            try:
                store = TrafficSampleStore(path, settings.samples.max_rows)
            except (OSError, SamplesError, sqlite3.Error) as exc:
                raise SidecarStartError(f"samples.path: cannot open the traffic-samples store {path}: {exc}") from exc
            self.sampler = TrafficSampler(store, metrics, rate=settings.samples.rate,
                                          queue_size=settings.samples.queue_size, seed=settings.samples.seed)
        self._detector_dir = Path(detectors.source) if Path(detectors.source).is_dir() else None
        self._calibration_histograms: dict[str, list[int] | None] = {}
        self._published_states: dict[str, str] = {}
        self._published_at = 0.0
        self.pipeline = ScoringPipeline(
            sae, detectors.specs, model_id=settings.model.id, hook=settings.model.hook_name, emitter=self.emitter,
            metrics=metrics, max_queue_batches=q.max_batches, max_queue_tokens=q.max_tokens,
            coalesce_tokens=q.coalesce_tokens, max_active_requests=lim.max_active_requests,
            remember_request_ids=lim.remember_request_ids, idle_timeout_s=lim.idle_timeout_s,
            top_latents=settings.alerts.top_latents, instance=settings.alerts.instance, source=detectors.source,
            on_finished=self._on_finished if (self.drift is not None or self.sampler is not None) else None,
            track_turns=self.sampler is not None,
        )
        self._watch(detectors.specs)
        self.wire_limits = WireLimits(max_bytes=lim.max_body_bytes, max_tokens=lim.max_tokens_per_batch,
                                      max_requests=lim.max_requests_per_batch, max_header_bytes=lim.max_header_bytes)
        self.started_at = time.monotonic()
        self._reload_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._started = False
        metrics.registry.register(AlertMetricsCollector(alert_pipeline))
        metrics.gauge_function("queue_tokens", "Tokens waiting to be scored.", lambda: self.pipeline.stats().queue_tokens)
        metrics.gauge_function("queue_batches", "Batches waiting to be scored.",
                               lambda: self.pipeline.stats().queue_batches)
        metrics.gauge_function("active_requests", "Model requests with scoring state in memory.",
                               lambda: self.pipeline.stats().active_requests)
        metrics.gauge_function("alert_queue_depth", "Alerts waiting for their outbox commit.", lambda: self.emitter.depth)
        metrics.gauge_function("alert_commits_failing", "1 while committing alerts to the outbox fails (they are kept "
                               "and retried; /readyz says why).", lambda: 0 if self.emitter.healthy else 1)

    # ------------------------------------------------------------------ building
    @classmethod
    def load(cls, settings: Settings, metrics: SidecarMetrics | None = None) -> Sidecar:
        """Load the SAE, the detectors, the alert pipeline and (if configured) the model."""
        torch.set_num_threads(settings.queue.torch_threads)
        sae = load_monitored_sae(settings)
        detectors = load_detectors(settings, sae)
        lm = None
        if settings.model.load:
            from monitor.lm.loading import ModelLoadError, load_model

            try:
                lm = load_model(settings.model.id, dtype=getattr(torch, settings.model.dtype))
            except ModelLoadError as exc:
                raise SidecarStartError(f"model.id: {exc}") from None
            if lm.d_model != sae.cfg.d_in:
                raise SidecarStartError(f"model.id: {lm.model_id} has d_model={lm.d_model} but the SAE reads "
                                        f"d_in={sae.cfg.d_in}")
        alert_pipeline = build_alert_pipeline(settings)
        return cls(settings, sae, detectors, alert_pipeline, metrics or SidecarMetrics(), lm)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Sidecar:
        if not self._started:
            self._started = True
            self.alert_pipeline.start()
            self.emitter.start()
            if self.sampler is not None:
                self.sampler.start()
            self.pipeline.start()
            self._publish_thresholds()
        return self

    def close(self) -> None:
        """Score what is queued (``server.shutdown_drain_s``), commit pending alerts, stop everything."""
        if not self._started:
            self.alert_pipeline.close(1.0)
            return
        self._started = False
        self.pipeline.stop(self.settings.server.shutdown_drain_s)
        if self.sampler is not None:
            self.sampler.close(5.0)
        if not self.emitter.close(10.0):
            log.error("alerts were still waiting for the outbox at shutdown")
        self.alert_pipeline.close(5.0)

    # ------------------------------------------------------------------ detectors
    @property
    def generation(self) -> DetectorGeneration:
        return self.pipeline.generation

    def _hold_latents(self, specs: list[DetectorSpec]) -> None:
        """Re-read the SAE's slice when ``specs`` read latents it does not hold (keeping those it holds, which
        the detectors of requests in flight may read). Raises ``SpecError`` if the SAE file changed."""
        held = self.sae.loaded_latents
        need = {lat for s in specs for lat in s.latents}
        if held is None or need <= set(held):
            return
        path, _ = resolve_sae(self.settings)
        try:
            sae = FrozenSAE.load(path, expected_sha256=self.sae.sha256, latents=sorted(need | set(held)))
        except SAELoadError as exc:
            raise SpecError(f"the new detectors read latents the sidecar does not hold, and re-reading them "
                            f"from the SAE failed: {exc}") from None
        self.sae = self.pipeline.sae = sae  # a superset of the old slice: a step in progress is unaffected

    def reload_detectors(self) -> tuple[DetectorGeneration, DetectorGeneration]:
        """Re-read the detector directory and switch atomically. Raises ``SpecError`` (old detectors stay).
        Returns ``(previous, new)`` generations."""
        with self._reload_lock:
            previous = self.pipeline.generation
            try:
                directory = resolve_detector_dir(self.settings)
            except SidecarStartError as exc:
                raise SpecError(str(exc)) from None
            try:
                loaded = read_detectors(directory, self.sae, force_no_signal=self.settings.detectors.force_no_signal)
            except OSError as exc:
                raise SpecError(f"cannot read the detector directory: {exc}") from None
            self._hold_latents(loaded.specs)
            new = self.pipeline.set_detectors(loaded.specs, loaded.source)
            self.skipped = loaded.skipped
            self._detector_dir = directory
            self._watch(loaded.specs)
            self.metrics.reloads.labels("ok").inc()
            self._publish_thresholds()
            return previous, new

    # ------------------------------------------------------------------ drift watch and traffic samples
    def _watch(self, specs) -> None:
        """Start watching ``specs`` (windows of unchanged detectors are kept) and read their calibration
        histograms."""
        edges = self._histogram_edges()
        self._calibration_histograms = {s.name: calibration_histogram(s, self._detector_dir, edges) for s in specs}
        if self.drift is None:
            return
        self.drift.set_detectors(list(specs))
        names = {s.name for s in specs}
        for gauge in (self.metrics.live_alert_rate, self.metrics.drift_ratio, self.metrics.drifting):
            for (label,) in list(gauge._metrics):  # prometheus_client has no public listing of label sets
                if label not in names:
                    gauge.remove(label)

    def _histogram_edges(self) -> tuple[float, ...]:
        store = self.alert_pipeline.store
        config = getattr(store, "config", None)
        return tuple(getattr(config, "histogram_edges", ())) or (0.0, 0.5, 1.0, 2.0)

    def _on_finished(self, finished: FinishedRequests) -> None:
        """The scoring worker's hook, once per group of finalised requests."""
        if self.sampler is not None:
            self.sampler.offer(finished)
        if self.drift is not None:
            self.drift.observe(finished.generation.specs, finished.scores, finished.alerted)
            if self.drift.due():
                self.evaluate_drift()

    def evaluate_drift(self, force: bool = False) -> dict[str, DriftSummary]:
        """Slide the drift windows, raise a ``detector_drift`` event for each detector that has just entered
        ``drifting``, update the gauges and (when states changed, else every few seconds) the dashboard.
        Returns the detectors' drift summaries ({} without the drift watch)."""
        if self.drift is None:
            return {}
        transitions = self.drift.evaluate(force=force)
        snapshot = self.drift.snapshot()
        if transitions is None:
            return snapshot
        for t in transitions:
            self._raise_drift_event(t)
        for name, d in snapshot.items():
            self.metrics.live_alert_rate.labels(name).set(d.live_alert_rate if d.live_alert_rate is not None
                                                          else float("nan"))
            self.metrics.drift_ratio.labels(name).set(d.ratio if d.ratio is not None else float("nan"))
            self.metrics.drifting.labels(name).set(1 if d.state == "drifting" else 0)
        states = {name: d.state for name, d in snapshot.items()}
        if states != self._published_states or time.monotonic() - self._published_at > 5.0:
            self._publish_thresholds(snapshot)
        return snapshot

    def _raise_drift_event(self, t: DriftTransition) -> None:
        d = t.summary
        spec = next((s for s in self.generation.specs if s.name == t.detector), None)
        limit = d.limit_factor * (d.calibrated_fpr_upper_bound or 0.0)
        alert = Alert(
            kind="detector_drift", model=self.settings.model.id, sae_sha256=self.sae.sha256, detector=t.detector,
            detector_version=t.version, score=d.live_alert_rate or 0.0, threshold=limit, severity=Severity.HIGH,
            request_id=f"detector-drift:{t.detector}:{t.version}:{int(d.since.timestamp()) if d.since else 0}",
            token_span=TokenSpan(start=0, end=1), instance=self.settings.alerts.instance,
            drift=DriftDetails(window_requests=d.window_requests, window_alerts=d.window_alerts, window_s=d.window_s,
                               live_alert_rate=d.live_alert_rate or 0.0, live_rate_ci=d.live_rate_ci or (0.0, 1.0),
                               calibrated_fpr_upper_bound=d.calibrated_fpr_upper_bound or 0.0,
                               ratio=d.ratio or 0.0, limit_factor=d.limit_factor),
        )
        log.warning("detector %s v%s is drifting: it alerts on %.2f%% of requests (95%% CI %.2f-%.2f%%) against a "
                    "calibrated FPR of at most %.2f%%; recalibrate (safety-monitor calibrate --thresholds-from)%s",
                    t.detector, t.version, 100 * (d.live_alert_rate or 0), 100 * (d.live_rate_ci or (0, 0))[0],
                    100 * (d.live_rate_ci or (0, 0))[1], 100 * (d.calibrated_fpr_upper_bound or 0),
                    "" if spec is not None else " (detector no longer loaded)")
        self.metrics.drift_events.labels(t.detector).inc()
        self.emitter.submit([PendingAlert(alert, time.perf_counter())])

    def _publish_thresholds(self, drift: dict[str, DriftSummary] | None = None) -> None:
        if drift is None and self.drift is not None:
            drift = self.drift.snapshot()
        drift = drift or {}
        self._published_states = {name: d.state for name, d in drift.items()}
        self._published_at = time.monotonic()
        rows = [_dashboard_threshold(s, drift=drift.get(s.name),
                                     calibration_histogram=self._calibration_histograms.get(s.name))
                for s in self.generation.specs]
        rows += [DetectorThreshold(detector=s.name, threshold=s.threshold, status="no_signal")
                 for s in self.skipped if s.status == "no_signal" and s.name and s.threshold is not None]
        try:
            self.alert_pipeline.set_thresholds(rows)
        except Exception as exc:  # noqa: BLE001 - the dashboard is best effort
            log.warning("could not publish thresholds to the dashboard store: %s", exc)

    # ------------------------------------------------------------------ health
    def readiness(self) -> Readiness:
        st = self.pipeline.stats()
        q = self.settings.queue
        high = int(q.high_water * st.queue_max_tokens)
        gen = self.generation
        checks = {
            "sae": ReadinessCheck(ok=True, detail=f"{self.sae.cfg.architecture} d_in={self.sae.cfg.d_in} "
                                                  f"d_sae={self.sae.cfg.d_sae} sha256={self.sae.sha256[:12]}"),
            "detectors": ReadinessCheck(ok=True, detail=f"{len(gen.specs)} loaded (generation {gen.number})"
                                        + ("; none loaded, nothing is scored" if not gen.specs else "")),
            "worker": ReadinessCheck(ok=st.worker_alive and st.accepting,
                                     detail="scoring" if st.worker_alive and st.accepting else "stopped"),
            "queue": ReadinessCheck(ok=st.queue_tokens <= high,
                                    detail=f"{st.queue_tokens} tokens queued (high-water mark {high})"),
            "outbox": self._outbox_check(),
        }
        return Readiness(ready=all(c.ok for c in checks.values()), checks=checks)

    def _outbox_check(self) -> ReadinessCheck:
        outbox = self.alert_pipeline.outbox
        if outbox is None:
            return ReadinessCheck(ok=True, detail="no outbox (alerts.local_outbox is off and Kafka is not set)")
        if not self.emitter.healthy:
            return ReadinessCheck(ok=False, detail=f"commits failing: {self.emitter.last_error}")
        try:
            stats = outbox.stats()
        except Exception as exc:  # noqa: BLE001
            return ReadinessCheck(ok=False, detail=f"outbox unreadable: {type(exc).__name__}: {exc}")
        if stats.last_write_error:
            # e.g. the publisher could not mark delivered rows (they stay pending and are sent again)
            return ReadinessCheck(ok=False, detail=f"outbox writes failing: {stats.last_write_error}")
        path = Path(outbox.config.path)
        if str(path) != ":memory:" and not os.access(path.parent if not path.exists() else path, os.W_OK):
            return ReadinessCheck(ok=False, detail=f"{path} is not writable")
        return ReadinessCheck(ok=True, detail=f"{stats.pending} pending")

    def health_gauges(self) -> dict:
        """Flat gauges shown on the dashboard's health panel."""
        st = self.pipeline.stats()
        out = {"ready": self.readiness().ready, "queue_tokens": st.queue_tokens, "active_requests": st.active_requests,
               "detectors": len(self.generation.specs), "generation": self.generation.number}
        out.update(self.alert_pipeline.health())
        return out

    # ------------------------------------------------------------------ in-process scoring
    def tap_text(self, text: str, *, chat: bool, response: str | None, request_id: str | None
                 ) -> ActivationBatch:
        """Run the loaded model over a text with the tap; the request's activations as one final batch."""
        from monitor.lm.chat import render_chat
        from monitor.toolkit.encode_text import tap_text

        assert self.lm is not None
        tok = self.lm.tokenizer
        max_tokens = self.settings.model.max_score_tokens
        if chat:
            messages = [{"role": "user", "content": text}]
            if response is not None:
                messages.append({"role": "assistant", "content": response})
            rendered = render_chat(tok, messages, max_tokens=max_tokens)
            ids, roles = rendered.input_ids, rendered.roles
        else:
            ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"][:max_tokens], dtype=torch.int64)
            roles = torch.full_like(ids, ROLE_PROMPT, dtype=torch.uint8)
        if ids.numel() == 0:
            raise ValueError("the text has no tokens")
        with self._model_lock:
            batch = tap_text(self.lm, self.settings.model.layer, ids, roles)
        assert set(roles.tolist()) <= {ROLE_PROMPT, ROLE_RESPONSE}
        return ActivationBatch(
            activations=batch.activations, token_ids=batch.token_ids, positions=batch.positions, roles=batch.roles,
            offsets=torch.tensor([0, batch.n_tokens], dtype=torch.int64),
            request_ids=[request_id or f"score-{uuid.uuid4()}"], final=[True], model=self.settings.model.id,
            hook=self.settings.model.hook_name, sae_sha256=self.sae.sha256,
        )
