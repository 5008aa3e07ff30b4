"""Settings of the sidecar (``safety-monitor serve``) and the example model server, declared once.

Sources, highest priority first: keyword overrides (the CLI flags), environment variables
``SAFETY_MONITOR_<SECTION>__<FIELD>`` (nested fields joined by ``__``, e.g.
``SAFETY_MONITOR_QUEUE__MAX_TOKENS=200000`` or ``SAFETY_MONITOR_AUTH__INGEST_TOKEN=...``), one YAML
file (``--config``), then the defaults below. Each field carries its docstring; ``docs/sidecar.md``
lists them. The Kafka, publisher, outbox and Redis sections *are* the ``alerts.config`` dataclasses,
so those knobs are declared only there.

``load_settings`` turns every validation problem into one ``SettingsError`` whose lines name the
field (``queue.max_tokens: ...``) and the environment variable that sets it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from alerts.config import KafkaConnection, OutboxConfig, PublisherConfig, RedisConnection, default_instance
from monitor.defaults import DEFAULT_LAYER, DEFAULT_MODEL_ID, DEFAULT_MODULE_PATH, hook_name

ENV_PREFIX = "SAFETY_MONITOR_"
MIN_TOKEN_LENGTH = 16


class SettingsError(ValueError):
    """The settings are invalid; each line of the message names a field and what is wrong with it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ModelSettings(_Section):
    """The monitored model: what the activations come from, and what ``POST /v1/score`` runs."""

    id: str = Field(DEFAULT_MODEL_ID, min_length=1, max_length=256)
    """Model id carried in every activation batch (``model`` in the wire metadata); batches naming
    another model are refused. For ``load``: the embedded default or a local Hugging Face directory."""
    layer: int = Field(DEFAULT_LAYER, ge=0, le=1000)
    """Decoder layer whose output (residual stream) is tapped."""
    hook: str | None = Field(None, min_length=1, max_length=256)
    """Hook name expected in batches; default ``blocks.<layer>.hook_resid_post``."""
    module_path: str = DEFAULT_MODULE_PATH
    """Attribute path of the tapped module inside the ``*ForCausalLM`` (``{layer}`` is substituted)."""
    load: bool = False
    """Load the model inside the sidecar so that ``POST /v1/score`` can run texts (costs memory)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype when the model is loaded."""
    max_score_tokens: int = Field(2048, ge=1, le=1_000_000)
    """Longest text, in tokens, that ``POST /v1/score`` runs."""

    @property
    def hook_name(self) -> str:
        return self.hook or hook_name(self.layer)


class SAESettings(_Section):
    """The frozen SAE. ``SAFETY_MONITOR_SAE=DIR`` (as for the other commands) sets ``path``."""

    path: Path | None = None
    """SAE directory or file (SAELens, sparsify, Gemma Scope, dictionary_learning); default: the shipped
    SAE named in ``artifacts/defaults.json``."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    """Refuse to start unless the SAE weights hash to this (default: the pin in ``artifacts/defaults.json``
    when the shipped SAE is used). Thresholds are only valid for the SAE they were calibrated on."""

    @model_validator(mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, (str, Path)) else value


class DetectorSettings(_Section):
    """Where the detector specs come from."""

    dir: Path | None = None
    """Directory of detector spec ``*.json`` files; default: the ``detectors/`` folder beside the SAE,
    when it exists."""
    force_no_signal: bool = False
    """Also load specs marked ``no_signal`` (they alert at chance level; for experiments only)."""


class ServerSettings(_Section):
    """The HTTP listener."""

    host: str = "127.0.0.1"
    """Interface to bind (``0.0.0.0`` in a container)."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0 picks a free one)."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """uvicorn and application log level."""
    access_log: bool = False
    """Log one line per HTTP request (hundreds per second under load)."""
    shutdown_drain_s: float = Field(5.0, ge=0, le=600)
    """On shutdown, how long queued batches may still be scored and their alerts emitted."""
    pin_cpu: int | None = Field(None, ge=0, le=4095)
    """Run the whole sidecar on one CPU: the ``pin_cpu``-th of the CPUs it may use (0: the first). Its
    Python threads (HTTP loop, scoring worker) share one interpreter lock; on two cores they hand it to each
    other at every tensor operation, and decode-heavy ingest ran 2.9x slower than on one (docs/performance.md).
    Pin only where that CPU is the sidecar's own (an exclusive cpuset, a machine of its own): sidecars pinned
    to the same CPU share it. Needs ``queue.torch_threads`` 1. ``None``: no pinning."""


