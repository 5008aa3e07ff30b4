"""The chart's values contract: the schema rejects typos (Helm's own validator), stays in step with
``monitor.service.settings``, closes every object, and the README documents every value."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import yaml
from helm_testkit import CHART_DIR, REPO, ChartKit, HelmValuesError, deep_merge, load_values

DEFAULT = CHART_DIR / "ci" / "default-values.yaml"
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


def _tools():
    sys.path.insert(0, str(REPO / "helm" / "tools"))
    try:
        import settings_schema
    finally:
        sys.path.pop(0)
    return settings_schema


def test_config_schema_is_generated_from_the_settings_model():
    tools = _tools()
    assert tools.updated_schema(SCHEMA) == SCHEMA, (
        "values.schema.json is out of date with monitor/service/settings.py: run .venv/bin/python helm/tools/settings_schema.py"
    )


# ------------------------------------------------------------------------------------------ typos
@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"replicas": 2}, ["replicas"]),  # top level
        ({"sidecar": {"nativ": "auto"}}, ["nativ"]),  # nested
        ({"sidecar": {"native": "maybe"}}, ["/sidecar/native"]),  # enum
        (
            {"sidecar": {"startupProbe": {"httpGet": {"path": "/x", "port": 1}}}},
            ["httpGet"],
        ),  # app-owned probe path
        ({"config": {"queue": {"max_tokenz": 1}}}, ["max_tokenz"]),  # a setting, misspelt
        (
            {"config": {"queue": {"max_tokens": "lots"}}},
            ["/config/queue/max_tokens"],
        ),  # a setting, wrong type
        ({"config": {"server": {"port": 9000}}}, ["port"]),  # chart-owned: sidecar.port
        ({"config": {"auth": {"ingest_token": "x" * 32}}}, ["auth"]),  # secrets never as values
        ({"config": {"kafka": {"sasl_plain_password": "pw"}}}, ["sasl_plain_password"]),
        ({"redis": {"url": "redis://user:pw@redis:6379/0"}}, ["/redis/url"]),  # no credentials in URLs
        ({"sae": {"sha256": "abc"}}, ["/sae/sha256"]),
        ({"image": {"digest": "latest"}}, ["/image/digest"]),
        ({"detectors": {"specs": {"scam.yaml": {}}}}, ["scam.yaml"]),
        ({"modelServer": {"extraEnv": [{"name": "X", "valu": "1"}]}}, ["valu"]),
    ],
)
def test_schema_rejects_with_a_message_naming_the_key(
    chart: ChartKit, extra: dict[str, Any], names: list[str]
):
    values = deep_merge(load_values(DEFAULT), extra)
    with pytest.raises(HelmValuesError) as err:
        chart.render(values)
    for name in names:
        assert name in str(err.value), str(err.value)
    report = chart.lint(values)
    assert report["errors"] and any(name in e for e in report["errors"] for name in names), report


def test_schema_accepts_real_settings_and_the_helm_global(chart: ChartKit):
    values = deep_merge(
        load_values(DEFAULT),
        {
            "global": {"imageRegistry": "mirror.example.internal"},
            "config": {
                "model": {"layer": 12, "dtype": "bfloat16"},
                "queue": {"max_tokens": 524288, "high_water": 0.9},
                "alerts": {"console_json": True, "outbox": {"max_rows": 50000}, "publisher": {"acks": "all"}},
                "detectors": {"force_no_signal": False},
                "dashboard": {"public": False},
            },
        },
    )
    settings = chart.render(values).settings()
    assert settings["queue"] == {"max_tokens": 524288, "high_water": 0.9}
    assert settings["alerts"]["outbox"] == {
        "max_rows": 50000,
        "path": "/var/lib/safety-monitor/outbox/alerts-outbox.sqlite3",
    }


# ------------------------------------------------------------------------------------------ closed objects
# Objects whose keys are free by nature: string maps (labels, annotations, selectors), Kubernetes
# objects passed through as written, and settings that are free maps in the app itself.
OPEN_OBJECTS = {
    "properties.global",
    "definitions.affinity.properties.nodeAffinity",
    "definitions.affinity.properties.podAffinity",
    "definitions.affinity.properties.podAntiAffinity",
    "properties.extraVolumes.items",
    "properties.topologySpreadConstraints.items",
    "definitions.settings.KafkaConnection.properties.extra",
    "definitions.settings.PublisherConfig.properties.producer_options",
}


def _objects(node: Any, path: str = ""):
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}[{i}]")


def test_every_object_in_the_schema_is_closed():
    assert SCHEMA["additionalProperties"] is False
    open_found = set()
    for path, node in _objects(SCHEMA):
        ap = node.get("additionalProperties", True)
        if "properties" in node:
            assert ap is False, f"{path}: a structured object must have additionalProperties: false"
        elif ap is True:
            open_found.add(path)
    assert open_found == OPEN_OBJECTS


# ------------------------------------------------------------------------------------------ README
# Below these keys the README documents the object, not each field (Kubernetes types, free maps).
STOP = {
    "resources",
    "podSecurityContext",
    "containerSecurityContext",
    "securityContext",
    "startupProbe",
    "livenessProbe",
    "readinessProbe",
    "config",
    "emptyDir",
    "dns",
    "specs",
    "annotations",
    "labels",
    "podAnnotations",
    "podLabels",
    "nodeSelector",
    "affinity",
}


def _value_paths(node: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        out.append(path)
        if isinstance(value, dict) and value and key not in STOP:
            out += _value_paths(value, path)
    return out


def test_readme_documents_every_value():
    readme = (CHART_DIR / "README.md").read_text()
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    missing = [p for p in _value_paths(values) if f"`{p}`" not in readme]
    assert not missing, f"values not documented in helm/safety-monitor/README.md: {missing}"


def test_readme_describes_every_scenario():
    readme = (CHART_DIR / "README.md").read_text()
    for path in sorted((CHART_DIR / "ci").glob("*-values.yaml")):
        assert path.name in readme, f"{path.name} is not described in the chart README"


def test_chart_metadata(chart: ChartKit):
    meta = chart.chart.metadata
    assert meta["name"] == "safety-monitor" and meta["apiVersion"] == "v2"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'version = "{meta["appVersion"]}"' in pyproject, "appVersion follows the project version"
    assert (CHART_DIR / "UPGRADING.md").is_file() and (CHART_DIR / "templates" / "NOTES.txt").is_file()
    assert (CHART_DIR / "templates" / "_pod.tpl").is_file()
    # The pod spec is written once: only _pod.tpl declares the containers of the model-server pod.
    for tpl in (CHART_DIR / "templates").glob("*.yaml"):
        text = tpl.read_text()
        assert "name: model-server\n" not in text, f"{tpl.name} declares the model-server container"


def test_deploy_doc_walks_from_install_to_alerts():
    deploy = (REPO / "docs" / "deploy.md").read_text()
    for needed in (
        "helm install",
        "kubectl -n $NS create secret generic",
        "/readyz",
        "/v1/chat",
        "/dashboard",
        "alerts tail",
        "UPGRADING.md",
        "## 5. Sizing",
        "## 6. What happens on failures",
        "vLLM",
        "docker build",
    ):
        assert needed in deploy, needed
    values = load_values(CHART_DIR / "values.yaml")
    assert f"{values['sidecar']['port']}:{values['sidecar']['port']}" in deploy
