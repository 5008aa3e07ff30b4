"""``safety-monitor model-server``: an example chat endpoint whose model is monitored by a sidecar.

A small FastAPI app around the default model (or any local HF model) with an ``ActivationTap`` on the
configured layer and an ``HttpActivationSink`` shipping the activations to the sidecar. It is what the
two-process deployment, the Helm chart and the end-to-end test run; a production server attaches the
tap the same way (see docs/sidecar.md).

With ``model_server.encode_at_tap`` the tap ships latent batches instead: the server loads the slice of
the configured SAE that the enabled detectors read (the sidecar's own loaders, so the same ``sae.*`` and
``detectors.*`` settings, sha256 pin and spec checks) and encodes on the model's device;
``model_server.raw_share`` of the requests still ship activations.

    POST /v1/chat   {"messages": [{"role": "user", "content": "..."}], "max_new_tokens": 64}
                    -> {"request_id", "text", "prompt_tokens", "completion_tokens"}
    GET  /healthz   (``tap``: ``latents`` or ``activations``)   GET /metrics (tap and sink counters)

The request id comes from the ``X-Request-ID`` header, else the body's ``request_id``, else a new
UUID; it is echoed in the response header and body, and it is the id the sidecar's alerts carry.
Requests are served one at a time (one CPU model); generation is greedy.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from fastapi import FastAPI, Header, HTTPException, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from detectors.scoring import DetectorBank
from detectors.spans import ROLE_PROMPT
from monitor.lm.chat import render_chat
from monitor.lm.http_sink import HttpActivationSink, HttpSinkConfig
from monitor.lm.loading import LoadedModel
from monitor.lm.tap import LATENT, RAW, ActivationTap, layer_device, resolve_module
from monitor.sae import FrozenSAE
from monitor.service.api_models import REQUEST_ID_PATTERN
from monitor.service.settings import Settings
from monitor.service.sidecar import SidecarStartError, load_detectors, load_monitored_sae

_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=20_000)


class ChatRequest(BaseModel):
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_new_tokens: int | None = Field(None, ge=1, description="Default and upper bound: model_server.max_new_tokens.")
    request_id: str | None = Field(None, pattern=REQUEST_ID_PATTERN)


class ChatResponse(BaseModel):
    request_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    monitored: bool = Field(description="Activations are shipped to a sidecar.")
    seconds: float


class ModelServerStartError(RuntimeError):
    """The model server cannot start with these settings; the message names the setting to change."""


@dataclass(frozen=True)
class TapEncoding:
    """What the tap encodes with when ``model_server.encode_at_tap`` is on."""

    encoder: FrozenSAE
    """The configured SAE, holding only the encoder columns of the detectors' latents, on the tapped layer's device."""
    latents: tuple[int, ...]
    """Sorted union of the enabled detectors' latent ids (what the sidecar requires of a latent batch)."""
    detectors: tuple[str, ...]
    """Names of the enabled detectors."""


def load_tap_encoding(settings: Settings, lm: LoadedModel) -> TapEncoding:
    """The SAE slice and latent ids of the enabled detectors, loaded as the sidecar loads them (same settings,
    sha256 pin, spec checks against the SAE), on the device of the tapped layer. Float32 whatever the device,
    so the latents are the ones the sidecar would compute. Raises ``ModelServerStartError``."""
    m = settings.model
    device = layer_device(lm.model, resolve_module(lm.model, m.module_path.format(layer=m.layer)))  # as the tap
    try:
        sae = load_monitored_sae(settings, device=device, dtype=torch.float32)
        detectors = load_detectors(settings, sae)
    except SidecarStartError as exc:
        raise ModelServerStartError(f"model_server.encode_at_tap loads the SAE and detectors as the sidecar "
                                    f"does, and failed: {exc}") from None
    if not detectors.specs:
        raise ModelServerStartError(
            f"model_server.encode_at_tap: no enabled detector in {detectors.source}, so there are no latents to "
            "compute; point detectors.dir at the sidecar's specs, or set model_server.encode_at_tap: false"
        )
    if sae.cfg.d_in != lm.d_model:
        raise ModelServerStartError(f"model_server.encode_at_tap: the SAE reads d_in={sae.cfg.d_in} but "
                                    f"{lm.model_id} has d_model={lm.d_model}; set sae.path to this model's SAE")
    return TapEncoding(sae, tuple(DetectorBank(detectors.specs).latents), tuple(s.name for s in detectors.specs))


