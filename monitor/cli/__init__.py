"""The ``safety-monitor`` command line: ``commands`` (parser, SAE, sidecar, demo), ``detector_jobs``
(calibrate, eval, causal check), ``feature_toolkit`` (sae index, features, steer), ``common`` (shared)."""

from monitor.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
