"""``Sidecar``: the running service assembled from ``Settings``: SAE, detectors, scoring pipeline, alerts.

``Sidecar.load(settings)`` does everything that can fail on bad configuration (SAE sha256 pin,
detector specs, outbox path, optional model) and raises ``SidecarStartError`` naming the setting to
fix, before any port is opened. ``start()`` starts the threads; ``close()`` drains and stops them.
The FastAPI app (``monitor.service.app``) holds one ``Sidecar`` in ``app.state``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from alerts.config import AlertsConfig
from alerts.dashboard.models import CalibrationSummary, DetectorThreshold
from alerts.delivery import AlertPipeline
from alerts.outbox import AlertOutbox
from alerts.prometheus import AlertMetricsCollector
from detectors.spans import ROLE_PROMPT, ROLE_RESPONSE
from detectors.spec import CalibrationRecord, DetectorSpec, SpecError, load_specs
from monitor.sae import FrozenSAE, SAELoadError
from monitor.service.alert_emitter import AlertEmitter
from monitor.service.api_models import (
    DetectorInfo,
    Readiness,
    ReadinessCheck,
    SkippedDetector,
)
from monitor.service.prometheus import SidecarMetrics
from monitor.service.scoring_pipeline import DetectorGeneration, ScoringPipeline
from monitor.service.settings import Settings
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


def calibration_summary(record: CalibrationRecord | None) -> CalibrationSummary | None:
    """The published view of a spec's calibration record (API and dashboard): the one conversion."""
    if record is None:
        return None
    low, high = record.achieved_fpr_ci or (None, None)
    return CalibrationSummary(target_fpr=record.target_fpr, achieved_fpr=record.achieved_fpr, fpr_ci_low=low,
                              fpr_ci_high=high, n_benign=record.n_benign, recall=record.recall, auroc=record.auroc,
                              datasets=[f"{k}@{v[:12]}" for k, v in record.datasets.items()],
                              calibrated_at=record.date)


def detector_info(spec: DetectorSpec) -> DetectorInfo:
    return DetectorInfo(
        name=spec.name, version=spec.version, concept=spec.concept, description=spec.description,
        threshold=spec.threshold, severity_thresholds=dict(spec.severity_thresholds), aggregation=spec.aggregation,
        window=spec.window, kind=spec.kind, span=spec.span, n_latents=len(spec.latents), status=spec.status,
        calibration=calibration_summary(spec.calibration),
    )


def _dashboard_threshold(spec: DetectorSpec, status: str = "ok") -> DetectorThreshold:
    return DetectorThreshold(detector=spec.name, version=spec.version, threshold=spec.threshold, concept=spec.concept,
                             status=status, calibration=calibration_summary(spec.calibration))  # type: ignore[arg-type]


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
        self.pipeline = ScoringPipeline(
            sae, detectors.specs, model_id=settings.model.id, hook=settings.model.hook_name, emitter=self.emitter,
            metrics=metrics, max_queue_batches=q.max_batches, max_queue_tokens=q.max_tokens,
            coalesce_tokens=q.coalesce_tokens, max_active_requests=lim.max_active_requests,
            remember_request_ids=lim.remember_request_ids, idle_timeout_s=lim.idle_timeout_s,
            top_latents=settings.alerts.top_latents, instance=settings.alerts.instance, source=detectors.source,
        )
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
        path, expected = resolve_sae(settings)
        if not Path(path).exists():
            raise SidecarStartError(f"sae.path: {path} does not exist")
        try:
            sae = FrozenSAE.load(path, expected_sha256=expected)
        except SAELoadError as exc:
            field = "sae.sha256" if "was expected" in str(exc) else "sae.path"
            raise SidecarStartError(f"{field}: {exc}") from None
        try:
            detectors = read_detectors(resolve_detector_dir(settings), sae,
                                       force_no_signal=settings.detectors.force_no_signal)
        except SpecError as exc:
            raise SidecarStartError(f"detectors.dir: {exc}") from None
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
        if not self.emitter.close(10.0):
            log.error("alerts were still waiting for the outbox at shutdown")
        self.alert_pipeline.close(5.0)

    # ------------------------------------------------------------------ detectors
    @property
    def generation(self) -> DetectorGeneration:
        return self.pipeline.generation

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
            new = self.pipeline.set_detectors(loaded.specs, loaded.source)
            self.skipped = loaded.skipped
            self.metrics.reloads.labels("ok").inc()
            self._publish_thresholds()
            return previous, new

    def _publish_thresholds(self) -> None:
        rows = [_dashboard_threshold(s) for s in self.generation.specs]
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
