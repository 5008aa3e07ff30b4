"""Settings: YAML file + SAFETY_MONITOR_* environment + overrides; bad values name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from sidecar_testkit import ADMIN, INGEST, console_script, subprocess_env

from monitor.service.settings import SettingsError, load_settings

TOKENS = {"ingest_token": INGEST, "admin_token": ADMIN}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("SAFETY_MONITOR_") and key != "SAFETY_MONITOR_CACHE":
            monkeypatch.delenv(key)


def test_yaml_then_environment_then_overrides(tmp_path: Path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  host: 0.0.0.0\n  port: 9000\nqueue:\n  max_tokens: 300000\n"
                   f"auth:\n  ingest_token: {INGEST}\n  admin_token: {ADMIN}\n"
                   "kafka:\n  bootstrap_servers: broker:9092\nalerts:\n  publisher:\n    linger_ms: 7\n")
    monkeypatch.setenv("SAFETY_MONITOR_SERVER__PORT", "9100")
    monkeypatch.setenv("SAFETY_MONITOR_ALERTS__OUTBOX__PATH", "/data/outbox.sqlite3")
    s = load_settings(cfg, server={"port": 9200})
    assert s.server.host == "0.0.0.0"  # from the file
    assert s.server.port == 9200  # override beats environment beats file
    assert s.queue.max_tokens == 300_000
    assert s.alerts.outbox.path == "/data/outbox.sqlite3"
    assert s.kafka is not None and s.kafka.bootstrap_servers == "broker:9092"
    assert s.alerts.publisher.linger_ms == 7
    assert s.model.hook_name == "blocks.15.hook_resid_post"
    assert INGEST not in repr(s)  # tokens are secrets


def test_environment_alone(monkeypatch):
    monkeypatch.setenv("SAFETY_MONITOR_AUTH__INGEST_TOKEN", INGEST)
    monkeypatch.setenv("SAFETY_MONITOR_AUTH__ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("SAFETY_MONITOR_SAE", "/models/sae")  # the shorthand the other commands use
    monkeypatch.setenv("SAFETY_MONITOR_REDIS__URL", "redis://cache:6380/1")
    s = load_settings()
    assert str(s.sae.path) == "/models/sae"
    assert s.redis is not None and s.redis.url == "redis://cache:6380/1"
    assert s.auth.ingest_token.get_secret_value() == INGEST


@pytest.mark.parametrize("yaml_text, env, expected", [
    ("queue:\n  max_tokens: -1\n", {}, "queue.max_tokens: Input should be greater than or equal to 1"),
    ("queue:\n  max_tokns: 5\n", {}, "queue.max_tokns: unknown setting"),
    ("kafka:\n  bootstrap_servers: [1, 2]\n", {}, "kafka.bootstrap_servers: Input should be a valid string"),
    ("alerts:\n  outbox:\n    max_rows: many\n", {}, "alerts.outbox.max_rows: Input should be a valid integer"),
    ("", {"SAFETY_MONITOR_LIMITS__IDLE_TIMEOUT_S": "soon"}, "limits.idle_timeout_s: Input should be a valid number"),
    ("limits:\n  max_tokens_per_batch: 1000000\n", {}, "queue.max_tokens: 32768 is smaller"),
    ("auth:\n  admin_token: short\n", {}, "auth.admin_token: must be at least 16"),
    ("auth:\n  admin_token: null\n", {}, "auth.admin_token: is required"),
    (f"auth:\n  admin_token: {INGEST}\n", {}, "auth.admin_token: must differ"),
    ("server:\n  port: 70000\n", {}, "server.port: Input should be less than or equal to 65535"),
    ("model_server:\n  sidecar_url: ftp://x\n", {}, "model_server.sidecar_url: String should match"),
    ("- a\n- b\n", {}, "must hold a mapping"),
    ("queue: [\n", {}, "is not valid YAML"),
])
def test_invalid_settings_name_the_field(tmp_path, monkeypatch, yaml_text, env, expected):
    cfg = tmp_path / "c.yaml"
    if "auth:" not in yaml_text and not yaml_text.startswith("-") and "[\n" not in yaml_text:
        yaml_text += f"auth:\n  ingest_token: {INGEST}\n  admin_token: {ADMIN}\n"
    elif "auth:" in yaml_text:
        yaml_text = yaml_text.replace("auth:\n", f"auth:\n  ingest_token: {INGEST}\n")
    cfg.write_text(yaml_text)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as info:
        load_settings(cfg)
    assert expected in str(info.value)


def test_tokens_are_required_unless_auth_is_disabled():
    with pytest.raises(SettingsError, match="auth.ingest_token: is required; set SAFETY_MONITOR_AUTH__INGEST_TOKEN"):
        load_settings()
    assert load_settings(auth={"disabled": True}).auth.disabled


def test_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_serve_refuses_to_start_with_a_message_naming_the_field(tmp_path):
    import subprocess

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"auth:\n  ingest_token: {INGEST}\n  admin_token: {ADMIN}\nqueue:\n  high_water: 2\n")
    r = subprocess.run([console_script(), "serve", "--config", str(cfg)], capture_output=True, text=True,
                       env=subprocess_env(), timeout=120, check=False)
    assert r.returncode == 2
    assert "queue.high_water: Input should be less than or equal to 1" in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_refuses_an_sae_with_the_wrong_pin(tmp_path, sae_dir):
    import subprocess

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"auth:\n  ingest_token: {INGEST}\n  admin_token: {ADMIN}\n"
                   f"sae:\n  path: {sae_dir}\n  sha256: '{'0' * 64}'\n")
    r = subprocess.run([console_script(), "serve", "--config", str(cfg)], capture_output=True, text=True,
                       env=subprocess_env(), timeout=120, check=False)
    assert r.returncode == 2
    assert "sae.sha256:" in r.stderr and "was expected" in r.stderr


def test_the_settings_reference_in_the_docs_is_current():
    from monitor.service.settings_doc import END, START, settings_reference

    text = (Path(__file__).resolve().parents[2] / "docs" / "sidecar.md").read_text()
    block = text[text.index(START) : text.index(END) + len(END)]
    assert block == settings_reference(), "regenerate it: python -m monitor.service.settings_doc docs/sidecar.md"


def test_pin_cpu_needs_a_single_torch_thread():
    with pytest.raises(SettingsError, match=r"server.pin_cpu: 0 .* queue.torch_threads \(2\)"):
        load_settings(auth=TOKENS, server={"pin_cpu": 0}, queue={"torch_threads": 2})
    with pytest.raises(SettingsError, match=r"model_server.pin_cpu: 0 .* model_server.torch_threads \(2\)"):
        load_settings(auth=TOKENS, model_server={"pin_cpu": 0, "torch_threads": 2})


@pytest.mark.parametrize("command, section", [("serve", "server"), ("model-server", "model_server")])
def test_pin_cpu_runs_every_thread_on_that_one_cpu(tmp_path, command, section):
    import os
    import subprocess

    from sidecar_testkit import free_port, wait_http

    allowed = sorted(os.sched_getaffinity(0))
    index = len(allowed) - 1
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"auth:\n  ingest_token: {INGEST}\n  admin_token: {ADMIN}\n"
                   f"{section}:\n  port: {port}\n  pin_cpu: {index}\n")
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([console_script(), command, "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            env=subprocess_env())
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 180, proc)
        tasks = Path(f"/proc/{proc.pid}/task")
        cpus = {(t / "status").read_text().split("Cpus_allowed_list:")[1].split()[0] for t in tasks.iterdir()}
        assert len(list(tasks.iterdir())) > 1  # the event loop and the worker threads
        assert cpus == {str(allowed[index])}
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    assert f"pinned to CPU {allowed[index]}" in (tmp_path / "serve.log").read_text()
    # an index past the CPUs it may use is refused with the count
    cfg.write_text(f"auth:\n  ingest_token: {INGEST}\n  admin_token: {ADMIN}\n{section}:\n  pin_cpu: {len(allowed)}\n")
    r = subprocess.run([console_script(), command, "--config", str(cfg)], capture_output=True, text=True,
                       env=subprocess_env(), timeout=180, check=False)
    assert r.returncode == 2 and f"{section}.pin_cpu: {len(allowed)}, but this process may use only" in r.stderr