class QueueSettings(_Section):
    """The bounded ingest queue and its worker."""

    max_batches: int = Field(1024, ge=1, le=1_000_000)
    """Batches waiting to be scored; beyond this (or ``max_tokens``) ingest answers 429."""
    max_tokens: int = Field(32_768, ge=1, le=100_000_000)
    """Tokens waiting to be scored (bounds queue memory: tokens x d_in x 2 bytes for float16)."""
    high_water: float = Field(0.8, gt=0, le=1)
    """``/readyz`` reports not ready while the queue holds more than this fraction of ``max_tokens``."""
    coalesce_tokens: int = Field(4096, ge=1, le=1_000_000)
    """The worker encodes up to this many queued tokens in one matrix product."""
    retry_after_s: int = Field(1, ge=1, le=3600)
    """``Retry-After`` of a 429 answer, in seconds."""
    torch_threads: int = Field(1, ge=1, le=256)
    """Intra-op threads of the encoding worker (its matrix products are small; 1 with ``server.pin_cpu``)."""


class LimitSettings(_Section):
    """Bounds on what one ingest call may carry and on the per-request state kept in memory."""

    max_body_bytes: int = Field(32 << 20, ge=1024, le=1 << 31)
    """Largest ``POST /v1/activations`` body (413 beyond)."""
    max_tokens_per_batch: int = Field(16_384, ge=1, le=1 << 24)
    """Most tokens in one activation batch (413 beyond)."""
    max_requests_per_batch: int = Field(4_096, ge=1, le=1 << 20)
    """Most model requests in one activation batch (413 beyond)."""
    max_header_bytes: int = Field(1 << 20, ge=1024, le=1 << 28)
    """Largest safetensors header, metadata included (413 beyond)."""
    max_active_requests: int = Field(4_096, ge=1, le=1 << 22)
    """Model requests scored at once; the least recently seen one is finalised early beyond this."""
    remember_request_ids: int = Field(65_536, ge=1, le=1 << 24)
    """Recently seen request ids kept to recognise a final flag (an unknown one gets 404)."""
    idle_timeout_s: float = Field(60.0, gt=0, le=86_400)
    """A request with no new tokens for this long is finalised without its final flag."""


class AuthSettings(_Section):
    """Bearer tokens: one for the model servers that ingest, one for operators (reload, dashboard)."""

    ingest_token: SecretStr | None = None
    """Token for ``POST /v1/activations`` and ``POST /v1/score`` (``SAFETY_MONITOR_AUTH__INGEST_TOKEN``)."""
    admin_token: SecretStr | None = None
    """Token for ``POST /v1/admin/reload`` and the dashboard (``SAFETY_MONITOR_AUTH__ADMIN_TOKEN``)."""
    disabled: bool = False
    """Accept every call without a token. Only for a laptop: never expose such a sidecar."""


class AlertSettings(_Section):
    """How alerts are built and where they go besides Kafka and Redis."""

    instance: str = Field(default_factory=default_instance, min_length=1, max_length=256)
    """Name of this sidecar in alerts and heartbeats (the pod name under Kubernetes)."""
    console: bool = True
    """Print one line per alert to stderr."""
    console_json: bool = False
    """Print the alert JSON instead of the human line."""
    jsonl_path: Path | None = None
    """Also append every alert as one JSON line to this file."""
    local_outbox: bool = True
    """Keep the SQLite outbox even without Kafka (the durable local record of every alert)."""
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    """The SQLite outbox (see ``alerts.config.OutboxConfig``)."""
    publisher: PublisherConfig = Field(default_factory=PublisherConfig)
    """Kafka publishing (see ``alerts.config.PublisherConfig``); used when ``kafka`` is set."""
    top_latents: int = Field(8, ge=0, le=64)
    """Contributing latents listed in each alert."""
    queue_size: int = Field(4096, ge=1, le=1_000_000)
    """Alerts waiting for the outbox commit; when full, scoring waits (alerts are never dropped here)."""


class DriftSettings(_Section):
    """The drift watch: each detector's live alert rate against the FPR its calibration guarantees
    (``monitor/service/drift_watch.py``)."""

    enabled: bool = True
    """Watch every detector; on entering ``drifting`` raise one ``detector_drift`` event on the alert topic."""
    window_s: float = Field(3600.0, ge=10, le=30 * 86_400)
    """Length of the sliding window of finished requests, in seconds."""
    min_requests: int = Field(200, ge=1, le=1_000_000_000)
    """Requests the window needs before a detector is judged (``insufficient_data`` until then)."""
    limit_factor: float = Field(2.0, ge=1, le=1000)
    """``drifting`` when the live rate's 95% interval lies wholly above this many times the calibrated bound."""


