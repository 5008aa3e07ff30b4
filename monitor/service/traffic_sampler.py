"""``TrafficSampler``: records a random share of finished requests into the traffic-samples store.

What is recorded is defined in ``detectors.calibration.traffic_samples`` (per detector the aggregated
latent features, score and whether it alerted; per request its token and turn counts and time; no text,
no token ids). The scoring worker draws which requests to keep and reads their features from the
request table before the slots are released (a few tensor reads per sampled request); a thread of its
own writes them to SQLite in groups. When that thread falls behind, samples are dropped and counted
(``safety_monitor_traffic_samples_dropped_total{reason="queue_full"}``): samples never slow scoring.
"""

from __future__ import annotations

import logging
import math
import queue
import random
import threading
import time

from detectors.calibration.traffic_samples import (
    DetectorSample,
    FeatureKey,
    TrafficSample,
    TrafficSampleStore,
)
from monitor.service.prometheus import SidecarMetrics
from monitor.service.scoring_pipeline import FinishedRequests

log = logging.getLogger(__name__)

_MAX_GROUP = 1024


class TrafficSampler:
    """Random sampling of finished requests into a ``TrafficSampleStore`` (its own writer thread)."""

    def __init__(self, store: TrafficSampleStore, metrics: SidecarMetrics, *, rate: float, queue_size: int = 4096,
                 seed: int | None = None, linger_s: float = 0.5) -> None:
        self.store = store
        self.linger_s = linger_s
        self.metrics = metrics
        self.rate = rate
        self._random = random.Random(seed)
        self._queue: queue.Queue[TrafficSample | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="traffic-samples", daemon=True)
        self._keys: dict[tuple[int, int], FeatureKey] = {}
        self._queued = 0
        self._done = 0
        self.last_error: str | None = None

    def start(self) -> TrafficSampler:
        if not self._thread.is_alive():
            self._thread.start()
        return self

    # ------------------------------------------------------------------ worker thread
    def offer(self, finished: FinishedRequests) -> None:
        """Keep each of ``finished`` with probability ``rate`` (called by the scoring worker)."""
        draw = self._random.random
        picked = [i for i in range(len(finished.slots)) if draw() < self.rate]
        if not picked:
            return
        g, table, now = finished.generation, finished.generation.table, time.time()
        scores, alerted = finished.scores.tolist(), finished.alerted.tolist()
        for i in picked:
            slot = finished.slots[i]
            prompt, response = table.role_counts(slot)
            features = table.all_features(slot)
            detectors = []
            for d, spec in enumerate(g.specs):
                score = scores[i][d]
                if math.isnan(score):
                    continue  # the detector's span had no tokens: it was not scored on this request
                key = self._keys.get((g.number, d))
                if key is None:
                    key = self._keys[(g.number, d)] = FeatureKey.of(spec)
                detectors.append(DetectorSample(key, features[d], score, bool(alerted[i][d])))
            sample = TrafficSample(time=now, request_id=finished.request_ids[i], n_tokens=prompt + response,
                                   n_prompt_tokens=prompt, n_response_tokens=response, n_turns=table.turns(slot),
                                   detectors=detectors)
            try:
                self._queue.put_nowait(sample)
                self._queued += 1
            except queue.Full:
                self.metrics.samples_dropped.labels("queue_full").inc()

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stop = [first], False
            deadline = time.monotonic() + self.linger_s  # one transaction per linger: fewer commits, less CPU
            while len(group) < _MAX_GROUP:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            try:
                evicted = self.store.append_many(group)
                self.metrics.samples_recorded.inc(len(group))
                if evicted:
                    self.metrics.samples_dropped.labels("store_full").inc(evicted)
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - disk full, locked: samples are best effort
                self.metrics.samples_dropped.labels("write_failed").inc(len(group))
                if self.last_error is None:
                    log.error("traffic samples could not be written (dropped and counted): %s", exc)
                self.last_error = f"{type(exc).__name__}: {exc}"
            self._done += len(group)
            if stop:
                return

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued sample has been written (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._done >= self._queued:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (within ``timeout_s``) and stop."""
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout_s)
            except queue.Full:
                pass
            self._thread.join(timeout_s)
        self.store.close()
