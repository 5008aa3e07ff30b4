"""``safety-monitor model-server``: an example chat endpoint whose model is monitored by a sidecar.

A small FastAPI app around the default model (or any local HF model) with an ``ActivationTap`` on the
configured layer and an ``HttpActivationSink`` shipping the activations to the sidecar. It is what the
two-process deployment, the Helm chart and the end-to-end test run; a production server attaches the
tap the same way (see docs/sidecar.md).

    POST /v1/chat   {"messages": [{"role": "user", "content": "..."}], "max_new_tokens": 64}
                    -> {"request_id", "text", "prompt_tokens", "completion_tokens"}
    GET  /healthz   GET /metrics (tap and sink counters)

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
from typing import Literal

import torch
from fastapi import FastAPI, Header, HTTPException, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from detectors.spans import ROLE_PROMPT
from monitor.lm.chat import render_chat
from monitor.lm.http_sink import HttpActivationSink, HttpSinkConfig
from monitor.lm.loading import LoadedModel
from monitor.lm.tap import ActivationTap
from monitor.service.api_models import REQUEST_ID_PATTERN
from monitor.service.settings import Settings

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


class ModelServer:
    """The model, its tap and the sink; ``chat`` is thread-safe (one generation at a time)."""

    def __init__(self, settings: Settings, lm: LoadedModel, sink: HttpActivationSink | None = None) -> None:
        self.settings = settings
        self.lm = lm
        self.sink = sink
        m = settings.model
        self.tap = ActivationTap(lm.model, layer=m.layer, sink=sink if sink is not None else _discard,
                                 model_id=m.id, module_path=m.module_path, sae_sha256=settings.sae.sha256 or "")
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
        return {"status": "ok", "model": server.settings.model.id, "monitored": sink is not None,
                "sink_last_error": sink.stats.last_error if sink is not None else None}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
