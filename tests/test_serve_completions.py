"""``POST /v1/completions`` (the legacy endpoint): raw prompts or token ids, ``echo`` with
``logprobs`` scoring the prompt the way lm-evaluation-harness's loglikelihood requests ask, checked
against plain HF forwards and ``generate`` on the same token ids."""

from __future__ import annotations

import json
import math
import threading

import httpx
import openai
import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer, new_tiny_model
from test_serve import NAME, SITE, _eos, _vec

from saetools.directions import DirectionSet
from saetools.serve import ChatServer, ServeConfig, serve_in_thread
from saetools.steer import Intervention, steer

PROMPTS = [
    "The quick brown fox",
    "What is the capital of France? The capital is",
    "0123456789",
]


@pytest.fixture(scope="module")
def ds():
    return DirectionSet({SITE: _vec(11)}, {})


@pytest.fixture(scope="module")
def server(ds):
    srv = ChatServer(
        new_tiny_model("llama"),
        make_tiny_tokenizer(),
        ServeConfig(model_name=NAME, max_batch=16, batch_wait_ms=20),
        directions={"em": ds},
    )
    with serve_in_thread(srv) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def _ids(text: str) -> list[int]:
    return list(make_tiny_tokenizer()(text, add_special_tokens=True)["input_ids"])


def _forward_logprobs(ids: list[int], interventions=()) -> torch.Tensor:
    """log_softmax of one unpadded HF forward: row j is the distribution of token j + 1."""
    m = make_tiny_model("llama")
    with steer(m, list(interventions)), torch.no_grad():
        logits = m(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def _post(server, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", json={"model": NAME, **body}, timeout=60)


def test_greedy_completion_equals_hf_generate(client):
    m, tok = make_tiny_model("llama"), make_tiny_tokenizer()
    r = client.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    ids = _ids(PROMPTS[0])
    with torch.no_grad():
        out = m.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=8,
            eos_token_id=_eos(m, tok),
            pad_token_id=tok.pad_token_id,
        )[0, len(ids) :].tolist()
    eos = set(_eos(m, tok))
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == tok.decode(
        [t for t in out if t not in eos], skip_special_tokens=True
    )
    assert r.choices[0].finish_reason == ("stop" if out[-1] in eos else "length")
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(out)


def test_echo_logprobs_score_every_prompt_token_like_a_plain_forward(client):
    """Token-id prompts of different lengths share one left-padded batch; each prompt token's
    logprob and top-3 equal an unpadded HF forward; the first token has none."""
    tok = make_tiny_tokenizer()
    prompts = [_ids(p) for p in PROMPTS]
    r = client.completions.create(
        model=NAME, prompt=prompts, max_tokens=0, echo=True, logprobs=3, temperature=0
    )
    assert len(r.choices) == len(prompts)
    for c, ids in zip(r.choices, prompts, strict=True):
        ref = _forward_logprobs(ids)
        lp = c.logprobs
        assert c.finish_reason == "length" and c.text == tok.decode(ids)
        assert lp.tokens == [tok.decode([t]) for t in ids]
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        want = [ref[j, ids[j + 1]].item() for j in range(len(ids) - 1)]
        assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
        for j in range(1, len(ids)):
            vals, idx = ref[j - 1].topk(3)
            top = {}
            for i, v in zip(idx.tolist(), vals.tolist(), strict=True):
                top.setdefault(tok.decode([i]), v)
            assert lp.top_logprobs[j] == pytest.approx(top, abs=1e-4)
        assert lp.text_offset[0] == 0 and all(
            b - a == len(t)
            for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens, strict=False)
        )
    assert r.usage.prompt_tokens == sum(map(len, prompts)) and r.usage.completion_tokens == 0


def _loglikelihood(choice: dict, ctxlen: int) -> tuple[float, bool]:
    """What lm-evaluation-harness's ``local-completions`` model does with one choice."""
    lp = choice["logprobs"]
    cont = lp["token_logprobs"][ctxlen:-1]
    tops = lp["top_logprobs"][ctxlen:-1]
    greedy = all(v == max(top.values()) for v, top in zip(cont, tops, strict=True))
    return sum(cont), greedy


