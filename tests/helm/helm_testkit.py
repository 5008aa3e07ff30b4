"""Render and lint the chart with Helm's own Go SDK (PyPI ``helm-python-sdk``: libhelm_c through ctypes).

No ``helm`` binary, no cluster, no network: ``Chart.render`` and ``lint`` run Helm's template engine
and linter in-process, with values-schema validation. One gap in the Python wrapper (0.2.2):
``Chart.render`` does not expose the kube version, although the C ABI's render options do
(``kube_version``, ``api_versions``; the JSON tags are visible in the library). ``render`` below
passes them through ``helm_python._native.call_string("helm_render", ...)``, the same call
``Chart.render`` makes, so ``.Capabilities.KubeVersion`` is what the test says. A test checks that it
is honoured (1.28 and 1.30 give different sidecar placements).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:
    import helm_python
    from helm_python import _native
except ImportError as exc:  # pragma: no cover - the test extra installs it
    raise ImportError(
        "tests/helm needs the PyPI package helm-python-sdk (Helm's Go SDK through ctypes): "
        ".venv/bin/pip install helm-python-sdk (it is in the project's test extras)"
    ) from exc

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "safety-monitor"
CI_DIR = CHART_DIR / "ci"
RELEASE = "demo"
NAMESPACE = "ml"
NEW_KUBE = "v1.30.0"
"""A cluster with native sidecars (>= 1.29)."""
OLD_KUBE = "v1.28.9"
"""A cluster without them by default."""

HelmError = helm_python.HelmError
HelmValuesError = helm_python.HelmValuesError


def scenario_files() -> list[Path]:
    """Every ``ci/*-values.yaml`` of the chart."""
    return sorted(CI_DIR.glob("*-values.yaml"))


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class Rendered:
    """The manifests of one render: parsed documents by kind and name, plus NOTES.txt."""

    docs: list[dict[str, Any]]
    notes: str
    files: dict[str, str] = field(repr=False)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, (
            f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
        )
        return found[0]

    def has(self, kind: str) -> bool:
        return bool(self.all(kind))

    def workload(self) -> dict[str, Any]:
        """The model-server + sidecar Deployment or StatefulSet."""
        found = [
            d
            for d in self.docs
            if d["kind"] in ("Deployment", "StatefulSet")
            and d["metadata"]["labels"].get("app.kubernetes.io/component") == "model-server"
        ]
        assert len(found) == 1, found
        return found[0]

    def pod(self) -> dict[str, Any]:
        return self.workload()["spec"]["template"]["spec"]

    def settings_yaml(self) -> str:
        return self.one("ConfigMap", f"{RELEASE}-safety-monitor")["data"]["settings.yaml"]

    def settings(self) -> dict[str, Any]:
        return yaml.safe_load(self.settings_yaml()) or {}

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(workload name, pod spec)`` of every workload (Deployment, StatefulSet, CronJob)."""
        for d in self.docs:
            if d["kind"] in ("Deployment", "StatefulSet"):
                yield d["metadata"]["name"], d["spec"]["template"]["spec"]
            elif d["kind"] == "CronJob":
                yield d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Init containers and containers of a pod spec."""
    return list(pod.get("initContainers", [])) + list(pod.get("containers", []))


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in containers(pod) if c["name"] == name]
    assert len(found) == 1, f"container {name}: {[c['name'] for c in containers(pod)]}"
    return found[0]


def sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    return container(pod, "safety-monitor")


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def mount(c: dict[str, Any], volume: str) -> dict[str, Any]:
    found = [m for m in c.get("volumeMounts", []) if m["name"] == volume]
    assert len(found) == 1, f"{c['name']} mounts {volume}: {c.get('volumeMounts')}"
    return found[0]


def volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found = [v for v in pod.get("volumes", []) if v["name"] == name]
    assert len(found) == 1, f"volume {name}: {[v['name'] for v in pod.get('volumes', [])]}"
    return found[0]


class ChartKit:
    """The chart, loaded once; ``render`` and ``lint`` go through Helm's Go SDK."""

    def __init__(self) -> None:
        self.chart = helm_python.Chart.load(CHART_DIR)
        self.default_values = self.chart.values

    def render_files(
        self,
        values: dict[str, Any] | None = None,
        *,
        kube_version: str = NEW_KUBE,
        api_versions: list[str] | None = None,
        name: str = RELEASE,
    ) -> dict[str, str]:
        """Template path -> rendered text. Raises ``HelmError`` (``HelmValuesError`` for schema failures)."""
        opts: dict[str, Any] = {
            "name": name,
            "namespace": NAMESPACE,
            "kube_version": kube_version,
            "is_install": True,
        }
        if api_versions:
            opts["api_versions"] = api_versions
        raw = _native.call_string(
            "helm_render", self.chart._raw(), json.dumps(values or {}), json.dumps(opts)
        )
        return json.loads(raw)

    def render(self, values: dict[str, Any] | None = None, **kw: Any) -> Rendered:
        files = self.render_files(values, **kw)
        docs: list[dict[str, Any]] = []
        notes = ""
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                notes = text
                continue
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        return Rendered(docs=docs, notes=notes, files=files)

    def render_scenario(self, path: Path, extra: dict[str, Any] | None = None, **kw: Any) -> Rendered:
        return self.render(deep_merge(load_values(path), extra or {}), **kw)

    def lint(
        self, values: dict[str, Any] | None = None, *, kube_version: str = NEW_KUBE, strict: bool = True
    ) -> dict[str, Any]:
        """Helm's linter (``helm lint --strict``): ``{"messages": [{"severity", "path", "error"}], "errors"}``."""
        return helm_python.lint(
            CHART_DIR, values or {}, kube_version=kube_version, strict=strict, namespace=NAMESPACE
        )

    def close(self) -> None:
        self.chart.close()