class ModelServer:
    """The model, its tap and the sink; ``chat`` is thread-safe (one generation at a time)."""

    def __init__(self, settings: Settings, lm: LoadedModel, sink: HttpActivationSink | None = None) -> None:
        """With ``model_server.encode_at_tap`` the SAE slice is loaded here (``load_tap_encoding``); raises
        ``ModelServerStartError`` when that fails."""
        self.settings = settings
        self.lm = lm
        self.sink = sink
        m, ms = settings.model, settings.model_server
        self.encoding = load_tap_encoding(settings, lm) if ms.encode_at_tap else None
        enc = self.encoding
        self.tap = ActivationTap(lm.model, layer=m.layer, sink=sink if sink is not None else _discard,
                                 model_id=m.id, module_path=m.module_path,
                                 sae_sha256=enc.encoder.sha256 if enc else settings.sae.sha256 or "",
                                 encoder=enc.encoder if enc else None, latents=enc.latents if enc else None,
                                 raw_share=ms.raw_share)
        self.tap.hook = m.hook_name
        self._lock = threading.Lock()
        self.requests_total = 0

    @classmethod
    def from_settings(cls, settings: Settings, lm: LoadedModel) -> ModelServer:
        ms = settings.model_server
        sink = None
        if ms.sidecar_url:
            token = settings.auth.ingest_token.get_secret_value() if settings.auth.ingest_token else None
            sink = HttpActivationSink(HttpSinkConfig(
                url=ms.sidecar_url, token=token, batch_tokens=ms.batch_tokens, linger_ms=ms.linger_ms,
                queue_batches=ms.queue_batches, timeout_s=ms.post_timeout_s, retries=ms.retries,
                max_post_tokens=settings.limits.max_tokens_per_batch,
            ))
        return cls(settings, lm, sink)

    def prompt(self, messages: list[dict[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chat-templated prompt ids ``[n]`` (ending with the assistant header) and their roles ``[n]``."""
        tok = self.lm.tokenizer
        out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        ids = list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "input_ids") else out)
        rendered = render_chat(tok, messages)
        known = rendered.input_ids.tolist()
        if ids[: len(known)] == known:  # earlier assistant turns keep the response role
            roles = rendered.roles.tolist() + [ROLE_PROMPT] * (len(ids) - len(known))
        else:
            roles = [ROLE_PROMPT] * len(ids)
        return torch.tensor(ids, dtype=torch.int64), torch.tensor(roles, dtype=torch.uint8)

    def chat(self, request: ChatRequest, request_id: str) -> ChatResponse:
        limit = self.settings.model_server.max_new_tokens
        n_new = min(request.max_new_tokens or limit, limit)
        ids, roles = self.prompt([m.model_dump() for m in request.messages])
        mask = torch.ones(1, ids.shape[0], dtype=torch.int64)
        tok = self.lm.tokenizer
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
            with self.tap.track([request_id], attention_mask=mask, roles=roles[None]):
                out = self.lm.model.generate(input_ids=ids[None], attention_mask=mask, max_new_tokens=n_new,
                                             do_sample=False, pad_token_id=tok.pad_token_id)
            self.requests_total += 1
        new = out[0, ids.shape[0]:]
        return ChatResponse(request_id=request_id, text=tok.decode(new, skip_special_tokens=True),
                            prompt_tokens=int(ids.shape[0]), completion_tokens=int(new.shape[0]),
                            monitored=self.sink is not None, seconds=round(time.perf_counter() - t0, 4))

    @property
    def tap_kind(self) -> str:
        """What the tap ships: ``latents`` (encoding at the tap) or ``activations``."""
        return LATENT if self.encoding is not None else RAW

    def close(self) -> None:
        self.tap.close()
        if self.sink is not None:
            self.sink.close()


def _discard(batch) -> None:
    pass


class _ServerCollector(Collector):
    """Tap and sink counters at scrape time."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        p = "safety_monitor_model_server"
        t = self.server.tap.stats
        yield CounterMetricFamily(f"{p}_requests", "Chat requests served.", value=self.server.requests_total)
        yield CounterMetricFamily(f"{p}_tap_tokens", "Tokens the tap saw.", value=t.tokens_seen)
        yield CounterMetricFamily(f"{p}_tap_tokens_dropped", "Tokens the tap dropped (its queue was full).",
                                  value=t.tokens_dropped)
        shipped = CounterMetricFamily(f"{p}_tap_tokens_shipped", "Tokens the tap handed to the sink, by kind "
                                      "(latents: encoded at the tap).", labels=["kind"])
        shipped.add_metric([LATENT], t.latent_tokens)
        shipped.add_metric([RAW], t.raw_tokens)
        yield shipped
        enc = self.server.encoding
        yield GaugeMetricFamily(f"{p}_tap_monitored_latents", "SAE latents the tap computes per token "
                                "(0: it ships activations).", value=len(enc.latents) if enc is not None else 0)
        sink = self.server.sink
        if sink is not None:
            s = sink.stats
            yield CounterMetricFamily(f"{p}_sink_tokens_sent", "Tokens the sidecar accepted.", value=s.tokens_sent)
            dropped = CounterMetricFamily(f"{p}_sink_tokens_dropped", "Tokens the sink dropped, by reason.",
                                          labels=["reason"])
            dropped.add_metric(["queue_full"], s.tokens_dropped_queue_full)
            dropped.add_metric(["post_failed"], s.tokens_dropped_failed)
            yield dropped
            yield CounterMetricFamily(f"{p}_sink_posts", "Batches the sidecar accepted.", value=s.posts_ok)
            yield CounterMetricFamily(f"{p}_sink_retries", "Retried posts.", value=s.retries)


def create_model_server_app(server: ModelServer) -> FastAPI:
    """The HTTP app of the example model server."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            await run_in_threadpool(server.close)

    app = FastAPI(title="safety-monitor example model server", version="1", lifespan=lifespan)
    app.state.server = server
    registry = CollectorRegistry()
    registry.register(_ServerCollector(server))

    @app.post("/v1/chat", response_model=ChatResponse)
    async def chat(body: ChatRequest, response: Response,
                   x_request_id: str | None = Header(None, max_length=128)) -> ChatResponse:
        """Generate a reply (greedy); its activations go to the sidecar under the request id."""
        rid = x_request_id or body.request_id or str(uuid.uuid4())
        if not _REQUEST_ID.match(rid):
            raise HTTPException(400, f"request id {rid!r} must match {REQUEST_ID_PATTERN}")
        result = await run_in_threadpool(server.chat, body, rid)
        response.headers["X-Request-ID"] = rid
        return result

    @app.get("/healthz")
    async def healthz() -> dict:
        sink = server.sink
        enc = server.encoding
        return {"status": "ok", "model": server.settings.model.id, "monitored": sink is not None,
                "tap": server.tap_kind, "monitored_latents": len(enc.latents) if enc is not None else 0,
                "raw_share": server.tap.raw_share if enc is not None else None,
                "sink_last_error": sink.stats.last_error if sink is not None else None}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