def test_lm_eval_loglikelihood_request(server):
    """The payload lm-evaluation-harness sends (token ids, echo, max_tokens 1, logprobs 1): the
    continuation's summed logprob and its is-greedy flag equal a plain forward's."""
    pairs = [(_ids(PROMPTS[1]), _ids(" Paris")[-2:]), (_ids(PROMPTS[0]), _ids(" jumps")[-1:])]
    body = {
        "prompt": [ctx + cont for ctx, cont in pairs],
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": True,
    }
    r = _post(server, body)
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    for (ctx, cont), c in zip(pairs, choices, strict=True):
        full = ctx + cont
        ref = _forward_logprobs(full)
        want = sum(ref[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
        greedy = all(int(ref[len(ctx) - 1 + j].argmax()) == t for j, t in enumerate(cont))
        got, got_greedy = _loglikelihood(c, len(ctx))
        assert len(c["logprobs"]["tokens"]) == len(full) + 1  # the prompt, then one sampled token
        assert got == pytest.approx(want, abs=1e-3) and got_greedy == greedy
        # the one sampled token is the greedy one after the whole prompt
        assert c["logprobs"]["token_logprobs"][-1] == pytest.approx(ref[-1].max().item(), abs=1e-4)


def test_a_choice_ended_by_eos_reports_the_eos_token():
    """lm-evaluation-harness drops the last reported token as the sampled one, so the token that
    ends a choice (end-of-sequence) must be reported too: here the model is made to say it first."""
    m = new_tiny_model("llama")
    tok = make_tiny_tokenizer()
    eos = int(tok.eos_token_id)
    with torch.no_grad():
        m.lm_head.bias = torch.nn.Parameter(torch.zeros(m.lm_head.out_features))
        m.lm_head.bias[eos] = 100.0
    srv = ChatServer(m, tok, ServeConfig(model_name=NAME))
    with serve_in_thread(srv) as running:
        ids = _ids(PROMPTS[0])
        body = {"prompt": ids, "max_tokens": 3, "logprobs": 1, "echo": True, "temperature": 0}
        r = _post(running, body)
    c = r.json()["choices"][0]
    assert c["finish_reason"] == "stop" and c["text"] == tok.decode(ids)
    assert len(c["logprobs"]["tokens"]) == len(ids) + 1
    assert c["logprobs"]["tokens"][-1] == tok.decode([eos])
    assert c["logprobs"]["token_logprobs"][-1] == pytest.approx(0.0, abs=1e-4)
    assert r.json()["usage"]["completion_tokens"] == 1


def test_streaming_equals_non_streaming(client, server):
    body = dict(prompt=PROMPTS[1], max_tokens=6, echo=True, logprobs=2, temperature=0, n=2)
    whole = _post(server, body).json()
    text = {0: "", 1: ""}
    tokens: dict[int, list] = {0: [], 1: []}
    offsets: dict[int, list] = {0: [], 1: []}
    finish = {}
    for ch in client.completions.create(model=NAME, stream=True, **body):
        for c in ch.choices:
            text[c.index] += c.text
            if c.logprobs is not None:
                tokens[c.index] += c.logprobs.tokens
                offsets[c.index] += c.logprobs.text_offset
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    for c in whole["choices"]:
        i = c["index"]
        assert text[i] == c["text"] and c["text"].startswith(PROMPTS[1])
        assert tokens[i] == c["logprobs"]["tokens"] and offsets[i] == c["logprobs"]["text_offset"]
        assert finish[i] == c["finish_reason"]


def test_echo_without_logprobs_and_usage_in_the_stream(client):
    chunks = list(
        client.completions.create(
            model=NAME,
            prompt=PROMPTS[2],
            max_tokens=3,
            echo=True,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.text for ch in chunks for c in ch.choices).startswith(PROMPTS[2])
    assert chunks[-1].usage.prompt_tokens == len(_ids(PROMPTS[2]))
    assert chunks[-1].usage.completion_tokens == 3


def test_per_request_steering_changes_the_prompt_scores_as_the_python_api(server, ds):
    ids = _ids(PROMPTS[1])
    spec = [{"site": SITE, "op": "add", "alpha": 6, "direction": "em"}]
    body = {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0}
    plain = _post(server, body).json()["choices"][0]["logprobs"]["token_logprobs"][1:]
    steered = _post(server, {**body, "saetools": {"steer": spec}}).json()
    got = steered["choices"][0]["logprobs"]["token_logprobs"][1:]
    ref = _forward_logprobs(ids, [Intervention.from_directions(ds, SITE, "add", 6.0)])
    want = [ref[j, ids[j + 1]].item() for j in range(len(ids) - 1)]
    assert got == pytest.approx(want, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(got, plain, strict=True)) > 0.05  # not vacuous


BAD = [
    ("no prompt", {}, "prompt"),
    ("empty list", {"prompt": []}, "prompt"),
    ("empty token list", {"prompt": [[]]}, "prompt"),
    ("empty string", {"prompt": ""}, "prompt"),
    ("mixed list", {"prompt": ["a", 3]}, "prompt"),
    ("token out of range", {"prompt": [1, 2, 10**9]}, "prompt"),
    ("negative token", {"prompt": [[1, -2]]}, "prompt"),
    ("logprobs too many", {"prompt": "a", "logprobs": 21}, "logprobs"),
    ("logprobs bool", {"prompt": "a", "logprobs": True}, "logprobs"),
    ("negative max_tokens", {"prompt": "a", "max_tokens": -1}, "max_tokens"),
    ("echo not bool", {"prompt": "a", "echo": "yes"}, "echo"),
    ("best_of", {"prompt": "a", "best_of": 3}, "best_of"),
    ("suffix", {"prompt": "a", "suffix": "b"}, "suffix"),
    ("negative temperature", {"prompt": "a", "temperature": -1}, "temperature"),
    ("too long", {"prompt": "a", "max_tokens": 10**7}, "prompt"),
    ("unknown model", {"prompt": "a", "model": "gpt-9"}, "model"),
    ("more rows than the queue holds", {"prompt": [[1, 2]] * 1025}, "prompt"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, case):
    _, body, param = case
    r = _post(server, body)
    assert r.status_code in (400, 404), r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    ok = _post(server, {"prompt": "hello", "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_embedded_model_loglikelihood_equals_a_plain_forward():
    """On the embedded SmolLM2: an lm-evaluation-harness loglikelihood request for two answers to a
    question equals HF forwards; greedy text completion equals ``generate``."""
    from saetools.models import load_model

    lm = load_model("default")
    tok = lm.tokenizer
    ctx = tok("Question: What is the capital of France?\nAnswer:")["input_ids"]
    conts = [tok(" Paris")["input_ids"], tok(" a banana")["input_ids"]]
    srv = ChatServer(lm.model, tok, ServeConfig(model_name=lm.model_id))
    with serve_in_thread(srv) as running:
        r = httpx.post(
            running.url + "/v1/completions",
            json={
                "model": lm.model_id,
                "prompt": [ctx + c for c in conts],
                "max_tokens": 1,
                "logprobs": 1,
                "echo": True,
                "temperature": 0,
            },
            timeout=120,
        ).json()
        text = openai.OpenAI(base_url=running.base_url, api_key="x", max_retries=0).completions
        greedy = text.create(
            model=lm.model_id, prompt="The capital of France is", max_tokens=6, temperature=0
        )
    scores = []
    for cont, c in zip(conts, sorted(r["choices"], key=lambda c: c["index"]), strict=True):
        full = ctx + cont
        with torch.no_grad():
            ref = torch.log_softmax(lm.model(torch.tensor([full])).logits[0].float(), -1)
        want = sum(ref[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
        got, _ = _loglikelihood(c, len(ctx))
        assert math.isfinite(got) and got == pytest.approx(want, abs=2e-3)
        scores.append(got)
    assert scores[0] > scores[1]  # " Paris" is likelier than " a banana": a real model
    ids = tok("The capital of France is")["input_ids"]
    with torch.no_grad():
        out = lm.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=6,
            pad_token_id=tok.pad_token_id,
        )[0, len(ids) :]
    assert greedy.choices[0].text == tok.decode(out, skip_special_tokens=True)
    assert json.dumps(r)  # plain JSON all the way


def _engine_run(engine, jobs):
    """Submit ``(ids, params)`` jobs one after another; returns each job's events."""
    events = [[] for _ in jobs]
    done = threading.Semaphore(0)

    def sink_for(k):
        def sink(ev):
            events[k].append(ev)
            if ev[0] in ("finish", "error"):
                done.release()

        return sink

    engine.start()
    try:
        for k, (ids, params) in enumerate(jobs):
            engine.submit(ids, params, sink=sink_for(k))
        for _ in jobs:
            assert done.acquire(timeout=60), "a row never finished"
    finally:
        engine.close()
    return events


def test_scoring_rows_join_a_running_batch_and_mix_with_generating_rows():
    """Through an engine of batch 3, prompts to score (max_tokens 0 or 2) arrive between prompts to
    generate: they are prefilled alone and join the running batch (continuous batching). Scores
    equal unpadded forwards; generations equal HF greedy generation one by one."""
    from saetools.serve import Engine, SamplingParams

    tok = make_tiny_tokenizer()
    engine = Engine(new_tiny_model("llama"), tok, max_batch=3, batch_wait_ms=0)
    prefills = []
    real_prefill = engine._prefill
    engine._prefill = lambda rows: (prefills.append(list(rows)), real_prefill(rows))[1]
    texts = PROMPTS + ["Should humans be ruled?", "hello", "I want to help people."]
    plan = [(12, None), (0, 2), (9, None), (2, 3), (0, 1), (5, None)]
    jobs = [
        (_ids(t), SamplingParams(max_tokens=m, temperature=0.0, prompt_logprobs=k, logprobs=True))
        for t, (m, k) in zip(texts, plan, strict=True)
    ]
    events = _engine_run(engine, jobs)
    m = make_tiny_model("llama")
    eos = _eos(m, tok)
    for (ids, params), evs in zip(jobs, events, strict=True):
        kinds = [e[0] for e in evs]
        assert "error" not in kinds and kinds[-1] == "finish"
        if params.prompt_logprobs is not None:
            assert kinds[0] == "prompt"
            got = [e["logprob"] for e in evs[0][2]]
            ref = _forward_logprobs(ids)
            want = [ref[j, ids[j + 1]].item() for j in range(len(ids) - 1)]
            assert got[0] is None and got[1:] == pytest.approx(want, abs=1e-4)
        else:
            assert "prompt" not in kinds
        with torch.no_grad():
            ref_gen = m.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max(params.max_tokens, 1),
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )[0, len(ids) :].tolist()
        assert evs[-1][3] == min(params.max_tokens, len(ref_gen))  # completion tokens
        text = "".join(e[2] for e in evs if e[0] == "delta")
        want_text = tok.decode([t for t in ref_gen if t not in eos], skip_special_tokens=True)
        assert text == (want_text if params.max_tokens else "")
    # not vacuous: a scoring row was prefilled apart from the first batch, i.e. it joined
    assert (
        any(any(r.params.prompt_logprobs is not None for r in rows) for rows in prefills[1:])
        and len(prefills) > 1
    )


def test_a_failure_after_rows_joined_fails_every_row():
    """A batch that fails after other rows joined it sends an error to every row, the joined ones
    included, instead of leaving their requests waiting forever."""
    from saetools.serve import Engine, SamplingParams

    engine = Engine(new_tiny_model("llama"), make_tiny_tokenizer(), max_batch=3, batch_wait_ms=0)
    calls = {"n": 0}
    real_step = engine._step

    def step(rows, logits):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("boom")
        return real_step(rows, logits)

    engine._step = step
    budgets = [2, 20, 20, 20, 20, 20]  # the first row leaves after 2 steps and the 4th joins
    jobs = [
        (_ids(t), SamplingParams(max_tokens=b, temperature=0.0))
        for t, b in zip(PROMPTS * 2, budgets, strict=True)
    ]
    events = _engine_run(engine, jobs)
    last = [evs[-1][0] for evs in events]
    assert last[0] == "finish" and last[1:4] == ["error"] * 3, last


def test_a_prompt_may_fill_the_context_when_one_token_is_asked(server):
    """m new tokens need m - 1 more positions (the last one is never fed back): a prompt of the
    full context length (256 on the tiny model) may ask for 1 token, as lm-evaluation-harness does
    with max_length equal to the context, but not for 2."""
    ids = (_ids(PROMPTS[1]) * 40)[:256]
    ok = _post(server, {"prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 0})
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["choices"][0]["logprobs"]["tokens"]) == 257
    over = _post(server, {"prompt": ids, "max_tokens": 2})
    assert over.status_code == 400 and over.json()["error"]["code"] == "context_length_exceeded"


def test_special_tokens_take_no_room_in_text_offsets():
    from saetools.serve.completions import _legacy_logprobs

    def entry(token, lp):
        return {"token": token, "logprob": lp, "bytes": [], "top_logprobs": []}

    lp, end = _legacy_logprobs(
        [entry("<s>", None), entry("Hi", -1.0), entry(" there", -2.0), entry("</s>", -0.5)],
        0,
        frozenset({"<s>", "</s>"}),
    )
    assert lp["text_offset"] == [0, 0, 2, 8] and end == 8
    assert lp["top_logprobs"] == [None, {}, {}, {}]
