"""Local alert sinks that need no server: a console line and an append-only JSONL file."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Protocol, TextIO

from alerts.schema import Alert


class AlertSink(Protocol):
    """Something that receives every emitted alert, synchronously and cheaply."""

    def write(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


def format_alert(alert: Alert) -> str:
    """One human-readable line: time, severity, detector, score vs threshold, request, span, top latents."""
    span = alert.token_span
    latents = " ".join(
        f"#{la.latent}" + (f"({la.label})" if la.label else "") + f"={la.activation:.3g}"
        for la in alert.top_latents[:3]
    )
    peak = f" peak {span.peak}" if span.peak is not None else ""
    text = f" {alert.snippet!r}" if alert.snippet else ""
    return (
        f"{alert.time.strftime('%Y-%m-%dT%H:%M:%S')}Z {alert.severity.value.upper():<8} "
        f"{alert.detector} v{alert.detector_version} score {alert.score:.4g} >= {alert.threshold:.4g} "
        f"model={alert.model} request={alert.request_id} tokens[{span.start}:{span.end}]{peak}"
        + (f" latents {latents}" if latents else "")
        + text
    )


class ConsoleSink:
    """Prints one line per alert (or its JSON with ``as_json``) to ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, *, as_json: bool = False) -> None:
        self._stream = stream
        self._as_json = as_json
        self._lock = threading.Lock()

    def write(self, alert: Alert) -> None:
        line = alert.to_json().decode() if self._as_json else format_alert(alert)
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def close(self) -> None:
        pass


class JsonlSink:
    """Appends each alert's wire JSON as one line to ``path``.

    Each line is written with a single ``write`` on a file opened in append mode, so
    concurrent writers never interleave inside a line. ``fsync=True`` makes each line
    durable before ``write`` returns (slower; the outbox is the durable record when Kafka
    is on).
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fsync = fsync
        self._lock = threading.Lock()

    def write(self, alert: Alert) -> None:
        data = alert.to_json() + b"\n"
        with self._lock:
            os.write(self._fd, data)
            if self._fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
