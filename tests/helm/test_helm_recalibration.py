"""The chart's live-calibration parts, rendered by Helm's SDK: the samples switch puts the traffic-samples store on
the outbox volume, and the recalibration CronJob exports the samples and runs ``calibrate --thresholds-from``
with the sidecar's own settings file, in a dry run by default; the commands run for real against a sample
store written where the settings say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helm_testkit import ChartKit, HelmError, container, load_values, mount, scenario_files, sidecar, volume

from detectors.calibration.traffic_samples import (
    DetectorSample,
    FeatureKey,
    TrafficSample,
    TrafficSampleStore,
)
from detectors.spec import DetectorSpec
from monitor.service.settings import load_settings
from monitor.service.sidecar import samples_path

BY_NAME = {p.name.removesuffix("-values.yaml"): p for p in scenario_files()}
SCENARIO = BY_NAME["recalibration"]


def _job(r):
    cj = r.one("CronJob", "demo-safety-monitor-recalibration")
    return cj, cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_samples_are_off_by_default_and_on_the_outbox_volume_when_switched_on(chart: ChartKit):
    assert "samples" not in chart.render_scenario(BY_NAME["default"]).settings()
    r = chart.render_scenario(SCENARIO)
    s = r.settings()["samples"]
    values = load_values(SCENARIO)["samples"]
    assert s["enabled"] is True and s["rate"] == values["rate"] and s["max_rows"] == values["maxRows"]
    outbox_dir = mount(sidecar(r.pod()), "outbox")["mountPath"]
    assert Path(s["path"]).parent == Path(outbox_dir)
    assert Path(s["path"]).parent == Path(r.settings()["alerts"]["outbox"]["path"]).parent


def test_recalibration_job_exports_and_recalibrates_in_a_dry_run(chart: ChartKit):
    r = chart.render_scenario(SCENARIO)
    cj, pod = _job(r)
    assert cj["spec"]["schedule"] == "15 4 * * *" and pod["restartPolicy"] == "Never"
    export, recal = container(pod, "export-samples"), container(pod, "recalibrate")
    settings_file = f"{mount(recal, 'config')['mountPath']}/settings.yaml"
    out = mount(recal, "out")["mountPath"]
    assert export["command"] == ["safety-monitor", "samples", "export", "--config", settings_file,
                                 "--out", f"{out}/samples.jsonl.gz"]
    assert recal["command"] == ["safety-monitor", "calibrate", "--thresholds-from", f"{out}/samples.jsonl.gz",
                                "--config", settings_file, "--out", out, "--dry-run",
                                "--only", "deception_reply,scam_reply"]
    # The samples are read where the sidecar writes them: its outbox claim, on its node (ReadWriteOnce).
    assert mount(export, "outbox")["mountPath"] == mount(sidecar(r.pod()), "outbox")["mountPath"]
    assert volume(pod, "outbox")["persistentVolumeClaim"]["claimName"] == "safety-monitor-outbox"
    assert volume(pod, "out")["persistentVolumeClaim"]["claimName"] == "recalibration-results"
    term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= r.workload()["spec"]["template"]["metadata"]["labels"].items()
    # The same detector directory as the sidecar: the mounted ConfigMap.
    assert mount(recal, "detectors")["mountPath"] == r.settings()["detectors"]["dir"]
    assert volume(pod, "detectors")["configMap"]["name"] == "reviewed-detectors"
    np_ = r.one("NetworkPolicy", "demo-safety-monitor-recalibration")
    assert np_["spec"]["egress"] == [] and np_["spec"]["ingress"] == []


def test_applying_writes_a_whole_detector_directory(chart: ChartKit):
    _, pod = _job(chart.render_scenario(SCENARIO, {"recalibration": {"dryRun": False, "targetFpr": 0.005,
                                                                      "only": []}}))
    cmd = container(pod, "recalibrate")["command"]
    assert "--dry-run" not in cmd and cmd[cmd.index("--out") + 1].endswith("/detectors")
    assert cmd[cmd.index("--target-fpr") + 1] == "0.005" and "--only" not in cmd


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"samples": {"enabled": False}}, "recalibration.enabled needs samples.enabled"),
        ({"outbox": {"persistence": {"enabled": False}}}, "needs mode=deployment with outbox.persistence"),
        ({"recalibration": {"output": {"claimName": ""}}}, r"recalibration\.output\.claimName"),
    ],
)
def test_inconsistent_recalibration_values_fail_with_a_message(chart: ChartKit, extra, message):
    with pytest.raises(HelmError, match=message):
        chart.render_scenario(SCENARIO, extra)


def test_the_jobs_commands_run_against_the_store_the_settings_name(chart: ChartKit, tmp_path):
    """The rendered settings file, with its paths moved under tmp_path: ``samples export --config`` finds the store
    the sidecar writes, and ``calibrate --thresholds-from --config`` the sidecar's detector directory."""
    import yaml

    from monitor.cli.commands import main as cli

    r = chart.render_scenario(SCENARIO)
    _, pod = _job(r)
    settings = r.settings()
    det_dir = tmp_path / "detectors"
    settings["samples"]["path"] = str(tmp_path / "outbox" / "traffic-samples.sqlite3")
    settings["alerts"]["outbox"]["path"] = str(tmp_path / "outbox" / "alerts-outbox.sqlite3")
    settings["detectors"]["dir"] = str(det_dir)
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(settings))
    spec = DetectorSpec(name="deception_reply", concept="deception", model="m", hook="h", sae_sha256="0" * 64,
                        latents=[1, 2], weights=[1.0, 1.0], threshold=1.0, kind="reply", span="response")
    spec.save(det_dir / "deception_reply.json")
    path = samples_path(load_settings(config, auth={"disabled": True}))
    assert path == tmp_path / "outbox" / "traffic-samples.sqlite3"
    store = TrafficSampleStore(path)
    rng = np.random.default_rng(0)
    store.append_many([TrafficSample(time=1e9 + i, request_id=f"r{i}", n_tokens=30, n_prompt_tokens=10,
                                     n_response_tokens=20, n_turns=2,
                                     detectors=[DetectorSample(FeatureKey.of(spec), np.array([v, 0], np.float32), v,
                                                               v >= 1.0)])
                       for i, v in enumerate(rng.uniform(0, 2, 600))])
    store.close()
    out = tmp_path / "out"

    recal = container(pod, "recalibrate")
    mapped = {f"{mount(recal, 'config')['mountPath']}/settings.yaml": str(config), mount(recal, "out")["mountPath"]: str(out)}

    def local(argv: list[str]) -> list[str]:  # the pod's paths -> this test's
        return [next((v + a[len(k):] for k, v in mapped.items() if a.startswith(k)), a) for a in argv]

    assert cli(local(container(pod, "export-samples")["command"][1:])) == 0
    assert cli(local(container(pod, "recalibrate")["command"][1:])) == 0
    proposed = DetectorSpec.load(out / "proposed" / "deception_reply.json")
    assert proposed.version == "2" and proposed.threshold > 1.0
    assert (out / "proposed" / "reports" / "recalibration.md").is_file()
    assert DetectorSpec.load(det_dir / "deception_reply.json").threshold == 1.0  # nothing applied
