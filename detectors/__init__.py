"""Detectors over SAE latents. What the sidecar runs: ``spans`` (token roles and spans), ``spec`` (the
detector spec and its scoring rule), ``scoring`` (streamed per-request scores). The offline jobs that make
specs live in ``detectors.calibration``. No HTTP, Kafka or Redis here, and nothing from ``monitor``."""
