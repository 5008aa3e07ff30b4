"""``FrozenSAE``: an inference-only sparse autoencoder, pinned by the sha256 of its weights.

All formats load into one canonical set of tensors (``monitor.sae.config``).

Encoding, with ``x' = x * scale`` (activation normalisation) and ``pre = (x' - b_dec·[apply_b_dec]) @ W_enc + b_enc``:

    relu       relu(pre)
    jumprelu   relu(pre) * (pre > threshold)
    batchtopk  relu(pre) * (relu(pre) > threshold)        (global threshold, as at inference)
    topk       the k largest of relu(pre), others 0
    gated      (pre > 0) * relu(proj * exp(r_mag) + b_mag), proj = (x' - b_dec) @ W_enc

Subtracting ``b_dec`` is folded into the encoder bias once at load (``x @ W - b_dec @ W``), so the dense
and the sliced paths evaluate the same formula. For every architecture but TopK a latent depends only
on its own encoder column, so ``encode_latents`` computes just the requested columns, exactly.

``FrozenSAE.load(path, latents=S)`` keeps only those encoder columns (and no decoder): a 131k-latent SAE
monitoring 64 latents then holds 64 columns in memory, not two 131k x d_in matrices. From our own
(SAELens) format only the slice is read into memory, in a streaming pass that also hashes the whole file,
so the sha256 pin is the same as for the full SAE; other formats are read whole, hashed, then sliced.
Such an SAE encodes only its latents (``encode_latents``); ``encode``, ``decode`` and ``save`` refuse.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path

import torch

from monitor.sae.config import SAEConfig, SAELoadError, check_weights, weights_sha256
from monitor.sae.formats import detect_format, read_sae, read_saelens_slice, write_saelens


class FrozenSAE:
    """A loaded, immutable SAE. Build with ``FrozenSAE.load(path)`` or ``FrozenSAE(cfg, weights)``."""

    def __init__(self, cfg: SAEConfig, weights: dict[str, torch.Tensor], *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, loaded_latents: tuple[int, ...] | None = None,
                 sha256: str | None = None) -> None:
        """``weights``: canonical tensors (see module docstring). ``dtype``: compute dtype (default
        float32 on CPU, the stored dtype elsewhere). ``loaded_latents`` (ascending) and ``sha256``: the
        weights are the slice of these latents (``W_enc [d_in, |S|]``, ``b_dec`` and the per-latent
        tensors at ``S``) of the SAE whose sha256 is given; ``FrozenSAE.load(..., latents=...)`` makes them."""
        self.cfg = cfg
        self.loaded_latents = loaded_latents
        """None: every latent is held; else only these (ascending), and only ``encode_latents`` works."""
        if loaded_latents is None:
            check_weights(cfg, weights)
            self.sha256 = weights_sha256(weights, cfg)
        else:
            if sha256 is None:
                raise ValueError("a sliced SAE needs the sha256 of the whole SAE it was sliced from")
            _check_slice(cfg, weights, loaded_latents)
            self.sha256 = sha256
        self._columns = None if loaded_latents is None else {lat: j for j, lat in enumerate(loaded_latents)}
        self.device = torch.device(device)
        if dtype is None:
            dtype = torch.float32 if self.device.type == "cpu" else weights["W_enc"].dtype
        self.dtype = dtype
        # save() writes the stored dtypes back by default, so a load/save round trip keeps the sha256.
        self._stored_dtypes = {n: t.dtype for n, t in weights.items()}
        self.weights = {n: t.detach().to(self.device, dtype).contiguous() for n, t in weights.items()}
        w = self.weights
        # Fold "x - b_dec" into the bias: pre = x @ W_enc + (b_enc - b_dec @ W_enc).
        self._b_dec_proj = (_fold_b_dec(w["b_dec"], w["W_enc"], dtype) if cfg.apply_b_dec_to_input
                            else torch.zeros_like(w["b_enc"]))
        self._sliced = lru_cache(maxsize=32)(self._build_slice)

    # ------------------------------------------------------------------ loading and saving
    @staticmethod
    def load(path: str | Path, *, expected_sha256: str | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None, d_model: int | None = None,
             latents: list[int] | tuple[int, ...] | None = None) -> FrozenSAE:
        """Load from a directory (or file) in any supported format, detected from the files present.

        ``expected_sha256``: refuse to load unless the weights hash to this. ``d_model``: refuse unless
        ``d_in`` equals the monitored model's width. ``latents``: keep only these latents' encoder columns
        (see the module docstring; TopK SAEs, which need every column, are loaded whole).
        """
        if latents is not None:
            sae = FrozenSAE._load_slice(Path(path), latents, device=device, dtype=dtype)
        else:
            cfg, weights = read_sae(Path(path))
            sae = FrozenSAE(cfg, weights, device=device, dtype=dtype)
        cfg = sae.cfg
        if expected_sha256 and expected_sha256.lower() != sae.sha256:
            raise SAELoadError(
                f"SAE at {path} has sha256 {sae.sha256}, but {expected_sha256.lower()} was expected. "
                "Point to the SAE the detectors were calibrated for, or update the expected hash."
            )
        if d_model is not None and d_model != cfg.d_in:
            raise SAELoadError(f"SAE at {path} reads d_in={cfg.d_in} but the model has d_model={d_model}")
        return sae

    @staticmethod
    def _load_slice(path: Path, latents, *, device, dtype) -> FrozenSAE:
        wanted = tuple(sorted({int(i) for i in latents}))
        fmt, d = detect_format(path)
        if fmt == "saelens":
            try:
                sliced = read_saelens_slice(d, wanted)
            except SAELoadError:
                raise
            except Exception as exc:  # corrupt files: bad JSON header, short reads, ...
                raise SAELoadError(f"could not read the saelens SAE at {d}: {type(exc).__name__}: {exc}") from exc
            if sliced is not None:
                cfg, weights, sha = sliced
                return FrozenSAE(cfg, weights, device=device, dtype=dtype, loaded_latents=wanted, sha256=sha)
        cfg, weights = read_sae(path)
        full = FrozenSAE(cfg, weights, device=device, dtype=dtype)
        if cfg.architecture == "topk":
            return full  # every column is needed to know which k survive
        if wanted and (wanted[0] < 0 or wanted[-1] >= cfg.d_sae):
            raise SAELoadError(f"latents must lie in [0, {cfg.d_sae}) for the SAE at {path}")
        idx = torch.tensor(wanted, dtype=torch.long)
        part = {"W_enc": weights["W_enc"][:, idx].clone(), "b_dec": weights["b_dec"]}
        for name in ("b_enc", "threshold", "r_mag", "b_mag"):
            if name in weights:
                t = weights[name]
                part[name] = t[idx].clone() if t.ndim == 1 else t
        return FrozenSAE(cfg, part, device=device, dtype=dtype, loaded_latents=wanted, sha256=full.sha256)

    def _require_all_latents(self, what: str) -> None:
        if self.loaded_latents is not None:
            raise RuntimeError(f"{what} needs every latent, but this SAE was loaded with only "
                               f"{len(self.loaded_latents)} of its {self.cfg.d_sae} latents; load it without latents=")

    def save(self, path: str | Path, *, dtype: torch.dtype | None = None, metadata: dict | None = None) -> Path:
        """Write our format (SAELens layout: ``cfg.json`` + ``sae_weights.safetensors``). Returns the dir.

        ``dtype``: storage dtype; default: the dtypes the weights were loaded with (same sha256)."""
        self._require_all_latents("save")
        cfg = self.cfg if metadata is None else replace(self.cfg, metadata={**self.cfg.metadata, **metadata})
        weights = {n: t.to(dtype or self._stored_dtypes[n]) for n, t in self.weights.items()}
        return write_saelens(Path(path), cfg, weights)

    # ------------------------------------------------------------------ encoding
    @property
    def supports_sliced_encoding(self) -> bool:
        """True when a latent depends only on its own encoder column (all but TopK)."""
        return self.cfg.architecture != "topk"

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.ndim != 2 or x.shape[1] != self.cfg.d_in:
            raise ValueError(f"expected activations [n, d_in={self.cfg.d_in}], got shape {tuple(x.shape)}")
        x = x.to(self.device, self.dtype)
        scale = None
        if self.cfg.normalize_activations == "constant_norm_rescale":
            scale = math.sqrt(self.cfg.d_in) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            x = x * scale
        elif self.cfg.normalize_activations == "scale":
            scale = torch.tensor(self.cfg.activation_scale, dtype=self.dtype, device=self.device)
            x = x * scale
        return x, scale

    def _activate(self, proj: torch.Tensor, cols: torch.Tensor | slice) -> torch.Tensor:
        """Latent values from ``proj = x' @ W_enc[:, cols] - b_dec @ W_enc[:, cols]``."""
        w, arch = self.weights, self.cfg.architecture
        pre = proj + w["b_enc"][cols]
        if arch == "relu" or arch == "topk":
            return torch.relu(pre)
        if arch == "jumprelu":
            return torch.relu(pre) * (pre > w["threshold"][cols])
        if arch == "batchtopk":
            post = torch.relu(pre)
            return post * (post > w["threshold"])
        # gated: the gate uses b_enc (= b_gate); the magnitude path rescales the same projection.
        mag = torch.relu(proj * torch.exp(w["r_mag"][cols]) + w["b_mag"][cols])
        return (pre > 0) * mag

    def _encode_prepared(self, x: torch.Tensor) -> torch.Tensor:
        z = self._activate(_rows_matmul(x, self.weights["W_enc"]) - self._b_dec_proj, slice(None))
        if self.cfg.architecture == "topk":
            vals, idx = z.topk(self.cfg.k, dim=-1)
            z = torch.zeros_like(z).scatter_(-1, idx, vals)
        return z

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x [n, d_in]`` (any float dtype) -> latents ``[n, d_sae]`` in the compute dtype."""
        self._require_all_latents("encode")
        return self._encode_prepared(self._prepare(x)[0])

    def _build_slice(self, latents: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.tensor(latents, dtype=torch.long, device=self.device)
        w_s = self.weights["W_enc"][:, idx].contiguous()
        return idx, w_s, self._b_dec_proj[idx].contiguous()

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor, latents: list[int] | tuple[int, ...] | torch.Tensor) -> torch.Tensor:
        """Only the requested latents: ``x [n, d_in]`` -> ``[n, len(latents)]``, equal to
        ``encode(x)[:, latents]``. TopK needs every pre-activation, so it runs the full encode."""
        key = tuple(int(i) for i in (latents.tolist() if isinstance(latents, torch.Tensor) else latents))
        if any(i < 0 or i >= self.cfg.d_sae for i in key):
            raise ValueError(f"latent ids must lie in [0, {self.cfg.d_sae}), got {key}")
        if not self.supports_sliced_encoding:
            return self.encode(x)[:, list(key)]
        if self._columns is not None:
            missing = [i for i in key if i not in self._columns]
            if missing:
                raise ValueError(f"latents {missing[:10]} were not loaded: this SAE holds only the "
                                 f"{len(self._columns)} latents it was loaded with (FrozenSAE.load(..., latents=)); "
                                 "load it with these latents too")
            key = tuple(self._columns[i] for i in key)
        idx, w_s, b_dec_proj = self._sliced(key)
        x, _ = self._prepare(x)
        return self._activate(_rows_matmul(x, w_s) - b_dec_proj, idx)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[n, d_sae]`` -> reconstruction ``[n, d_in]`` in the normalised input space."""
        self._require_all_latents("decode")
        return z.to(self.device, self.dtype) @ self.weights["W_dec"] + self.weights["b_dec"]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` mapped back to the scale of ``x``: ``[n, d_in]``."""
        xs, scale = self._prepare(x)
        out = self.decode(self._encode_prepared(xs))
        return out / scale if scale is not None else out

    def describe(self) -> dict:
        """A JSON-able summary: config and sha256."""
        d = asdict(self.cfg)
        d["sha256"] = self.sha256
        if self.loaded_latents is not None:
            d["loaded_latents"] = len(self.loaded_latents)
        return d


def _fold_b_dec(b_dec: torch.Tensor, w_enc: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``b_dec @ W_enc`` ``[d_sae]`` computed in float64, so each latent's value is the same bits whichever
    columns are held (a vector-matrix product's summation order depends on the matrix width: a slice would
    differ from the full SAE in the last bit); in column blocks of 16M elements, so a 131k-latent SAE needs
    no 4 GB float64 copy."""
    work = torch.float32 if w_enc.device.type == "mps" else torch.float64  # MPS has no float64
    out = torch.empty(w_enc.shape[1], dtype=dtype, device=w_enc.device)
    step = max(1, (1 << 24) // max(1, w_enc.shape[0]))
    bd = b_dec.to(work)
    for j in range(0, w_enc.shape[1], step):
        out[j : j + step] = (bd @ w_enc[:, j : j + step].to(work)).to(dtype)
    return out


def _check_slice(cfg: SAEConfig, w: dict[str, torch.Tensor], latents: tuple[int, ...]) -> None:
    n = len(latents)
    if list(latents) != sorted(set(latents)) or (n and (latents[0] < 0 or latents[-1] >= cfg.d_sae)):
        raise SAELoadError(f"loaded latents must be distinct, ascending and in [0, {cfg.d_sae})")
    expect = {"W_enc": (cfg.d_in, n), "b_enc": (n,), "b_dec": (cfg.d_in,), "r_mag": (n,), "b_mag": (n,),
              "threshold": () if cfg.architecture == "batchtopk" else (n,)}
    needed = ["W_enc", "b_enc", "b_dec", *{"jumprelu": ["threshold"], "batchtopk": ["threshold"],
                                          "gated": ["r_mag", "b_mag"]}.get(cfg.architecture, [])]
    for name in needed:
        if name not in w or tuple(w[name].shape) != expect[name]:
            got = tuple(w[name].shape) if name in w else "missing"
            raise SAELoadError(f"sliced SAE tensor {name}: {got}, expected {expect[name]}")


def _rows_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w`` whose every row is the same bits however many rows ``x`` has.

    One row goes to a matrix-vector kernel that sums in another order than the matrix-matrix kernel (MKL:
    up to 1e-4 apart at d_in 4096), so a token's latents would depend on how many tokens were encoded with
    it: a tap encoding one decode token and a sidecar encoding 512 would disagree. Two rows take the
    matrix-matrix kernel, which on the Intel machine it was checked on gave a row the same result for every
    row count (2 to 4,096). On an AMD EPYC that kernel too varies in the last bits with the row count (and
    a column with the other columns), so what holds everywhere is equality to float32 rounding."""
    if x.shape[0] == 1:
        return (x.expand(2, -1) @ w)[:1]
    return x @ w
