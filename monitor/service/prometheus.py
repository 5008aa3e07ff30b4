"""Prometheus metrics of the sidecar, in a registry of their own (no module globals).

Names follow the Prometheus conventions: ``_total`` counters, ``_seconds`` histograms, and only
low-cardinality labels (a drop reason, a detector name, a severity), never a latent id or a request id.
Gauges that mirror live state (queue depth, active requests) are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "safety_monitor"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds; dense below 50 ms, where the alert-latency target lies."""

DROP_REASONS = ("unauthorized", "forbidden", "content_type", "too_large", "malformed", "mismatch",
                "unknown_request", "queue_full", "not_ready", "shutdown")
"""Why an ingest call was refused (the ``reason`` label of the drop counters)."""

FINISH_REASONS = ("final", "idle", "evicted", "reload", "shutdown")
"""Why a request's state was finalised: its final flag, the idle timeout, the memory bound, a detector
reload that retired its generation, or shutdown."""


SAMPLE_DROP_REASONS = ("queue_full", "write_failed", "store_full")
"""Why a traffic sample was lost or deleted (the ``reason`` label of ``traffic_samples_dropped_total``)."""


class SidecarMetrics:
    """All sidecar metrics; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r, p = self.registry, PREFIX
        self.tokens_ingested = Counter(f"{p}_tokens_ingested", "Tokens accepted by POST /v1/activations.",
                                       registry=r)
        self.batches_ingested = Counter(f"{p}_batches_ingested", "Activation batches accepted.", registry=r)
        self.batches_dropped = Counter(f"{p}_batches_dropped", "Ingest calls refused, by reason.",
                                       ["reason"], registry=r)
        self.tokens_dropped = Counter(f"{p}_tokens_dropped", "Tokens refused (where the count was known), by reason.",
                                      ["reason"], registry=r)
        self.tokens_scored = Counter(f"{p}_tokens_scored", "Tokens encoded and scored (attention-sink rows excluded).",
                                     registry=r)
        self.requests_started = Counter(f"{p}_requests_started", "Model requests whose first tokens were scored.",
                                        registry=r)
        self.requests_finished = Counter(f"{p}_requests_finished", "Model requests finalised, by reason.",
                                         ["reason"], registry=r)
        self.unknown_finals = Counter(f"{p}_final_flags_ignored",
                                      "Final flags of requests already finalised (repeats are harmless).", registry=r)
        self.encode_seconds = Histogram(f"{p}_encode_seconds", "SAE encoding (monitored latents only) of one worker "
                                        "step.", buckets=LATENCY_BUCKETS, registry=r)
        self.step_seconds = Histogram(f"{p}_worker_step_seconds", "One worker step: encode, aggregate, score, alert.",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.ingest_to_scored = Histogram(f"{p}_ingest_to_scored_seconds",
                                          "From receipt of a batch to its tokens being scored.",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.ingest_to_alert = Histogram(f"{p}_ingest_to_alert_seconds",
                                         "From receipt of the batch that crossed a threshold to the alert being "
                                         "durable in the outbox (or handed to the sinks).", buckets=LATENCY_BUCKETS,
                                         registry=r)
        self.alerts = Counter(f"{p}_detector_alerts", "Alerts raised, by detector and severity.",
                              ["detector", "severity"], registry=r)
        self.alert_emit_failures = Counter(f"{p}_alert_emit_failures",
                                           "Failed outbox commits (the alerts are retried).", registry=r)
        self.reloads = Counter(f"{p}_detector_reloads", "Detector reloads, by result.", ["result"], registry=r)
        self.detectors_loaded = Gauge(f"{p}_detectors_loaded", "Detectors currently scored.", registry=r)
        self.monitored_latents = Gauge(f"{p}_monitored_latents", "SAE latents computed per token.", registry=r)
        self.live_alert_rate = Gauge(f"{p}_detector_live_alert_rate", "Share of the finished requests in the drift "
                                     "window (default 1 h) that the detector alerted on.", ["detector"], registry=r)
        self.drift_ratio = Gauge(f"{p}_detector_drift_ratio", "Live alert rate / the FPR the detector's calibration "
                                 "guarantees (drifting: the rate's 95% interval lies above limit_factor x that bound).",
                                 ["detector"], registry=r)
        self.drifting = Gauge(f"{p}_detector_drifting", "1 while the detector's drift state is 'drifting'.",
                              ["detector"], registry=r)
        self.drift_events = Counter(f"{p}_detector_drift_events", "detector_drift events raised (one per entry "
                                    "into 'drifting').", ["detector"], registry=r)
        self.samples_recorded = Counter(f"{p}_traffic_samples_recorded", "Traffic samples written to the store.",
                                        registry=r)
        self.samples_dropped = Counter(f"{p}_traffic_samples_dropped", "Traffic samples lost: queue_full (the writer "
                                       "fell behind), write_failed, store_full (oldest deleted to keep the bound).",
                                       ["reason"], registry=r)
        for reason in SAMPLE_DROP_REASONS:
            self.samples_dropped.labels(reason)
        for reason in DROP_REASONS:
            self.batches_dropped.labels(reason)
        for reason in FINISH_REASONS:
            self.requests_finished.labels(reason)

    def gauge_function(self, name: str, documentation: str, fn: Callable[[], float]) -> Gauge:
        """A gauge read from ``fn`` at scrape time (queue depth, active requests ...)."""
        g = Gauge(f"{PREFIX}_{name}", documentation, registry=self.registry)
        g.set_function(fn)
        return g

    def drop(self, reason: str, tokens: int = 0) -> None:
        """Count one refused ingest call and, when known, its tokens."""
        self.batches_dropped.labels(reason).inc()
        if tokens:
            self.tokens_dropped.labels(reason).inc(tokens)
