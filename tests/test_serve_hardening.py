"""``saetools serve`` against hostile or unlucky clients (issue 14): numbers that overflow, deep
JSON, steering that makes the activations overflow (one poisoned row in a batch fails alone),
the work and body size one request may ask for, clients that leave, internal errors that must not
leak, and a server exposed without an API key. Everything runs against the running app over
loopback (the official ``openai`` client or raw HTTP), on the tiny random model of conftest."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import httpx
import openai
import pytest
import torch
from conftest import D_MODEL, make_tiny_model, make_tiny_tokenizer, new_tiny_model
from test_serve import NAME, QUESTIONS, SITE, _eos, _hf_greedy, _text, _user, _vec

from saetools.directions import DirectionSet
from saetools.serve import ChatServer, Engine, SamplingParams, ServeConfig, serve_in_thread
from saetools.serve.protocol import MAX_JSON_DEPTH, clamp_item

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"


@pytest.fixture(scope="module")
def server():
    srv = ChatServer(
        new_tiny_model("llama"),
        make_tiny_tokenizer(),
        ServeConfig(model_name=NAME, max_batch=16, batch_wait_ms=2),
        directions={"em": DirectionSet({SITE: _vec(11)}, {})},
    )
    with serve_in_thread(srv) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def _post(server, path: str, body, **kw) -> httpx.Response:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    return httpx.post(
        server.url + path,
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
        **kw,
    )


def _chat(**over) -> dict:
    return {"model": NAME, "messages": _user("hi"), "max_tokens": 2, "temperature": 0, **over}


def _still_serving(server) -> None:
    ok = _post(server, CHAT, _chat())
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"


# ---------------------------------------------------------------------------- 400, not 500

HUGE = 10**400  # a valid JSON integer that no float holds


def _steer(**item) -> dict:
    return {"saetools": {"steer": [{"site": SITE, **item}]}}


OVERFLOWS = [
    ("seed beyond 64 bits", CHAT, _chat(seed=2**64), "seed"),
    ("seed below int64", CHAT, _chat(seed=-(2**63) - 1), "seed"),
    ("huge seed", CHAT, _chat(seed=HUGE), "seed"),
    ("huge temperature", CHAT, _chat(temperature=HUGE), "temperature"),
    ("huge top_p", CHAT, _chat(top_p=HUGE), "top_p"),
    ("huge max_tokens", CHAT, _chat(max_tokens=HUGE), "messages"),
    ("huge n", CHAT, _chat(n=HUGE), "n"),
    ("huge top_logprobs", CHAT, _chat(logprobs=True, top_logprobs=HUGE), "top_logprobs"),
    ("huge alpha", CHAT, _chat(**_steer(alpha=HUGE, direction="em")), "saetools.steer[0].alpha"),
    (
        "huge clamp value",
        CHAT,
        _chat(**_steer(op="clamp", value=HUGE, direction="em")),
        "saetools.steer[0].value",
    ),
    (
        "huge vector entry",
        CHAT,
        _chat(**_steer(vector=[HUGE] + [0.0] * (D_MODEL - 1))),
        "saetools.steer[0].vector",
    ),
    ("completions: huge max_tokens", TEXT, {"prompt": "a", "max_tokens": HUGE}, "prompt"),
    ("completions: huge logprobs", TEXT, {"prompt": "a", "logprobs": HUGE}, "logprobs"),
    ("completions: huge token id", TEXT, {"prompt": [1, HUGE]}, "prompt"),
    ("completions: huge temperature", TEXT, {"prompt": "a", "temperature": HUGE}, "temperature"),
]


@pytest.mark.parametrize("case", OVERFLOWS, ids=[c[0] for c in OVERFLOWS])
def test_numbers_beyond_any_float_get_400(server, case):
    _, path, body, param = case
    if path == TEXT:
        body = {"model": NAME, **body}
    r = _post(server, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    _still_serving(server)


def test_a_signed_64_bit_seed_is_served_and_reproducible(client):
    kw = dict(model=NAME, messages=_user(QUESTIONS[5]), max_tokens=6, temperature=1.0)
    for seed in (-1, -(2**63), 2**63 - 1):
        a = client.chat.completions.create(**kw, seed=seed, n=3)
        b = client.chat.completions.create(**kw, seed=seed, n=3)
        assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_latent_clamp_values_beyond_any_float_are_refused():
    """(The running app needs an SAE for this path: the check itself, against a loaded name.)"""
    from saetools.serve import APIError

    with pytest.raises(APIError) as e:
        clamp_item({"latents": {"3": HUGE}}, "saetools.clamp[0]", ["s"])
    assert e.value.status == 400 and e.value.param == "saetools.clamp[0].latents"


def test_deep_json_gets_400_naming_the_problem(server):
    deep = b"[" * 100_000 + b"]" * 100_000  # RecursionError in the JSON parser
    r = _post(server, CHAT, deep)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert "nested too deeply" in r.json()["error"]["message"]
    # deep enough to pass the parser but beyond the bound: refused the same way
    nested: list = []
    for _ in range(MAX_JSON_DEPTH + 5):
        nested = [nested]
    r = _post(server, CHAT, _chat(user=nested))
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
    _still_serving(server)


def test_steering_beyond_the_magnitude_bound_is_refused_up_front(server):
    for item, param in (
        (dict(alpha=3e38, direction="em"), "saetools.steer[0].alpha"),
        (dict(op="clamp", value=1e7, direction="em"), "saetools.steer[0].value"),
        (dict(vector=[1e6] * D_MODEL, unit=False), "saetools.steer[0].alpha"),  # |v| is 5.7e6
    ):
        r = _post(server, CHAT, _chat(**_steer(**item)))
        assert r.status_code == 400, (item, r.text)
        err = r.json()["error"]
        assert err["param"] == param and "1e+06" in err["message"], err
        assert "--max-steer-magnitude" in err["message"]
    ok = _post(server, CHAT, _chat(**_steer(alpha=1e5, direction="em")))
    assert ok.status_code == 200, ok.text


def test_a_default_steering_beyond_the_bound_is_refused_at_start_up():
    from saetools.steer import Intervention

    # within float32, beyond --max-steer-magnitude
    iv = Intervention(SITE, _vec(1), "add", alpha=1e30)
    with pytest.raises(ValueError, match="max-steer-magnitude"):
        ChatServer(new_tiny_model("llama"), make_tiny_tokenizer(), default_steering=[iv])


# ---------------------------------------------------------------------------- one row fails alone


POISON = _steer(vector=[3e38] * D_MODEL, unit=False, alpha=2.0)  # alpha * v: inf in float32


def test_a_poisoned_row_fails_alone_and_its_batch_finishes(server, monkeypatch):
    """Three greedy requests share one batch with two requests whose steering makes the
    activations overflow (the up-front bound is lifted so that they reach the model): a sampled
    chat request and a prompt-scoring completions request. Both get a 400; the three others get
    the answers they get alone."""
    engine = server.server.engine
    monkeypatch.setattr(server.server.config, "max_steer_magnitude", float("inf"))
    monkeypatch.setattr(engine, "batch_wait", 0.5)
    questions = QUESTIONS[:3]
    n_new = 6

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            greedy = [
                c.post(CHAT, json=_chat(messages=_user(q), max_tokens=n_new)) for q in questions
            ]
            sampled = c.post(CHAT, json=_chat(temperature=1.0, max_tokens=n_new, **POISON))
            scored = c.post(
                TEXT,
                json={"model": NAME, "prompt": "The quick brown fox", "max_tokens": 2,
                      "echo": True, "logprobs": 3, **POISON},
            )  # fmt: skip
            return await asyncio.gather(*greedy, sampled, scored)

    before = dict(engine.stats)
    *good, sampled, scored = asyncio.run(run())
    assert engine.stats["batches"] - before["batches"] == 1  # all five shared one batch
    assert engine.stats["failed"] - before["failed"] == 2
    for r in (sampled, scored):
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "non_finite_logits" and err["param"] == "saetools"
    for q, r in zip(questions, good, strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == _text(_hf_greedy(q, n_new)), q
    _still_serving(server)


def test_a_row_that_crashes_fails_alone_with_a_generic_500(server, monkeypatch, caplog):
    """An exception while handling one row (here: injected into the token bookkeeping of one
    prompt's rows) fails that request only, with a 500 that names its request id and not the
    exception; the traceback is logged with the same id."""
    engine = server.server.engine
    monkeypatch.setattr(engine, "batch_wait", 0.5)
    real = engine._advance
    doomed = "Should humans be ruled?"

    def advance(r, t, entry):
        if engine.tokenizer.decode(r.prompt_ids).find(doomed) >= 0:
            raise RuntimeError("secret internal detail 42")
        return real(r, t, entry)

    monkeypatch.setattr(engine, "_advance", advance)

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(
                c.post(CHAT, json=_chat(messages=_user(QUESTIONS[0]), max_tokens=5)),
                c.post(CHAT, json=_chat(messages=_user(doomed), max_tokens=5)),
            )

    with caplog.at_level(logging.ERROR, logger="saetools.serve"):
        ok, bad = asyncio.run(run())
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == _text(
        _hf_greedy(QUESTIONS[0], 5)
    )
    assert bad.status_code == 500
    err = bad.json()["error"]
    rid = bad.headers["x-request-id"]
    assert err["type"] == "server_error" and err["message"] == f"internal error (request id {rid})"
    assert "secret" not in bad.text
    assert rid in caplog.text and "secret internal detail 42" in caplog.text
    assert ok.headers["x-request-id"] != rid  # every response has its own id


def test_internal_errors_outside_the_engine_do_not_leak(server, monkeypatch, caplog):
    """An exception in the HTTP layer (here: injected into request preparation) and one that
    fails a whole batch: both are a generic 500 with the request id, both logged with it."""

    async def broken(raw):
        raise KeyError("secret key material")

    monkeypatch.setattr(server.server, "prepare", broken)
    with caplog.at_level(logging.ERROR, logger="saetools.serve"):
        r = _post(server, CHAT, _chat())
    assert r.status_code == 500 and "secret" not in r.text
    rid = r.headers["x-request-id"]
    assert r.json()["error"]["message"] == f"internal error (request id {rid})"
    assert rid in caplog.text and "secret key material" in caplog.text
    monkeypatch.undo()

    engine = server.server.engine

    def run(rows):
        raise RuntimeError("secret batch failure")

    monkeypatch.setattr(engine, "_run", run)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="saetools.serve"):
        r = _post(server, TEXT, {"model": NAME, "prompt": "hello", "max_tokens": 2})
    assert r.status_code == 500 and "secret" not in r.text
    rid = r.headers["x-request-id"]
    assert rid in r.json()["error"]["message"]
    assert rid in caplog.text and "secret batch failure" in caplog.text
    monkeypatch.undo()
    # a 4xx carries the id header too
    bad = _post(server, CHAT, _chat(temperature=-1))
    assert bad.status_code == 400 and bad.headers["x-request-id"].startswith("req-")
    _still_serving(server)


# ---------------------------------------------------------------------------- work and body size


def test_the_work_of_one_request_is_bounded(server):
    """The default bound (65536) refuses a request whose choices times (prompt + max_tokens, a
    token with returned logprobs counting 1 + its alternatives) pass it, naming the flag; the
    same prompt with less work is served."""
    ids = (list(make_tiny_tokenizer()("The quick brown fox jumps")["input_ids"]) * 40)[:200]
    body = {"model": NAME, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 20, "n": 16}
    r = _post(server, TEXT, body)  # 16 x 200 x 21 = 67200 > 65536
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "request_too_large" and err["param"] == "prompt"
    assert "67200" in err["message"] and "--max-request-tokens" in err["message"]
    assert "65536" in err["message"]
    ok = _post(server, TEXT, {**body, "n": 4})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 4
    r = _post(server, CHAT, _chat(n=16, max_tokens=200, logprobs=True, top_logprobs=20))
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_a_large_body_gets_413_before_it_is_parsed(server):
    """10 MB bodies (default limit 4 MiB): announced by Content-Length and sent chunked."""
    big = b'{"model": "tiny", "prompt": "' + b"a" * 10_000_000 + b'"}'
    t0 = time.monotonic()
    r = _post(server, TEXT, big)
    took = time.monotonic() - t0
    assert r.status_code == 413, r.text[:200]
    err = r.json()["error"]
    assert err["code"] == "request_too_large" and "--max-body-bytes" in err["message"]
    assert took < 3.0, took

    def chunks():
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(100):
            yield b"a" * 100_000
        yield b'"}'

    t0 = time.monotonic()
    r = httpx.post(server.url + TEXT, content=chunks(), timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert time.monotonic() - t0 < 3.0
    _still_serving(server)


# ---------------------------------------------------------------------------- clients that leave


def test_a_client_that_leaves_a_non_streaming_request_stops_its_rows():
    """A raw HTTP client asks for 200 tokens (the model cannot end early: end-of-sequence is
    suppressed; each decode step is slowed to 30 ms, so the whole answer would take 6 s) and
    closes its connection; the engine's running rows drop to zero long before."""
    model = new_tiny_model("llama")
    tok = make_tiny_tokenizer()
    with torch.no_grad():
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.lm_head.out_features))
        model.lm_head.bias[_eos(model, tok)] = -1e4
    srv = ChatServer(model, tok, ServeConfig(model_name=NAME))
    engine = srv.engine
    real = engine._forward

    def slow(plan, phase, **kw):
        time.sleep(0.03)
        return real(plan, phase, **kw)

    engine._forward = slow
    body = json.dumps({"model": NAME, "prompt": "hello", "max_tokens": 200, "temperature": 0})
    with serve_in_thread(srv) as running:
        port = int(running.url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            f"POST {TEXT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        deadline = time.monotonic() + 10
        while engine.stats["running"] == 0:
            assert time.monotonic() < deadline, "the row never started"
            time.sleep(0.01)
        started = time.monotonic()
        sock.close()
        while engine.stats["running"]:
            assert time.monotonic() - started < 2.0, "the row kept running"
            time.sleep(0.01)
        assert engine.stats["dropped"] == 1
        assert engine.stats["tokens"] < 100  # far from the 200 asked for
        # the server goes on serving
        r = httpx.post(
            running.url + TEXT,
            json={"model": NAME, "prompt": "hello", "max_tokens": 3, "temperature": 0},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


# ---------------------------------------------------------------------------- the scored prefill


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_a_chunked_prefill_scores_and_generates_as_a_plain_forward(arch):
    """With a logits budget of a few columns, a batch scoring prompts of different lengths runs
    its prefill in column chunks with the KV cache (a sliding-window cache too); every prompt
    token's logprob and top-3 equal an unpadded forward, and greedy continuations equal HF
    ``generate``."""
    tok = make_tiny_tokenizer()
    engine = Engine(new_tiny_model(arch), tok, max_batch=4, batch_wait_ms=200)
    engine.max_prefill_logits = 3 * 3 * engine.vocab  # 3 rows: 3 columns per forward
    calls = []
    real = engine._forward
    engine._forward = lambda plan, phase, **kw: (calls.append(phase), real(plan, phase, **kw))[1]
    texts = ["The quick brown fox", QUESTIONS[0], QUESTIONS[2]]
    prompts = [list(tok(t)["input_ids"]) for t in texts]
    events: list[list] = [[] for _ in prompts]
    engine.start()
    try:
        for k, ids in enumerate(prompts):
            params = SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=3)
            engine.submit(ids, params, sink=events[k].append)
        deadline = time.monotonic() + 60
        while not all(e and e[-1][0] in ("finish", "error") for e in events):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        engine.close()
    assert calls.count("prompt") >= len(max(prompts, key=len)) // 3  # it was chunked
    m = make_tiny_model(arch)
    eos = _eos(m, tok)
    for ids, evs in zip(prompts, events, strict=True):
        assert evs[0][0] == "prompt" and evs[-1][0] == "finish", evs
        with torch.no_grad():
            ref = torch.log_softmax(m(torch.tensor([ids])).logits[0].float(), -1)
            gen = m.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=4,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )[0, len(ids) :].tolist()
        entries = evs[0][2]
        assert entries[0]["logprob"] is None and len(entries) == len(ids)
        for j in range(1, len(ids)):
            assert entries[j]["logprob"] == pytest.approx(ref[j - 1, ids[j]].item(), abs=1e-4)
            top = [t["logprob"] for t in entries[j]["top_logprobs"]]
            assert top == pytest.approx(ref[j - 1].topk(3).values.tolist(), abs=1e-4)
        text = "".join(e[2] for e in evs if e[0] == "delta")
        assert text == tok.decode([t for t in gen if t not in eos], skip_special_tokens=True)


