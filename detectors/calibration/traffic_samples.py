"""Traffic samples: what recalibration on a deployment's own traffic needs, and nothing more.

For a random share of finished requests the sidecar records, per detector, the aggregated latent
features its score is computed from (``f`` in ``score = bias + w . f``, in spec order), the score and
whether it alerted; per request its token count (prompt and response), its turn count (role runs) and
when it finished. No text and no token ids: a sample cannot be turned back into what was said. The
request id (the gateway's opaque id) is kept so a person can confirm an alert (``label``).

The store is one SQLite file (WAL; in Kubernetes on the outbox volume), bounded by ``max_rows``
samples: the oldest are deleted to make room, and counted (``dropped_total``)::

    meta       key -> value: schema, created_at, recorded_total, dropped_total
    detectors  id, name, version, sae_sha256, latents (JSON), aggregation, span, window
               (a feature vector is only meaningful for the same latents, aggregation, span and window)
    samples    id, time (unix s), request_id, n_tokens, n_prompt_tokens, n_response_tokens, n_turns
    features   sample_id, detector_id, features (float32 bytes, [k]), score, alerted
    labels     request_id, detector, label ('true_positive'), labelled_at

``export`` writes the same as JSON lines (a header line with the detectors, then one line per sample,
labels joined in), the portable form ``calibrate --thresholds-from`` reads (it also reads a store).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detectors.spec import DetectorSpec

SCHEMA = "safety-monitor.traffic-samples/v1"
TRUE_POSITIVE = "true_positive"

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS detectors (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL, sae_sha256 TEXT NOT NULL,
    latents TEXT NOT NULL, aggregation TEXT NOT NULL, span TEXT NOT NULL, window_tokens INTEGER NOT NULL,
    UNIQUE (name, version, sae_sha256, latents, aggregation, span, window_tokens));
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, request_id TEXT NOT NULL,
    n_tokens INTEGER NOT NULL, n_prompt_tokens INTEGER NOT NULL, n_response_tokens INTEGER NOT NULL,
    n_turns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS samples_request ON samples (request_id);
CREATE TABLE IF NOT EXISTS features (
    sample_id INTEGER NOT NULL REFERENCES samples (id) ON DELETE CASCADE, detector_id INTEGER NOT NULL,
    features BLOB NOT NULL, score REAL NOT NULL, alerted INTEGER NOT NULL, PRIMARY KEY (sample_id, detector_id));
CREATE TABLE IF NOT EXISTS labels (
    request_id TEXT NOT NULL, detector TEXT NOT NULL, label TEXT NOT NULL, labelled_at REAL NOT NULL,
    PRIMARY KEY (request_id, detector));
"""


class SamplesError(ValueError):
    """A samples file that cannot be read, or a label that cannot be applied; the message says why."""


@dataclass(frozen=True)
class FeatureKey:
    """What makes two detectors' feature vectors comparable."""

    name: str
    version: str
    sae_sha256: str
    latents: tuple[int, ...]
    aggregation: str
    span: str
    window: int

    @classmethod
    def of(cls, spec: DetectorSpec) -> FeatureKey:
        return cls(spec.name, spec.version, spec.sae_sha256, tuple(spec.latents), spec.aggregation, spec.span,
                   spec.window)

    def same_features(self, spec: DetectorSpec) -> bool:
        """Whether ``spec`` reads the same features (any version): same SAE, latents, aggregation, span, window."""
        return (self.sae_sha256, self.latents, self.aggregation, self.span, self.window) == (
            spec.sae_sha256, tuple(spec.latents), spec.aggregation, spec.span, spec.window)

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "sae_sha256": self.sae_sha256,
                "latents": list(self.latents), "aggregation": self.aggregation, "span": self.span,
                "window": self.window}


@dataclass
class DetectorSample:
    """One detector on one sampled request."""

    key: FeatureKey
    features: np.ndarray
    """``[k]`` float32, in the order of ``key.latents``."""
    score: float
    alerted: bool


@dataclass
class TrafficSample:
    """One sampled finished request: numbers only."""

    time: float
    """Unix seconds when it finished."""
    request_id: str
    n_tokens: int
    n_prompt_tokens: int
    n_response_tokens: int
    n_turns: int
    """Role runs: 2 for a user turn and a reply (``detectors.traffic_slices`` counts messages the same way)."""
    detectors: list[DetectorSample] = field(default_factory=list)
    """The detectors whose span had tokens."""
    confirmed: set[str] = field(default_factory=set)
    """Detectors whose alert on this request a person confirmed (``label``); filled when read back."""


@dataclass(frozen=True)
class StoreStats:
    rows: int
    recorded_total: int
    dropped_total: int
    """Samples deleted (oldest first) to keep the store within ``max_rows``."""


