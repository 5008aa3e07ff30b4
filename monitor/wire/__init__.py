"""The activation wire format (``batch``: one batch of tapped tokens as safetensors bytes) and the merging
and splitting of batches on the sender's side (``merge``)."""

from monitor.wire.batch import (
    ROLE_PROMPT,
    ROLE_RESPONSE,
    SCHEMA,
    ActivationBatch,
    WireFormatError,
    WireLimits,
)

__all__ = ["ROLE_PROMPT", "ROLE_RESPONSE", "SCHEMA", "ActivationBatch", "WireFormatError", "WireLimits"]
