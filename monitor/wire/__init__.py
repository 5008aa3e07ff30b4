"""The activation wire format (``batch``: one batch of tapped activations or SAE latents as safetensors
bytes) and the merging and splitting of batches on the sender's side (``merge``)."""

from monitor.wire.batch import (
    ROLE_PROMPT,
    ROLE_RESPONSE,
    SCHEMA,
    SCHEMA_V1,
    ActivationBatch,
    WireFormatError,
    WireLimits,
)

__all__ = ["ROLE_PROMPT", "ROLE_RESPONSE", "SCHEMA", "SCHEMA_V1", "ActivationBatch", "WireFormatError", "WireLimits"]
