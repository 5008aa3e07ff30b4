"""docs/alerts.md documents every setting, and every setting has a docstring."""

from __future__ import annotations

import ast
import dataclasses
import itertools

import pytest
from alerts_testkit import REPO

from alerts import config

CLASSES = [config.AlertsConfig, config.KafkaConnection, config.PublisherConfig, config.OutboxConfig,
           config.RedisConnection, config.StoreConfig, config.WebhookRouterConfig]  # fmt: skip


def _docstrings() -> dict[str, set[str]]:
    tree = ast.parse((REPO / "alerts" / "config.py").read_text())
    out: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            out[node.name] = {
                st.target.id
                for st, nxt in itertools.pairwise(body)
                if isinstance(st, ast.AnnAssign)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
            }
    return out


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_setting_has_a_docstring_and_a_row_in_the_docs(cls):
    documented = _docstrings()[cls.__name__]
    doc = (REPO / "docs" / "alerts.md").read_text()
    section = doc[doc.index(f"### `{cls.__name__}`") :]
    section = section[: section.find("\n### ", 1) if "\n### " in section[1:] else None]
    for f in dataclasses.fields(cls):
        assert f.name in documented, f"{cls.__name__}.{f.name} has no docstring"
        assert f"| `{f.name}` |" in section, f"{cls.__name__}.{f.name} is missing from docs/alerts.md"
