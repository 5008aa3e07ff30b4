"""Fixtures of the sidecar tests: a real small SAE and detector specs on disk, settings pointing at
them, and the FastAPI app under Starlette's TestClient (lifespan started and stopped per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sidecar_testkit import live_server, make_sae, make_settings, make_spec

from monitor.sae import FrozenSAE
from monitor.service.app import create_app
from monitor.service.settings import Settings
from monitor.service.sidecar import Sidecar


@pytest.fixture()
def sae_dir(tmp_path: Path) -> Path:
    make_sae(tmp_path / "sae")
    return tmp_path / "sae"


@pytest.fixture()
def sae(sae_dir: Path) -> FrozenSAE:
    return FrozenSAE.load(sae_dir)


@pytest.fixture()
def detector_dir(tmp_path: Path, sae: FrozenSAE) -> Path:
    """Two detectors: ``scam`` (max over latents 1 and 17, threshold 2) and ``power`` (mean over the
    response of latent 5, threshold 0.5)."""
    d = tmp_path / "detectors"
    make_spec(sae, "scam").save(d / "scam.json")
    make_spec(sae, "power", latents=(5,), weights=(1.0,), threshold=0.5, aggregation="mean",
              span="response").save(d / "power.json")
    return d


@pytest.fixture()
def settings(tmp_path: Path, sae_dir: Path, detector_dir: Path) -> Settings:
    return make_settings(tmp_path, sae_dir, detector_dir)


@pytest.fixture()
def sidecar(settings: Settings) -> Sidecar:
    return Sidecar.load(settings)


@pytest.fixture()
def client(sidecar: Sidecar) -> Iterator[TestClient]:
    with TestClient(create_app(sidecar), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture()
def live_url(sidecar: Sidecar) -> Iterator[str]:
    """The sidecar app under a real uvicorn server on a free port, in a thread; its base URL."""
    with live_server(create_app(sidecar)) as url:
        yield url


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kafka: starts the Tansu Kafka broker")
    config.addinivalue_line("markers", "redis: starts redis-server")
    config.addinivalue_line("markers", "browser: drives headless Chromium")
