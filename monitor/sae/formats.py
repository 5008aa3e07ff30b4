"""Readers for the SAE formats in the wild, and the writer of our own (the SAELens layout).

Each reader returns ``(SAEConfig, canonical weights)`` (see ``monitor.sae``); ``read_sae`` picks one from
the files present:

========================  ============================================  ===========================
format                    files                                         b_dec subtracted on input
========================  ============================================  ===========================
SAELens (ours)            ``cfg.json`` + ``sae_weights.safetensors``    ``apply_b_dec_to_input``
sparsify                  ``cfg.json`` + ``sae.safetensors``            always
Gemma Scope               ``params.npz``                                never
dictionary_learning       ``ae.pt`` + ``config.json``                   always (JumpReLU: per config)
========================  ============================================  ===========================
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from monitor.sae.config import SAEConfig, SAELoadError, check_weights

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CFG = "cfg.json"


def detect_format(path: Path) -> tuple[str, Path]:
    """``(format name, directory)`` for an SAE directory or one of its files."""
    if not path.exists():
        raise SAELoadError(f"SAE path {path} does not exist")
    d = path if path.is_dir() else path.parent
    if (d / SAELENS_WEIGHTS).is_file() and (d / SAELENS_CFG).is_file():
        return "saelens", d
    if (d / "sae.safetensors").is_file() and (d / "cfg.json").is_file():
        return "sparsify", d
    if (d / "params.npz").is_file():
        return "gemmascope", d
    if (d / "ae.pt").is_file() and (d / "config.json").is_file():
        return "dictionary_learning", d
    raise SAELoadError(
        f"no SAE found at {path}: expected cfg.json + sae_weights.safetensors (SAELens), cfg.json + "
        "sae.safetensors (sparsify), params.npz (Gemma Scope) or ae.pt + config.json (dictionary_learning)"
    )


def read_sae(path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    fmt, d = detect_format(path)
    reader = {"saelens": read_saelens, "sparsify": read_sparsify, "gemmascope": read_gemmascope,
              "dictionary_learning": read_dictionary_learning}[fmt]
    try:
        return reader(d)
    except SAELoadError:
        raise
    except Exception as exc:  # corrupt files raise SafetensorError, UnpicklingError, BadZipFile, ...
        raise SAELoadError(f"could not read the {fmt} SAE at {d}: {type(exc).__name__}: {exc}") from exc


def _read_json(p: Path) -> dict:
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise SAELoadError(f"{p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SAELoadError(f"{p} must hold a JSON object")
    return data


def _shape_of(weights: dict[str, torch.Tensor]) -> tuple[int, int]:
    if "W_enc" not in weights or weights["W_enc"].ndim != 2:
        raise SAELoadError("the weights have no 2-D encoder matrix")
    d_in, d_sae = weights["W_enc"].shape
    return int(d_in), int(d_sae)


# --------------------------------------------------------------------------- SAELens (our format)
_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk",
                 "batchtopk": "batchtopk", "gated": "gated"}


def read_saelens(d: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """SAELens ≥ 6 (nested ``metadata``) and the older flat cfg (``activation_fn_str`` …)."""
    raw = _read_json(d / SAELENS_CFG)
    weights = load_file(str(d / SAELENS_WEIGHTS))
    arch = _saelens_architecture(raw)
    if "log_threshold" in weights:
        weights["threshold"] = weights.pop("log_threshold").exp()
    if arch == "gated" and "b_gate" in weights:
        weights["b_enc"] = weights.pop("b_gate")
    return _saelens_config(raw, arch, weights, d), weights


def _saelens_architecture(raw: dict) -> str:
    arch_name = raw.get("architecture", "standard")
    if arch_name not in _SAELENS_ARCH:
        raise SAELoadError(f"SAELens architecture {arch_name!r} is not supported ({', '.join(_SAELENS_ARCH)})")
    arch = _SAELENS_ARCH[arch_name]
    if raw.get("activation_fn_str") == "topk" and arch == "relu":
        arch = "topk"
    return arch


def _saelens_config(raw: dict, arch: str, weights: dict[str, torch.Tensor], d: Path) -> SAEConfig:
    """The config of a SAELens SAE from ``cfg.json`` and its canonical tensors (only shapes are read)."""
    k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    norm = raw.get("normalize_activations") or "none"
    scale = float(raw.get("activation_scale", 1.0))
    if norm == "expected_average_only_in" and "activation_scale" not in raw:
        raise SAELoadError(
            "this SAE normalises inputs by an expected-average norm that its cfg.json does not record; "
            "fold the scaling factor into the weights (SAELens: fold_activation_norm_scaling_factor) first"
        )
    if norm == "expected_average_only_in":
        norm = "scale"
    d_in, d_sae = _shape_of(weights)
    cfg = SAEConfig(
        d_in=int(raw.get("d_in", d_in)), d_sae=int(raw.get("d_sae", d_sae)), architecture=arch,
        k=int(k) if k is not None else None,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", False)),
        normalize_activations=norm, activation_scale=scale,
        model_name=str(meta.get("model_name", raw.get("model_name", ""))),
        hook_name=str(meta.get("hook_name", raw.get("hook_name", ""))),
        source_format="saelens",
        metadata={k_: v for k_, v in meta.items() if k_ not in ("model_name", "hook_name")},
    )
    if arch == "topk" and cfg.k is None:
        raise SAELoadError(f"{d / SAELENS_CFG}: a topk SAE needs k (\"k\" or activation_fn_kwargs.k)")
    return cfg


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_PER_LATENT = ("b_enc", "threshold", "r_mag", "b_mag")
_CHUNK_BYTES = 16 << 20


def read_saelens_slice(d: Path, latents: Sequence[int]) -> tuple[SAEConfig, dict[str, torch.Tensor], str] | None:
    """A SAELens SAE holding only the encoder columns ``latents`` (sorted ascending), read in one streaming
    pass over ``sae_weights.safetensors`` that also computes the sha256 of the whole SAE (the same value
    ``weights_sha256`` gives the fully loaded weights): ``(cfg, weights, sha256)``.

    ``weights``: ``W_enc [d_in, |S|]``, ``b_dec [d_in]`` and the per-latent tensors (``b_enc``, ``threshold``,
    ``r_mag``, ``b_mag``) at ``latents``; no decoder. The file is read in chunks of whole ``W_enc`` rows
    (16 MB), so memory stays at the slice plus one chunk however large the dictionary. None for TopK,
    which needs every column (load it whole)."""
    raw = _read_json(d / SAELENS_CFG)
    arch = _saelens_architecture(raw)
    path = d / SAELENS_WEIGHTS
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SAELoadError(f"{path} is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > 100 << 20:
            raise SAELoadError(f"{path}: safetensors header of {n} bytes is implausible (corrupt file?)")
        header = json.loads(f.read(n))
    base = 8 + n
    header.pop("__metadata__", None)
    source = {name: name for name in header}  # canonical name -> name in the file
    if "log_threshold" in source:
        source["threshold"] = source.pop("log_threshold")
    if arch == "gated" and "b_gate" in source:
        source["b_enc"] = source.pop("b_gate")
    try:
        dtypes = {c: _ST_DTYPES[header[src]["dtype"]] for c, src in source.items()}
    except KeyError as exc:
        raise SAELoadError(f"{path}: tensor dtype {exc} is not a float type an SAE can hold") from None
    shapes = {c: tuple(header[src]["shape"]) for c, src in source.items()}
    shaped = {c: torch.empty(shapes[c], dtype=dtypes[c], device="meta") for c in source}
    cfg = _saelens_config(raw, arch, shaped, d)
    check_weights(cfg, shaped)
    if cfg.architecture == "topk":
        return None
    idx = torch.tensor(sorted({int(i) for i in latents}), dtype=torch.long)
    if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= cfg.d_sae):
        raise SAELoadError(f"latents must lie in [0, {cfg.d_sae}) for this SAE, got {int(idx[0])}..{int(idx[-1])}")
    h = hashlib.sha256()
    h.update(json.dumps(cfg.encoding_fields(), sort_keys=True).encode())
    out: dict[str, torch.Tensor] = {}
    with path.open("rb", buffering=0) as f:
        for name in sorted(source):  # the order weights_sha256 hashes in
            dtype, shape = dtypes[name], shapes[name]
            begin, end = header[source[name]]["data_offsets"]
            h.update(f"\0{name}\0{dtype}\0{list(shape)}\0".encode())
            f.seek(base + begin)
            if name in ("W_enc", "W_dec"):
                cols = _stream_rows(f, end - begin, shape, dtype, h, idx if name == "W_enc" else None)
                if cols is not None:
                    out[name] = cols
                continue
            t = _read_exact(f, end - begin, path, dtype, shape)
            if name == "threshold" and source[name] == "log_threshold":
                t = t.exp()  # the canonical tensor is what gets hashed, as in read_saelens
            h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
            out[name] = t[idx].clone() if name in _PER_LATENT and t.ndim == 1 else t
    return cfg, out, h.hexdigest()


def _read_exact(f, nbytes: int, path: Path, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    buf = bytearray(nbytes)
    if f.readinto(buf) != nbytes:
        raise SAELoadError(f"{path} is truncated")
    return torch.frombuffer(buf, dtype=dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)


def _stream_rows(f, nbytes: int, shape: tuple[int, ...], dtype: torch.dtype, h, cols: torch.Tensor | None
                 ) -> torch.Tensor | None:
    """Hash a 2-D tensor's bytes in chunks of whole rows; with ``cols``, keep those columns ``[rows, |cols|]``."""
    n_rows, width = shape
    row_bytes = width * dtype.itemsize
    per_chunk = max(1, _CHUNK_BYTES // max(row_bytes, 1))
    buf = bytearray(min(per_chunk, max(n_rows, 1)) * row_bytes)
    view = memoryview(buf)
    kept = []
    done = 0
    while done < n_rows:
        rows = min(per_chunk, n_rows - done)
        part = view[: rows * row_bytes]
        if f.readinto(part) != len(part):
            raise SAELoadError(f"{f.name} is truncated")
        h.update(part)
        if cols is not None:
            kept.append(torch.frombuffer(part, dtype=dtype).view(rows, width).index_select(1, cols))
        done += rows
    if cols is None:
        return None
    return torch.cat(kept) if kept else torch.empty(0, cols.numel(), dtype=dtype)


def write_saelens(d: Path, cfg: SAEConfig, weights: dict[str, torch.Tensor]) -> Path:
    """Write ``cfg.json`` (SAELens ≥ 6 layout, nested ``metadata``) and ``sae_weights.safetensors``."""
    d.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.detach().cpu().contiguous() for n, t in weights.items()}
    raw = {
        "architecture": "standard" if cfg.architecture == "relu" else cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": str(tensors["W_enc"].dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "expected_average_only_in" if cfg.normalize_activations == "scale"
        else cfg.normalize_activations,
        "reshape_activations": "none",
        "metadata": {**cfg.metadata, "model_name": cfg.model_name, "hook_name": cfg.hook_name},
    }
    if cfg.normalize_activations == "scale":
        raw["activation_scale"] = cfg.activation_scale
    if cfg.k is not None:
        raw["k"] = cfg.k
    save_file(tensors, str(d / SAELENS_WEIGHTS))
    (d / SAELENS_CFG).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return d