class SampleSettings(_Section):
    """Traffic samples for recalibration (``calibrate --thresholds-from``): per detector the aggregated latent
    features of a random share of finished requests, with token and turn counts; no text, no token ids."""

    enabled: bool = False
    """Record samples (off by default)."""
    rate: float = Field(0.1, gt=0, le=1)
    """Share of finished requests recorded."""
    path: Path | None = None
    """SQLite file; default ``traffic-samples.sqlite3`` beside the alert outbox (on its volume)."""
    max_rows: int = Field(50_000, ge=100, le=100_000_000)
    """Samples kept; the oldest are deleted (and counted) beyond this."""
    queue_size: int = Field(4096, ge=1, le=1_000_000)
    """Samples waiting for the writer; beyond this they are dropped and counted (scoring never waits)."""
    seed: int | None = None
    """Seed of the sampling draw (tests); ``null``: random."""


class DashboardSettings(_Section):
    """The dashboard page and its JSON routes (``/dashboard``, ``/v1/dashboard/...``)."""

    enabled: bool = True
    """Mount the dashboard routes."""
    public: bool = False
    """Serve them without the admin token (put an authenticating proxy in front instead)."""
    title: str = "Safety monitor"
    """Page title."""


class ModelServerSettings(_Section):
    """The example model server (``safety-monitor model-server``) and its HTTP activation sink."""

    host: str = "127.0.0.1"
    """Interface to bind."""
    port: int = Field(8001, ge=0, le=65535)
    """TCP port."""
    sidecar_url: str | None = Field(None, pattern=r"^https?://")
    """Base URL of the sidecar, e.g. ``http://127.0.0.1:8000``; ``None`` runs without monitoring."""
    batch_tokens: int = Field(512, ge=1, le=1 << 20)
    """The sink posts once this many tokens have been collected ..."""
    linger_ms: float = Field(5.0, ge=0, le=10_000)
    """... or this long after the first of them arrived, whichever comes first."""
    queue_batches: int = Field(1024, ge=1, le=1_000_000)
    """Tap batches the sink buffers; beyond this they are dropped and counted (the model never waits)."""
    post_timeout_s: float = Field(2.0, gt=0, le=600)
    """Timeout of one POST to the sidecar."""
    retries: int = Field(2, ge=0, le=10)
    """Extra attempts of a failed POST (connection error, 429, 5xx) before its tokens are dropped."""
    max_new_tokens: int = Field(128, ge=1, le=8192)
    """Upper bound on ``max_new_tokens`` of a chat call."""
    torch_threads: int = Field(1, ge=1, le=256)
    """Intra-op threads of the model."""
    pin_cpu: int | None = Field(None, ge=0, le=4095)
    """Run the model server on one CPU, the ``pin_cpu``-th of those it may use (as ``server.pin_cpu``): on a
    CPU-served model the tap's delivery thread otherwise takes the interpreter lock at the model's tensor
    ops, which cost 2.4-3.7 % of a prefill on two cores and 0.0 % on one (docs/performance.md). Needs
    ``model_server.torch_threads`` 1. ``None``: no pinning."""
    encode_at_tap: bool = False
    """Ship the monitored SAE latents, computed on the model's device, instead of the activations (the
    detectors' latents per token instead of ``d_model`` numbers). The model server then loads the SAE slice
    of the enabled detectors (``sae.*``, ``detectors.*``, as the sidecar does) and refuses to start without any."""
    raw_share: float = Field(0.0, ge=0, le=1)
    """With ``encode_at_tap``: share of requests (picked by a hash of the request id) whose activations are
    shipped instead, for calibration and drift work."""


