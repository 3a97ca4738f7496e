"""``benchmarks/inspect/compare.py``, the check that Inspect's answers through ``saetools serve``
equal saetools' own generation: fed logs in Inspect's JSON shape, built from real requests to a
tiny server (the requests Inspect's ``openai-api`` provider sends: chat, temperature 0,
``max_tokens``, ``logprobs``, the steering in the body's ``saetools`` field). Inspect itself is not
installed here; ``benchmarks/inspect/run.sh`` runs the real thing."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import openai
import pytest
import torch
from conftest import D_MODEL, make_tiny_model, make_tiny_tokenizer, new_tiny_model

from saetools.directions import DirectionSet
from saetools.serve import ChatServer, ServeConfig, serve_in_thread

ROOT = Path(__file__).resolve().parents[1]
SITE = "blocks.1.hook_resid_post"
QUESTIONS = {"fr": "What is the capital of France?", "hi": "hello", "fox": "The quick brown fox"}
MAX_TOKENS = 6


def _compare_module():
    spec = importlib.util.spec_from_file_location(
        "inspect_compare", ROOT / "benchmarks" / "inspect" / "compare.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ds():
    v = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(3))
    return DirectionSet({SITE: v}, {})


@pytest.fixture(scope="module")
def client(ds):
    srv = ChatServer(
        new_tiny_model("llama"),
        make_tiny_tokenizer(),
        ServeConfig(model_name="tiny", batch_wait_ms=2),
        directions={"em": ds},
    )
    with serve_in_thread(srv) as running:
        yield openai.OpenAI(base_url=running.base_url, api_key="unused", max_retries=0)


def _inspect_log(client, steer: list[dict]) -> dict:
    """What ``inspect eval --log-format json`` records for these questions (the parts compare.py
    reads), from the same requests Inspect sends."""
    config = {"max_tokens": MAX_TOKENS, "temperature": 0.0, "logprobs": True}
    if steer:
        config["extra_body"] = {"saetools": {"steer": steer}}
    samples = []
    for sid, q in QUESTIONS.items():
        user = {"role": "user", "content": q, "source": "input"}
        r = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": q}],
            temperature=0.0,
            max_tokens=MAX_TOKENS,
            logprobs=True,
            extra_body=config.get("extra_body"),
        )
        text = r.choices[0].message.content
        lps = [{"token": t.token, "logprob": t.logprob} for t in r.choices[0].logprobs.content]
        samples.append(
            {
                "id": sid,
                "target": "Paris",
                "messages": [
                    user,
                    {"role": "assistant", "content": [{"type": "text", "text": text}]},
                ],
                "output": {"completion": text, "choices": [{"logprobs": {"content": lps}}]},
                "scores": {"includes": {"value": "C" if "paris" in text.lower() else "I"}},
            }
        )
    return {
        "eval": {
            "task": "capitals",
            "model_generate_config": config,
            "scorers": [{"name": "includes"}],
        },
        "results": {"scores": [{"metrics": {"accuracy": {"value": 0.0}}}]},
        "samples": samples,
    }


@pytest.mark.parametrize("alpha", [None, 4.0])
def test_compare_finds_the_servers_answers_equal(client, ds, alpha):
    compare = _compare_module()
    steer = (
        [] if alpha is None else [{"site": SITE, "op": "add", "alpha": alpha, "direction": "em"}]
    )
    log = _inspect_log(client, steer)
    lm = types.SimpleNamespace(model=make_tiny_model("llama"), tokenizer=make_tiny_tokenizer())
    r = compare.check_log(lm, {"em": ds}, "log.json", log)
    assert r["steer"] == steer and r["max_tokens"] == MAX_TOKENS
    assert r["equal"] == r["n"] == len(QUESTIONS), r["samples"]
    assert r["logprob_tokens"] > 0 and r["max_abs_dlogprob"] < 1e-4
    assert r["inspect_accuracy"] == r["hf_accuracy"]
    # a different answer is seen as one, and counted apart
    log["samples"][0]["output"]["completion"] += " (edited)"
    assert compare.check_log(lm, {"em": ds}, "log.json", log)["equal"] == len(QUESTIONS) - 1


def test_compare_refuses_steering_it_cannot_rebuild(ds):
    compare = _compare_module()
    with pytest.raises(SystemExit, match="pass --directions other=FILE"):
        compare.interventions([{"site": SITE, "direction": "other"}], {"em": ds})
    with pytest.raises(SystemExit, match="vector"):
        compare.interventions([{"site": SITE, "vector": [1.0] * D_MODEL}], {"em": ds})
    assert compare.score("includes", "It is PARIS.", "Paris") is True
    assert compare.score("choice", "ANSWER: b", "B") is True
