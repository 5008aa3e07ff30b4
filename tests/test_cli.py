"""The command line as a user runs it: encode, sae hash, and the feature toolkit's commands."""

from __future__ import annotations

import json

import pytest

from monitor.artifacts import default_sae_dir
from monitor.cli import main
from monitor.sae import FrozenSAE

TEXT = "Congratulations! You have won a free cruise."


@pytest.fixture(scope="module")
def sae():
    return FrozenSAE.load(default_sae_dir())


def test_encode_prints_the_top_latents_of_every_token(capsys, default_model, sae):
    assert main(["encode", TEXT, "--top", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sae_sha256"] == sae.sha256 and out["layer"] == 15
    ids = default_model.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert [t["position"] for t in out["tokens"]] == list(range(len(ids)))
    assert out["tokens"][0]["latents"] == []  # the attention sink is not encoded
    assert all(1 <= len(t["latents"]) <= 3 for t in out["tokens"][1:])
    values = [v for t in out["tokens"][1:] for _, v in t["latents"]]
    assert all(v > 0 for v in values)


def test_encode_without_an_sae_explains_where_it_lives(capsys, monkeypatch, tmp_path):
    from monitor import artifacts

    monkeypatch.delenv("SAFETY_MONITOR_SAE", raising=False)
    monkeypatch.setattr(artifacts, "DEFAULTS_FILE", tmp_path / "missing.json")
    assert main(["encode", TEXT]) == 2
    err = capsys.readouterr().err
    assert "an SAE is needed" in err and "artifacts" in err


def test_sae_hash_matches_the_pin(capsys, sae):
    assert main(["sae", "hash", str(default_sae_dir())]) == 0
    assert capsys.readouterr().out.strip() == sae.sha256


def test_features_neighbors_and_search(capsys, sae):
    assert main(["features", "neighbors", "5", "-n", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and all(r["latent"] != 5 for r in rows)
    assert [r["cosine"] for r in rows] == sorted((r["cosine"] for r in rows), reverse=True)
    assert main(["features", "search", TEXT, "-n", "5", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert 1 <= len(found) <= 5 and all(r["activation"] > 0 for r in found)


def test_features_top_writes_an_html_page(tmp_path, capsys):
    page = tmp_path / "latent.html"
    assert main(["features", "top", "7", "-n", "2", "--html", str(page)]) == 0
    assert "Latent 7" in page.read_text()


def test_steer_needs_exactly_one_target(capsys):
    assert main(["steer", "hello", "--latent", "3"]) == 2
    assert "exactly one of --scale" in capsys.readouterr().err


def test_a_bad_latent_id_is_a_clear_error(capsys, sae):
    assert main(["features", "top", str(sae.cfg.d_sae + 5)]) == 2
    assert "latent must be in" in capsys.readouterr().err


def test_building_the_cli_imports_no_offline_libraries():
    """Every command, `serve` included, builds the whole parser: importing scikit-learn/scipy there
    once cost the sidecar ~90 MB of resident memory. Offline libraries load inside their commands."""
    import subprocess
    import sys

    code = ("import sys, monitor.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('sklearn', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