# --------------------------------------------------------------------------- sparsify
def read_sparsify(d: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """EleutherAI sparsify: TopK over relu(encoder(x - b_dec)); encoder.weight is ``[d_sae, d_in]``."""
    raw = _read_json(d / "cfg.json")
    st = load_file(str(d / "sae.safetensors"))
    if raw.get("activation", "topk") != "topk":
        raise SAELoadError(f"sparsify activation {raw.get('activation')!r} is not supported (only topk)")
    if raw.get("transcode") or raw.get("skip_connection") or "W_skip" in st:
        raise SAELoadError("sparsify transcoders / skip connections are not SAEs of one hook point; not supported")
    w_dec = st["W_dec"]
    weights = {"W_enc": st["encoder.weight"].T.contiguous(), "b_enc": st["encoder.bias"], "W_dec": w_dec,
               "b_dec": st["b_dec"]}
    d_in, d_sae = _shape_of(weights)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=int(raw["k"]), apply_b_dec_to_input=True,
                    source_format="sparsify", hook_name=str(raw.get("hookpoint", "")),
                    metadata={k: v for k, v in raw.items() if k != "k"})
    return cfg, weights


# --------------------------------------------------------------------------- Gemma Scope
def read_gemmascope(d: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """Gemma Scope ``params.npz``: JumpReLU, ``W_enc [d_in, d_sae]``, no ``b_dec`` subtraction."""
    import numpy as np

    with np.load(d / "params.npz") as npz:
        weights = {n: torch.from_numpy(np.array(npz[n])) for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    d_in, d_sae = _shape_of(weights)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu", apply_b_dec_to_input=False,
                    source_format="gemmascope")
    return cfg, weights


# --------------------------------------------------------------------------- dictionary_learning
def read_dictionary_learning(d: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """saprmarks/dictionary_learning ``ae.pt`` (a state dict) + ``config.json`` (``trainer.dict_class``)."""
    raw = _read_json(d / "config.json")
    trainer = raw.get("trainer", raw)
    cls = trainer.get("dict_class", "AutoEncoder")
    sd = torch.load(d / "ae.pt", map_location="cpu", weights_only=True)
    common = {"source_format": "dictionary_learning", "model_name": str(trainer.get("lm_name", "")),
                  "hook_name": str(trainer.get("submodule_name", ""))}
    k = None
    threshold = None
    if cls == "AutoEncoder":
        arch = "relu"
        w = {"W_enc": sd["encoder.weight"].T, "b_enc": sd["encoder.bias"], "W_dec": sd["decoder.weight"].T,
             "b_dec": sd["bias"]}
    elif cls == "GatedAutoEncoder":
        arch = "gated"
        w = {"W_enc": sd["encoder.weight"].T, "b_enc": sd["gate_bias"], "W_dec": sd["decoder.weight"].T,
             "b_dec": sd["decoder_bias"], "r_mag": sd["r_mag"], "b_mag": sd["mag_bias"]}
    elif cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        w = {"W_enc": sd["encoder.weight"].T, "b_enc": sd["encoder.bias"], "W_dec": sd["decoder.weight"].T,
             "b_dec": sd["b_dec"]}
        k = int(sd["k"]) if "k" in sd else int(trainer["k"])
        if cls == "BatchTopKSAE":
            arch = "batchtopk"
            threshold = sd["threshold"].reshape(())
            if float(threshold) < 0:
                raise SAELoadError("BatchTopKSAE threshold is negative (never set during training); cannot encode")
        else:
            arch = "topk"
    elif cls == "JumpReluAutoEncoder":
        arch = "jumprelu"
        w = {"W_enc": sd["W_enc"], "b_enc": sd["b_enc"], "W_dec": sd["W_dec"], "b_dec": sd["b_dec"]}
        threshold = sd["threshold"]
        cfg_apply = bool(trainer.get("apply_b_dec_to_input", False))
    else:
        raise SAELoadError(f"dictionary_learning dict_class {cls!r} is not supported")
    if threshold is not None:
        w["threshold"] = threshold
    w = {n: t.contiguous() for n, t in w.items()}
    d_in, d_sae = _shape_of(w)
    apply = cfg_apply if cls == "JumpReluAutoEncoder" else True
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k, apply_b_dec_to_input=apply, **common)
    return cfg, w
