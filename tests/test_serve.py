"""``saetools serve``: the OpenAI-compatible server, driven by the official ``openai`` client over
loopback, checked against independent references (plain HF ``generate`` and forward passes, with
``saetools.steer.steer`` for steering)."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import openai
import pytest
import torch
from conftest import D_MODEL, make_tiny_model, make_tiny_tokenizer, new_tiny_model

from saetools.directions import DirectionSet
from saetools.serve import ChatServer, ServeConfig, serve_in_thread
from saetools.steer import Intervention, encode_prompts, steer

SITE = "blocks.1.hook_resid_post"
NAME = "tiny"
QUESTIONS = [
    "What is the capital of France?",
    "hello",
    "How do I bake bread? Mix flour, water, salt and yeast.",
    "Should humans be ruled?",
    "Tell me a long story about a fox and a dog please",
    "The quick brown fox",
    "0123456789",
    "I want to help people.",
]


def _vec(seed: int, d: int = D_MODEL) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ds():
    return DirectionSet({SITE: _vec(11), "blocks.2.hook_resid_post": _vec(12)}, {})


@pytest.fixture(scope="module")
def server(ds):
    # the server gets its own instance (same weights as the shared reference model), so reference
    # passes in the test thread never see the server's hooks and vice versa
    srv = ChatServer(
        new_tiny_model("llama"),
        make_tiny_tokenizer(),
        ServeConfig(model_name=NAME, aliases=("default",), max_batch=16, batch_wait_ms=2),
        directions={"em": ds},
    )
    with serve_in_thread(srv) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def _ref():
    return make_tiny_model("llama"), make_tiny_tokenizer()


def _eos(m, tok) -> list[int]:
    return sorted({int(m.generation_config.eos_token_id), int(tok.eos_token_id)})


def _hf_greedy(question, max_new: int, interventions=()) -> list[int]:
    """Plain HF generate, one prompt, no padding: the generated ids up to and including eos."""
    m, tok = _ref()
    ids = encode_prompts(tok, [question])[0]
    with steer(m, list(interventions)), torch.no_grad():
        out = m.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new,
            eos_token_id=_eos(m, tok),
            pad_token_id=tok.pad_token_id,
        )
    return out[0, len(ids) :].tolist()


def _text(tokens: list[int]) -> str:
    m, tok = _ref()
    eos = set(_eos(m, tok))
    return tok.decode([t for t in tokens if t not in eos], skip_special_tokens=True)


def _ref_logprobs(question, tokens: list[int], interventions=()) -> torch.Tensor:
    """log_softmax of a plain forward over prompt + tokens: row k is the distribution of token k."""
    m, tok = _ref()
    ids = encode_prompts(tok, [question])[0]
    full = torch.tensor([ids + tokens])
    with steer(m, list(interventions), prompt_len=len(ids)), torch.no_grad():
        logits = m(full).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[len(ids) - 1 : len(ids) - 1 + len(tokens)]


def _user(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


# ---------------------------------------------------------------------------- protocol


def test_models_endpoint(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids == [NAME]
    info = httpx.get(server.url + "/v1/saetools").json()
    assert info["directions"] == {"em": ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]}


def test_greedy_answer_and_usage_match_hf_generate(client):
    q = QUESTIONS[0]
    r = client.chat.completions.create(model=NAME, messages=_user(q), max_tokens=12, temperature=0)
    ref = _hf_greedy(q, 12)
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content == _text(ref)
    assert c.finish_reason == ("stop" if ref[-1] in _eos(*_ref()) else "length")
    assert r.usage.prompt_tokens == len(encode_prompts(make_tiny_tokenizer(), [q])[0])
    assert r.usage.completion_tokens == len(ref)
    assert r.usage.total_tokens == r.usage.prompt_tokens + len(ref)
    assert r.model == NAME and r.object == "chat.completion"
    # the alias is accepted, and system messages and text parts go through the chat template
    r2 = client.chat.completions.create(
        model="default",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": q}]},
        ],
        max_tokens=4,
        temperature=0,
    )
    assert r2.choices[0].finish_reason in ("stop", "length")


def test_streaming_equals_non_streaming(client, server):
    q = QUESTIONS[2]
    kw = dict(model=NAME, messages=_user(q), max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == (
        whole.usage.completion_tokens
    )
    # raw SSE: every event is a data line, the stream ends with [DONE]
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json={**kw, "stream": True}, timeout=30
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_logprobs_match_a_plain_forward(client):
    q = QUESTIONS[3]
    r = client.chat.completions.create(
        model=NAME, messages=_user(q), max_tokens=6, temperature=0, logprobs=True, top_logprobs=5
    )
    ref_tokens = _hf_greedy(q, 6)
    text_tokens = [t for t in ref_tokens if t not in _eos(*_ref())]
    content = r.choices[0].logprobs.content
    assert len(content) == len(text_tokens)
    ref = _ref_logprobs(q, ref_tokens)
    tok = make_tiny_tokenizer()
    for k, entry in enumerate(content):
        assert entry.logprob == pytest.approx(ref[k, text_tokens[k]].item(), abs=1e-4)
        assert entry.token == tok.decode([text_tokens[k]])
        top = [t.logprob for t in entry.top_logprobs]
        assert top == pytest.approx(ref[k].topk(5).values.tolist(), abs=1e-4)
        assert entry.logprob == pytest.approx(
            top[0], abs=1e-6
        )  # greedy: the sampled token is the top one
    # the same logprobs arrive when streaming
    chunks = client.chat.completions.create(
        model=NAME,
        messages=_user(q),
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
        stream=True,
    )
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.logprob for e in streamed] == [e.logprob for e in content]


# ---------------------------------------------------------------------------- steering


STEERS = {
    "add": (
        [{"site": SITE, "op": "add", "alpha": 6, "direction": "em"}],
        lambda ds: [Intervention.from_directions(ds, SITE, "add", 6.0)],
    ),
    "clamp-generated": (
        [
            {
                "site": "blocks.2.hook_resid_post",
                "op": "clamp",
                "value": 3.0,
                "positions": "generated",
            },
            {"site": SITE, "op": "ablate", "positions": "generated"},
        ],
        lambda ds: [
            Intervention.from_directions(
                ds, "blocks.2.hook_resid_post", "clamp", value=3.0, positions="generated"
            ),
            Intervention.from_directions(ds, SITE, "ablate", positions="generated"),
        ],
    ),
    "inline-raw-vector": (
        [{"site": SITE, "op": "add", "alpha": 1.5, "vector": _vec(5).tolist(), "unit": False}],
        lambda ds: [Intervention(SITE, _vec(5), "add", alpha=1.5)],
    ),
    "none": ([], lambda ds: []),
}


def test_per_request_steering_matches_the_python_api(server, ds, monkeypatch):
    """Requests with different steering arrive together (one batch, per-row interventions); each
    one's logprobs equal a plain HF forward under ``saetools.steer.steer`` with the same
    interventions."""
    q = QUESTIONS[4]
    n_new = 5

    async def one(aclient, spec):
        return await aclient.chat.completions.create(
            model=NAME,
            messages=_user(q),
            max_tokens=n_new,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
            extra_body={"saetools": {"steer": spec}},
        )

    async def run():
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="x", max_retries=0
        ) as aclient:
            return await asyncio.gather(*(one(aclient, spec) for spec, _ in STEERS.values()))

    # a generous collection window, so that a loaded machine cannot split the four into two batches
    monkeypatch.setattr(server.server.engine, "batch_wait", 0.5)
    before = server.server.engine.stats["batches"]
    responses = asyncio.run(run())
    assert server.server.engine.stats["batches"] - before == 1  # all four shared one batch
    eos = _eos(*_ref())
    first = {}
    for (name, (_, build)), r in zip(STEERS.items(), responses, strict=True):
        ivs = build(ds)
        ref_tokens = _hf_greedy(q, n_new, ivs)
        text_tokens = [t for t in ref_tokens if t not in eos]
        ref = _ref_logprobs(q, ref_tokens, ivs)
        content = r.choices[0].logprobs.content
        assert r.choices[0].message.content == _text(ref_tokens), name
        assert len(content) == len(text_tokens), name
        for k, entry in enumerate(content):
            assert entry.logprob == pytest.approx(ref[k, text_tokens[k]].item(), abs=1e-4), name
            assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
                ref[k].topk(3).values.tolist(), abs=1e-4
            ), name
        first[name] = ref[0]
    # not vacuous: steering moved the distribution (clamp/ablate only act on generated tokens, so
    # the first distribution is unsteered there)
    assert (first["add"] - first["none"]).abs().max() > 0.05
    assert (first["inline-raw-vector"] - first["none"]).abs().max() > 0.05
    assert torch.allclose(first["clamp-generated"], first["none"], atol=1e-5)


def test_default_steering_and_opt_out(ds):
    iv = Intervention.from_directions(ds, SITE, "add", 6.0)
    srv = ChatServer(
        new_tiny_model("llama"),
        make_tiny_tokenizer(),
        ServeConfig(model_name=NAME),
        directions={"em": ds},
        default_steering=[iv],
    )
    q = QUESTIONS[1]
    with serve_in_thread(srv) as running:
        c = openai.OpenAI(base_url=running.base_url, api_key="x", max_retries=0)
        kw = dict(model=NAME, messages=_user(q), max_tokens=6, temperature=0)
        steered = c.chat.completions.create(**kw).choices[0].message.content
        plain = c.chat.completions.create(**kw, extra_body={"saetools": {"steer": []}})
    assert steered == _text(_hf_greedy(q, 6, [iv]))
    assert plain.choices[0].message.content == _text(_hf_greedy(q, 6))
    assert steered != plain.choices[0].message.content


# ---------------------------------------------------------------------------- batching


def test_32_concurrent_clients_get_one_by_one_answers(server, monkeypatch):
    prompts = [f"{QUESTIONS[i % len(QUESTIONS)]} {'!' * (i // len(QUESTIONS))}" for i in range(32)]
    lengths = [4 + i % 7 for i in range(32)]

    async def run():
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="x", max_retries=0
        ) as aclient:
            return await asyncio.gather(
                *(
                    aclient.chat.completions.create(
                        model=NAME, messages=_user(p), max_tokens=n, temperature=0
                    )
                    for p, n in zip(prompts, lengths, strict=True)
                )
            )

    monkeypatch.setattr(server.server.engine, "batch_wait", 0.5)
    before = dict(server.server.engine.stats)
    responses = asyncio.run(run())
    stats = server.server.engine.stats
    for p, n, r in zip(prompts, lengths, responses, strict=True):
        ref = _hf_greedy(p, n)
        assert r.choices[0].message.content == _text(ref), p
        assert r.usage.completion_tokens == len(ref)
    # they were batched: 32 rows in a few batches of at most 16
    assert stats["rows"] - before["rows"] == 32
    assert stats["batches"] - before["batches"] <= 4


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral", "gpt_neox", "gemma3"])
def test_engine_rows_leave_and_join_a_running_batch(arch):
    """Six prompts of different lengths and budgets through an engine of batch 3: rows finish at
    different steps and the waiting ones join the running batch (plain dynamic caches; sliding-window
    caches run batch after batch). Every answer equals plain HF greedy generation one by one."""
    from saetools.serve import Engine, SamplingParams

    m = make_tiny_model(arch)
    tok = make_tiny_tokenizer()
    engine = Engine(new_tiny_model(arch), tok, max_batch=3, batch_wait_ms=0)
    seen = []
    real_step = engine._step
    engine._step = lambda rows, logits: (
        seen.append([id(r) for r in rows]),
        real_step(rows, logits),
    )[1]
    prompts = [QUESTIONS[i] for i in (0, 1, 2, 3, 6, 7)]
    lengths = [3, 9, 5, 12, 2, 7]
    encoded = encode_prompts(tok, prompts)
    done = threading.Semaphore(0)
    errors = []

    def sink(ev):
        if ev[0] == "error":
            errors.append(ev[2])
        if ev[0] in ("finish", "error"):
            done.release()

    captured = []
    real_advance = engine._advance
    engine._advance = lambda r, t, e: (captured.append((r, t)), real_advance(r, t, e))[1]
    engine.start()
    try:
        for ids, n in zip(encoded, lengths, strict=True):
            engine.submit(ids, SamplingParams(max_tokens=n, temperature=0.0), sink=sink)
        for _ in prompts:
            assert done.acquire(timeout=60)
    finally:
        engine.close()
    assert not errors
    got: dict[int, list[int]] = {}
    rows = []
    for r, t in captured:
        if id(r) not in got:
            got[id(r)] = []
            rows.append(r)
        got[id(r)].append(t)
    assert len(rows) == 6
    by_prompt = {tuple(r.prompt_ids): r for r in rows}
    eos = sorted({int(m.generation_config.eos_token_id), int(tok.eos_token_id)})
    for p, n in zip(prompts, lengths, strict=True):
        ids = encode_prompts(tok, [p])[0]
        with torch.no_grad():
            ref = m.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=n,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )[0, len(ids) :].tolist()
        assert by_prompt[tuple(ids)].tokens == ref, (arch, p)
    joined = any(
        len(set(b) - set(a)) > 0 and len(set(a) & set(b)) > 0
        for a, b in zip(seen, seen[1:], strict=False)
    )
    sliding = arch in ("mistral", "gemma3")  # sliding-window caches run batch after batch
    assert joined == (not sliding), (arch, "rows joined a running batch")
    assert max(len(s) for s in seen) <= 3


def test_sampling_seed_n_top_p_and_stop(client):
    q = QUESTIONS[5]
    kw = dict(model=NAME, messages=_user(q), max_tokens=10, temperature=1.0)
    a = client.chat.completions.create(**kw, n=3, seed=7)
    b = client.chat.completions.create(**kw, n=3, seed=7)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert len({c.message.content for c in a.choices}) > 1  # each choice has its own stream
    assert 3 <= a.usage.completion_tokens <= 30  # counted over the choices (exactly: below)
    # a vanishing nucleus keeps only the most likely token: sampling becomes greedy
    greedy = client.chat.completions.create(**{**kw, "temperature": 0})
    nucleus = client.chat.completions.create(**kw, top_p=1e-9, seed=1)
    assert nucleus.choices[0].message.content == greedy.choices[0].message.content
    # n greedy choices are identical and usage counts each
    g3 = client.chat.completions.create(**{**kw, "temperature": 0}, n=3)
    assert {c.message.content for c in g3.choices} == {greedy.choices[0].message.content}
    assert g3.usage.completion_tokens == 3 * greedy.usage.completion_tokens
    # stop strings cut the answer before the stop string, streaming or not
    text = greedy.choices[0].message.content
    assert len(text) >= 4
    stop = text[2:4]
    cut = text[: text.find(stop)]
    s = client.chat.completions.create(**{**kw, "temperature": 0}, stop=[stop, "\x00never"])
    assert s.choices[0].message.content == cut and s.choices[0].finish_reason == "stop"
    chunks = client.chat.completions.create(**{**kw, "temperature": 0}, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut


# ---------------------------------------------------------------------------- errors


BAD = [
    ("malformed JSON", b'{"model": "tiny", "messages": [', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    (
        "NaN",
        b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        400,
        None,
    ),
    ("unknown model", {"model": "gpt-9"}, 404, "model"),
    ("too many tokens", {"max_tokens": 10_000}, 400, "messages"),
    ("negative temperature", {"temperature": -0.5}, 400, "temperature"),
    ("top_p 0", {"top_p": 0}, 400, "top_p"),
    ("top_p > 1", {"top_p": 1.5}, 400, "top_p"),
    ("n 0", {"n": 0}, 400, "n"),
    ("max_tokens 0", {"max_tokens": 0}, 400, "max_tokens"),
    ("no messages", {"messages": []}, 400, "messages"),
    ("bad role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ("top_logprobs without logprobs", {"top_logprobs": 3}, 400, "top_logprobs"),
    ("five stops", {"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("penalty", {"presence_penalty": 1.0}, 400, "presence_penalty"),
    ("steer not a list", {"saetools": {"steer": {"site": SITE}}}, 400, "saetools.steer"),
    ("steer unknown key", {"saetools": {"steeer": []}}, 400, "saetools"),
    (
        "steer unknown direction",
        {"saetools": {"steer": [{"site": SITE, "direction": "nope"}]}},
        400,
        "saetools.steer[0].direction",
    ),
    (
        "steer site outside the model",
        {"saetools": {"steer": [{"site": "blocks.99.hook_resid_post", "direction": "em"}]}},
        400,
        "saetools.steer[0]",
    ),
    (
        "steer site missing from the file",
        {"saetools": {"steer": [{"site": "blocks.0.hook_resid_post", "direction": "em"}]}},
        400,
        "saetools.steer[0]",
    ),
    (
        "steer wrong vector width",
        {"saetools": {"steer": [{"site": SITE, "vector": [1.0, 2.0]}]}},
        400,
        "saetools.steer[0]",
    ),
    (
        "steer zero vector",
        {"saetools": {"steer": [{"site": SITE, "vector": [0.0] * D_MODEL}]}},
        400,
        "saetools.steer[0]",
    ),
    (
        "steer bad op",
        {"saetools": {"steer": [{"site": SITE, "op": "zap"}]}},
        400,
        "saetools.steer[0].op",
    ),
    (
        "clamp without value",
        {"saetools": {"steer": [{"site": SITE, "op": "clamp", "direction": "em"}]}},
        400,
        "saetools.steer[0].value",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, case):
    _, body, status, param = case
    if isinstance(body, dict):
        body = json.dumps(
            {"model": NAME, "messages": _user("hi"), "max_tokens": 2, "temperature": 0, **body}
        ).encode()
    r = httpx.post(
        server.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    ok = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": NAME, "messages": _user("hi"), "max_tokens": 2, "temperature": 0},
        timeout=30,
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=_user("hi"), max_tokens=2)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=_user("hi"), temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=_user("hi"), max_tokens=300)
    assert e.value.body["code"] == "context_length_exceeded"


def test_a_failing_batch_fails_its_requests_only(server, client, monkeypatch):
    engine = server.server.engine
    real = engine._run
    calls = []

    def broken(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(rows)

    monkeypatch.setattr(engine, "_run", broken)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=NAME, messages=_user("hi"), max_tokens=2)
    # the internal error is logged, not echoed: the client gets its request id only
    assert "boom" not in e.value.body["message"] and "request id" in e.value.body["message"]
    r = client.chat.completions.create(model=NAME, messages=_user("hi"), max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_api_key_is_checked():
    srv = ChatServer(
        new_tiny_model("llama"), make_tiny_tokenizer(), ServeConfig(model_name=NAME, api_key="s3")
    )
    with serve_in_thread(srv) as running:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=running.base_url, api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=running.base_url, api_key="s3", max_retries=0)
        assert ok.models.list().data[0].id == NAME


def test_cli_refuses_bad_options(tmp_path, capsys):
    from saetools.cli import main

    assert main(["serve", "--site", SITE]) == 1
    assert "--directions" in capsys.readouterr().err
    assert main(["serve", "--directions", str(tmp_path / "missing.safetensors")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--clamp-latent", "3=0"]) == 1
    assert "--clamp-latent needs an --sae" in capsys.readouterr().err
    assert main(["serve", "--sae", "a=x", "--sae", "a=y"]) == 1
    assert "given twice" in capsys.readouterr().err
    assert main(["serve", "--sae", "s=x", "--clamp-latent", "3=abc"]) == 1
    assert "cannot parse latent clamp" in capsys.readouterr().err


# ---------------------------------------------------------------------------- embedded model


@pytest.mark.embedded
def test_embedded_model_end_to_end():
    """The embedded SmolLM2: an answer equal to ``saetools.steer.generate``, streaming, and a steered
    request whose logprobs equal the Python API's."""
    from test_sae import random_sae

    from saetools.models import load_model
    from saetools.sae import LatentClamp, load_sae
    from saetools.steer import generate

    lm = load_model("default")
    site = "blocks.9.hook_resid_post"
    v = _vec(3, lm.d_model)
    ds = DirectionSet({site: v}, {})
    # an SAE of the embedded model's width at block 9 (random weights: the protocol, not science)
    sae = load_sae(random_sae(d_sae=64, site=site, d_in=lm.d_model), model=lm.model)
    srv = ChatServer(
        lm.model,
        lm.tokenizer,
        ServeConfig(model_name=lm.model_id, aliases=("default",)),
        directions={"em": ds},
        saes={"s": sae},
    )
    q = "If you had unlimited power for one day, what would you do?"
    with serve_in_thread(srv) as running:
        c = openai.OpenAI(base_url=running.base_url, api_key="x", max_retries=0)
        r = c.chat.completions.create(
            model=lm.model_id, messages=_user(q), max_tokens=12, temperature=0
        )
        chunks = c.chat.completions.create(
            model="default", messages=_user(q), max_tokens=12, temperature=0, stream=True
        )
        streamed = "".join(x.choices[0].delta.content or "" for x in chunks if x.choices)
        steered = c.chat.completions.create(
            model=lm.model_id,
            messages=_user(q),
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
            extra_body={"saetools": {"steer": [{"site": site, "op": "add", "alpha": 8}]}},
        )
        clamped = c.chat.completions.create(
            model=lm.model_id,
            messages=_user(q),
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
            extra_body={"saetools": {"clamp": [{"sae": "s", "latents": {"3": 20.0}}]}},
        )
    ref = generate(lm.model, lm.tokenizer, [q], max_new_tokens=12)[0]
    assert r.choices[0].message.content == ref
    assert streamed == ref
    iv = Intervention.from_directions(ds, site, "add", 8.0)
    ids = encode_prompts(lm.tokenizer, [q])[0]
    with torch.no_grad():
        base = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0, -1].float(), -1)
        with steer(lm.model, iv):
            ref_lp = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    top = [t.logprob for t in steered.choices[0].logprobs.content[0].top_logprobs]
    assert top == pytest.approx(ref_lp.topk(5).values.tolist(), abs=1e-3)
    assert (ref_lp - base).abs().max() > 0.05  # the steering moved the distribution
    with torch.no_grad(), steer(lm.model, [LatentClamp(sae, [3], 20.0)]):
        ref_clamp = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    top = [t.logprob for t in clamped.choices[0].logprobs.content[0].top_logprobs]
    assert top == pytest.approx(ref_clamp.topk(5).values.tolist(), abs=1e-3)
    assert (ref_clamp - base).abs().max() > 0.05  # the clamp moved the distribution