class TrafficSampleStore:
    """The bounded SQLite store. One writer thread in the sidecar; ``label`` may run in another process."""

    def __init__(self, path: str | Path, max_rows: int = 50_000) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_DDL)
        found = self._meta("schema")
        if found is None:
            with self._tx():
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('created_at', ?), "
                                 "('recorded_total', '0'), ('dropped_total', '0')", (SCHEMA, str(time.time())))
        elif found != SCHEMA:
            raise SamplesError(f"{path} holds {found!r}, not {SCHEMA!r} traffic samples")
        self._detector_ids: dict[FeatureKey, int] = {}
        self._rows = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        """Samples stored (kept here: a COUNT(*) per write would scan the table)."""

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _tx(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def _detector_id(self, key: FeatureKey) -> int:
        found = self._detector_ids.get(key)
        if found is not None:
            return found
        values = (key.name, key.version, key.sae_sha256, json.dumps(list(key.latents)), key.aggregation, key.span,
                  key.window)
        self._db.execute("INSERT OR IGNORE INTO detectors (name, version, sae_sha256, latents, aggregation, span, "
                         "window_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)", values)
        row = self._db.execute("SELECT id FROM detectors WHERE name = ? AND version = ? AND sae_sha256 = ? AND "
                               "latents = ? AND aggregation = ? AND span = ? AND window_tokens = ?", values).fetchone()
        self._detector_ids[key] = row[0]
        return row[0]

    def append_many(self, samples: Sequence[TrafficSample]) -> int:
        """Store samples in one transaction, deleting the oldest beyond ``max_rows``; returns how many were deleted."""
        if not samples:
            return 0
        with self._tx():
            for s in samples:
                cur = self._db.execute(
                    "INSERT INTO samples (time, request_id, n_tokens, n_prompt_tokens, n_response_tokens, n_turns) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (s.time, s.request_id, s.n_tokens, s.n_prompt_tokens, s.n_response_tokens, s.n_turns))
                sid = cur.lastrowid
                self._db.executemany(
                    "INSERT INTO features VALUES (?, ?, ?, ?, ?)",
                    [(sid, self._detector_id(d.key), np.asarray(d.features, dtype="<f4").tobytes(), float(d.score),
                      int(d.alerted)) for d in s.detectors])
            excess = max(0, self._rows + len(samples) - self.max_rows)
            if excess:
                cut = self._db.execute("SELECT id FROM samples ORDER BY id LIMIT 1 OFFSET ?", (excess,)).fetchone()[0]
                self._db.execute("DELETE FROM features WHERE sample_id < ?", (cut,))
                self._db.execute("DELETE FROM samples WHERE id < ?", (cut,))
            self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'recorded_total'",
                             (len(samples),))
            if excess:
                self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'dropped_total'",
                                 (excess,))
        self._rows += len(samples) - excess
        return excess

    def stats(self) -> StoreStats:
        rows = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        return StoreStats(rows=rows, recorded_total=int(self._meta("recorded_total") or 0),
                          dropped_total=int(self._meta("dropped_total") or 0))

    def label(self, request_ids: Iterable[str], detector: str | None = None, label: str = TRUE_POSITIVE
              ) -> dict[str, list[str]]:
        """Mark the alerts on ``request_ids`` as confirmed by a person (``detector``: only that detector's, else
        every detector that alerted on the request). Returns request id -> detectors labelled. Raises
        ``SamplesError`` (nothing labelled) for a request that is not in the store or did not alert."""
        ids = list(dict.fromkeys(request_ids))
        found: dict[str, list[str]] = {}
        problems = []
        for rid in ids:
            rows = self._db.execute(
                "SELECT DISTINCT d.name FROM samples s JOIN features f ON f.sample_id = s.id JOIN detectors d "
                "ON d.id = f.detector_id WHERE s.request_id = ? AND f.alerted = 1", (rid,)).fetchall()
            known = self._db.execute("SELECT 1 FROM samples WHERE request_id = ?", (rid,)).fetchone()
            names = sorted(r[0] for r in rows if detector is None or r[0] == detector)
            if known is None:
                problems.append(f"{rid}: not in the samples (only a sampled share of requests is recorded)")
            elif not names:
                problems.append(f"{rid}: {'detector ' + repr(detector) if detector else 'no detector'} alerted on it"
                                "; only alerts can be confirmed (every other sample already counts as benign)")
            else:
                found[rid] = names
        if problems:
            raise SamplesError("nothing labelled:\n  " + "\n  ".join(problems))
        with self._tx():
            self._db.executemany("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?)",
                                 [(rid, name, label, time.time()) for rid, names in found.items() for name in names])
        return found

    def close(self) -> None:
        self._db.close()