# ---------------------------------------------------------------------------- exposed host


def test_an_exposed_host_without_an_api_key_is_warned_about(monkeypatch, caplog):
    import uvicorn

    from saetools.serve import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    open_srv = ChatServer(new_tiny_model("llama"), make_tiny_tokenizer(), ServeConfig())
    keyed = ChatServer(new_tiny_model("llama"), make_tiny_tokenizer(), ServeConfig(api_key="k"))
    for srv, host, warned in (
        (open_srv, "0.0.0.0", True),
        (open_srv, "::", True),
        (open_srv, "my-host.example", True),
        (open_srv, "127.0.0.1", False),
        (open_srv, "localhost", False),
        (open_srv, "::1", False),
        (keyed, "0.0.0.0", False),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="saetools.serve"):
            serve(srv, host, 0)
        assert ("without an API key" in caplog.text) == warned, (host, caplog.text)
        if warned:
            assert host in caplog.text and "--api-key" in caplog.text


def test_cli_refuses_bad_limits(capsys):
    from saetools.cli import main

    for flag, value in (
        ("--max-body-bytes", "-1"),
        ("--max-request-tokens", "-5"),
        ("--max-steer-magnitude", "inf"),
        ("--max-steer-magnitude", "0"),
    ):
        assert main(["serve", flag, value]) == 1
        assert flag in capsys.readouterr().err