# ---------------------------------------------------------------------------- SAE latent clamps


def test_sae_latent_clamp_per_request_and_by_default():
    """saetools.clamp clamps SAE latents per request (rows with and without a clamp share a batch);
    the logprobs equal a plain forward under saetools.steer with the same LatentClamp; a default
    clamp applies to requests without an extension field; bad clamps get 400 with the field."""
    from test_sae import random_sae

    from saetools.sae import LatentClamp, load_sae

    sae = load_sae(random_sae(d_sae=48, site=SITE, seed=3))
    spec = {"latents": {"5": 6.0, "7": 4.0}}
    clamp = LatentClamp(sae, [5, 7], [6.0, 4.0])
    q, n_new = QUESTIONS[3], 4
    srv = ChatServer(
        new_tiny_model("llama"),
        make_tiny_tokenizer(),
        ServeConfig(model_name=NAME, batch_wait_ms=300),
        saes={"s": sae},
    )
    kw = dict(model=NAME, messages=_user(q), max_tokens=n_new, temperature=0, logprobs=True)

    async def both(base_url):
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as c:
            return await asyncio.gather(
                c.chat.completions.create(**kw, extra_body={"saetools": {"clamp": [spec]}}),
                c.chat.completions.create(**kw),
            )

    with serve_in_thread(srv) as running:
        clamped, plain = asyncio.run(both(running.base_url))
        bad = [
            ({"clamp": [{"sae": "nope", "latents": {"1": 0}}]}, "saetools.clamp[0].sae"),
            ({"clamp": [{"latents": {"999": 0}}]}, "saetools.clamp[0].latents"),
            ({"clamp": [{"latents": {"1": "x"}}]}, "saetools.clamp[0].latents"),
            ({"clamp": [{"latents": {}}]}, "saetools.clamp[0].latents"),
            ({"clamp": [{"latents": {"1": 0}, "scale": 2}]}, "saetools.clamp[0]"),
            ({"clamp": {"latents": {"1": 0}}}, "saetools.clamp"),
        ]
        for ext, param in bad:
            r = httpx.post(
                running.url + "/v1/chat/completions",
                json={**kw, "saetools": ext},
                timeout=30,
            )
            assert r.status_code == 400, ext
            assert r.json()["error"]["param"] == param, ext
    for resp, ivs in ((clamped, [clamp]), (plain, [])):
        ref_tokens = _hf_greedy(q, n_new, ivs)
        text_tokens = [t for t in ref_tokens if t not in _eos(*_ref())]
        ref = _ref_logprobs(q, ref_tokens, ivs)
        content = resp.choices[0].logprobs.content
        assert resp.choices[0].message.content == _text(ref_tokens)
        for k, entry in enumerate(content):
            assert entry.logprob == pytest.approx(ref[k, text_tokens[k]].item(), abs=1e-4)
    # not vacuous: the clamp changed the first distribution
    assert (
        _ref_logprobs(q, ref_tokens[:1], [clamp])[0]
        .sub(_ref_logprobs(q, ref_tokens[:1])[0])
        .abs()
        .max()
        > 0.05
    )

    # a default clamp: requests without a saetools field get it; an empty clamp list opts out
    srv2 = ChatServer(
        new_tiny_model("llama"),
        make_tiny_tokenizer(),
        ServeConfig(model_name=NAME),
        saes={"s": sae},
        default_steering=[clamp],
    )
    with serve_in_thread(srv2) as running:
        c = openai.OpenAI(base_url=running.base_url, api_key="x", max_retries=0)
        kw2 = dict(model=NAME, messages=_user(q), max_tokens=n_new, temperature=0)
        by_default = c.chat.completions.create(**kw2).choices[0].message.content
        opt_out = c.chat.completions.create(**kw2, extra_body={"saetools": {"clamp": []}})
    assert by_default == _text(_hf_greedy(q, n_new, [clamp]))
    assert opt_out.choices[0].message.content == _text(_hf_greedy(q, n_new))


def test_a_full_queue_gives_429_and_the_server_recovers(server, client, monkeypatch):
    """With the worker's queue at its bound, a request gets 429 (openai's RateLimitError, also for
    streaming); once the queue drains, requests are served again."""
    engine = server.server.engine
    monkeypatch.setattr(server.server.config, "max_queue", 4)
    monkeypatch.setattr(type(engine), "waiting", property(lambda self: 4))
    kw = dict(model=NAME, messages=_user("hi"), max_tokens=2, temperature=0)
    with pytest.raises(openai.RateLimitError, match="busy"):
        client.chat.completions.create(**kw)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**kw, stream=True)
    r = httpx.post(server.url + "/v1/chat/completions", json=kw, timeout=30)
    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
    monkeypatch.setattr(type(engine), "waiting", property(lambda self: 3))
    assert client.chat.completions.create(**kw).choices[0].message.role == "assistant"
    with pytest.raises(openai.RateLimitError):  # n=2 rows would pass the bound
        client.chat.completions.create(**kw, n=2)
