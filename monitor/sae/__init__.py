"""The frozen SAE: its config and canonical tensors (``config``), the file formats it is read from and
written to (``formats``), and the inference-only encoder the sidecar runs (``frozen``). Imports point one
way: config <- formats <- frozen."""

from monitor.sae.config import ARCHITECTURES, NORMALIZATIONS, SAEConfig, SAELoadError, weights_sha256
from monitor.sae.frozen import FrozenSAE

__all__ = ["ARCHITECTURES", "NORMALIZATIONS", "FrozenSAE", "SAEConfig", "SAELoadError", "weights_sha256"]