# ---------------------------------------------------------------------------------- reading
@dataclass
class SampleSet:
    """Samples read back from a store or an export."""

    samples: list[TrafficSample]
    sha256: str
    """Of the file as read: what a recalibration's record names."""
    source: str
    dropped_total: int = 0


def _read_store(path: Path) -> tuple[list[dict], list[dict], dict[tuple[str, str], str], dict]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema") != SCHEMA:
            raise SamplesError(f"{path} holds {meta.get('schema')!r}, not {SCHEMA!r} traffic samples")
        dets = [{"id": r[0], "name": r[1], "version": r[2], "sae_sha256": r[3], "latents": json.loads(r[4]),
                 "aggregation": r[5], "span": r[6], "window": r[7]}
                for r in db.execute("SELECT id, name, version, sae_sha256, latents, aggregation, span, window_tokens "
                                    "FROM detectors")]
        labels = {(r[0], r[1]): r[2] for r in db.execute("SELECT request_id, detector, label FROM labels")}
        rows: dict[int, dict] = {}
        for r in db.execute("SELECT id, time, request_id, n_tokens, n_prompt_tokens, n_response_tokens, n_turns "
                            "FROM samples ORDER BY id"):
            rows[r[0]] = {"time": r[1], "request_id": r[2], "n_tokens": r[3], "n_prompt_tokens": r[4],
                          "n_response_tokens": r[5], "n_turns": r[6], "detectors": []}
        for sid, did, blob, score, alerted in db.execute("SELECT sample_id, detector_id, features, score, alerted "
                                                         "FROM features ORDER BY sample_id"):
            if sid in rows:
                rows[sid]["detectors"].append({"id": did, "features": np.frombuffer(blob, dtype="<f4").tolist(),
                                               "score": score, "alerted": bool(alerted)})
    finally:
        db.close()
    return dets, list(rows.values()), labels, meta


def export_samples(store: str | Path, out: str | Path) -> dict:
    """Write the store as JSON lines (gzip when ``out`` ends in ``.gz``): a header, then one line per sample
    with its labels joined in. Returns the header plus ``samples`` (the count)."""
    store = Path(store)
    if not store.is_file():
        raise SamplesError(f"{store} does not exist (is samples.enabled on in the sidecar?)")
    dets, rows, labels, meta = _read_store(store)
    names = {d["id"]: d["name"] for d in dets}
    header = {"schema": SCHEMA, "exported_at": time.time(), "source": str(store), "detectors": dets,
              "recorded_total": int(meta.get("recorded_total", 0)), "dropped_total": int(meta.get("dropped_total", 0))}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if out.suffix == ".gz" else open
    with opener(out, "wt", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for r in rows:
            r["confirmed"] = sorted(names[d["id"]] for d in r["detectors"]
                                    if labels.get((r["request_id"], names[d["id"]])) == TRUE_POSITIVE)
            f.write(json.dumps(r) + "\n")
    return {**header, "samples": len(rows)}


def read_samples(path: str | Path) -> SampleSet:
    """Samples from a store (SQLite) or an export (JSON lines, optionally gzip). Raises ``SamplesError``."""
    path = Path(path)
    if not path.is_file():
        raise SamplesError(f"{path} does not exist")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if raw.startswith(b"SQLite format 3\x00"):
        dets, rows, labels, meta = _read_store(path)
        names = {d["id"]: d["name"] for d in dets}
        for r in rows:
            r["confirmed"] = [names[d["id"]] for d in r["detectors"]
                              if labels.get((r["request_id"], names[d["id"]])) == TRUE_POSITIVE]
        dropped = int(meta.get("dropped_total", 0))
    else:
        text = gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        if not lines or lines[0].get("schema") != SCHEMA:
            raise SamplesError(f"{path} is neither a traffic-samples store nor an export of one ({SCHEMA})")
        dets, rows, dropped = lines[0]["detectors"], lines[1:], int(lines[0].get("dropped_total", 0))
    keys = {d["id"]: FeatureKey(d["name"], d["version"], d["sae_sha256"], tuple(d["latents"]), d["aggregation"],
                                d["span"], d["window"]) for d in dets}
    samples = [TrafficSample(
        time=r["time"], request_id=r["request_id"], n_tokens=r["n_tokens"], n_prompt_tokens=r["n_prompt_tokens"],
        n_response_tokens=r["n_response_tokens"], n_turns=r["n_turns"],
        detectors=[DetectorSample(keys[d["id"]], np.asarray(d["features"], dtype=np.float32), d["score"], d["alerted"])
                   for d in r["detectors"]],
        confirmed=set(r.get("confirmed", ()))) for r in rows]
    return SampleSet(samples, digest, str(path), dropped)