class Settings(BaseSettings):
    """Everything ``safety-monitor serve`` and ``safety-monitor model-server`` read at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    model: ModelSettings = Field(default_factory=ModelSettings)
    """The monitored model."""
    sae: Annotated[SAESettings, NoDecode] = Field(default_factory=SAESettings)
    """The frozen SAE."""
    detectors: DetectorSettings = Field(default_factory=DetectorSettings)
    """Detector specs."""
    server: ServerSettings = Field(default_factory=ServerSettings)
    """HTTP listener of the sidecar."""
    queue: QueueSettings = Field(default_factory=QueueSettings)
    """Ingest queue and worker."""
    limits: LimitSettings = Field(default_factory=LimitSettings)
    """Ingest limits and request-state bounds."""
    auth: AuthSettings = Field(default_factory=AuthSettings)
    """Bearer tokens."""
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    """Alert building and local sinks."""
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    """Dashboard routes."""
    drift: DriftSettings = Field(default_factory=DriftSettings)
    """The drift watch."""
    samples: SampleSettings = Field(default_factory=SampleSettings)
    """Traffic samples for recalibration."""
    kafka: KafkaConnection | None = None
    """Kafka cluster (see ``alerts.config.KafkaConnection``); ``None``: no Kafka publishing."""
    redis: RedisConnection | None = None
    """Redis for the dashboard store (see ``alerts.config.RedisConnection``); ``None``: in-process store."""
    model_server: ModelServerSettings = Field(default_factory=ModelServerSettings)
    """The example model server."""

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # Cross-field rules: the message names the field itself (pydantic gives these no location).
        if self.queue.max_tokens < self.limits.max_tokens_per_batch:
            raise ValueError(
                f"queue.max_tokens: {self.queue.max_tokens} is smaller than limits.max_tokens_per_batch "
                f"({self.limits.max_tokens_per_batch}), so a full-size batch could never be queued"
            )
        if self.limits.max_requests_per_batch > self.limits.max_active_requests:
            raise ValueError(
                f"limits.max_requests_per_batch: {self.limits.max_requests_per_batch} exceeds "
                f"limits.max_active_requests ({self.limits.max_active_requests}); one batch must fit in the state table"
            )
        if self.server.pin_cpu is not None and self.queue.torch_threads != 1:
            raise ValueError(
                f"server.pin_cpu: {self.server.pin_cpu} runs the sidecar on one CPU, so queue.torch_threads "
                f"({self.queue.torch_threads}) would share it; set queue.torch_threads: 1 or drop pin_cpu"
            )
        if self.model_server.pin_cpu is not None and self.model_server.torch_threads != 1:
            raise ValueError(
                f"model_server.pin_cpu: {self.model_server.pin_cpu} runs the model server on one CPU, so "
                f"model_server.torch_threads ({self.model_server.torch_threads}) would share it; set "
                "model_server.torch_threads: 1 or drop pin_cpu"
            )
        if self.model_server.raw_share > 0 and not self.model_server.encode_at_tap:
            raise ValueError(
                f"model_server.raw_share: {self.model_server.raw_share} only applies with model_server.encode_at_tap: "
                "true (without it every request ships its activations); set both, or raw_share: 0"
            )
        if not self.auth.disabled:
            tokens = {}
            for name in ("ingest_token", "admin_token"):
                token = getattr(self.auth, name)
                env = f"{ENV_PREFIX}AUTH__{name.upper()}"
                if token is None:
                    raise ValueError(f"auth.{name}: is required; set {env} (or auth.disabled: true for a local trial)")
                value = token.get_secret_value()
                if len(value) < MIN_TOKEN_LENGTH or not value.isascii() or not value.isprintable() or " " in value:
                    raise ValueError(
                        f"auth.{name}: must be at least {MIN_TOKEN_LENGTH} printable ASCII characters without "
                        "spaces; make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                    )
                tokens[name] = value
            if tokens["ingest_token"] == tokens["admin_token"]:
                raise ValueError("auth.admin_token: must differ from auth.ingest_token")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags beat the environment, which beats the YAML file (a Kubernetes Secret overrides the ConfigMap).
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls), file_secret_settings


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (if any), the ``SAFETY_MONITOR_*`` environment and ``overrides``.

    ``overrides``: section dicts, e.g. ``server={"port": 9000}``. Raises ``SettingsError`` naming each
    bad field and how it is set.
    """
    cls: type[Settings] = Settings
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise SettingsError(f"config file {path} does not exist")
        _check_yaml(path)

        class _FromFile(Settings):
            model_config = SettingsConfigDict(yaml_file=str(path), yaml_file_encoding="utf-8")

        cls = _FromFile
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc, config_file)) from None
    except ValueError as exc:  # pydantic-settings: an environment value that is not valid JSON, ...
        raise SettingsError(f"invalid settings: {exc}") from None


def _check_yaml(path: Path) -> None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of sections (model:, sae:, ...), "
                            f"not a {type(data).__name__}")


def format_validation_error(exc: ValidationError, config_file: str | Path | None = None) -> str:
    """One line per problem: ``field.path: message (set it in FILE or SAFETY_MONITOR_FIELD__PATH)``."""
    lines = ["invalid settings:"]
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        # Union members (``kafka: KafkaConnection | None``) add the type name to the location.
        loc = [p for p in loc if p not in ("KafkaConnection", "RedisConnection")]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"  {'.'.join(loc)}: unknown setting (check its spelling against docs/sidecar.md)")
            continue
        if not loc:  # a cross-field rule: its message starts with the field name
            lines.append(f"  {msg}")
            continue
        env = ENV_PREFIX + "__".join(p.upper() for p in loc)
        where = f" (set in {config_file} or {env})" if config_file else f" (set {env})"
        lines.append(f"  {'.'.join(loc)}: {msg}{where}")
    return "\n".join(lines)


def environment_overrides() -> dict[str, str]:
    """The ``SAFETY_MONITOR_*`` variables currently set (values of tokens and passwords masked)."""
    out = {}
    for key, value in os.environ.items():
        if key.startswith(ENV_PREFIX):
            secret = any(s in key for s in ("TOKEN", "PASSWORD", "SECRET"))
            out[key] = "***" if secret else value
    return out
