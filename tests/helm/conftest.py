"""Fixtures of the chart tests: the chart loaded once into Helm's Go SDK (``helm_testkit.ChartKit``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helm_testkit import ChartKit


@pytest.fixture(scope="session")
def chart() -> Iterator[ChartKit]:
    kit = ChartKit()
    yield kit
    kit.close()
