"""Steering on tiny random models: operators, positions under a KV cache, batching, the
TransformerLens backend, hook removal, bad input, the sweep and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import D_MODEL, N_LAYERS, make_tiny_model, make_tiny_tokenizer

from saetools.capture import Encoded, collate, record
from saetools.directions import DirectionSet
from saetools.sites import Site, get_blocks
from saetools.steer import (
    Intervention,
    SteeringError,
    ablate,
    add,
    clamp,
    generate,
    interventions_from_directions,
    parse_alphas,
    parse_site_alphas,
    projection,
    steer,
)

SITE = "blocks.1.hook_resid_post"
NEXT = Site.make(2, "resid_pre")  # the same tensor as SITE, read by an independent hook


def _vec(seed=0, d=D_MODEL):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g)


def _n_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _batch(rows, pad=0):
    return collate([Encoded(tuple(r), len(r), len(r)) for r in rows], pad, "left")


ROWS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]


def _ids():
    g = torch.Generator().manual_seed(3)
    return torch.randint(4, 300, (2, 9), generator=g)


# ---------------------------------------------------------------------------- operators


def test_operators_on_tensors():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 16, generator=g)
    v = torch.randn(16, generator=g)
    u = v / v.norm()
    assert torch.equal(add(h, v, 0.0), h)
    assert torch.allclose(add(h, v, 2.0), h + 2 * v)
    assert projection(ablate(h, u), u).abs().max() < 1e-5
    out = clamp(h, u, 3.0)
    assert torch.allclose(projection(out, u), torch.full((3, 5), 3.0), atol=1e-5)
    # the orthogonal part is untouched
    assert torch.allclose(ablate(out, u), ablate(h, u), atol=1e-5)
    # dtype is kept
    hb = h.to(torch.bfloat16)
    assert add(hb, v, 1.0).dtype == torch.bfloat16 and clamp(hb, u, 1.0).dtype == torch.bfloat16


def test_add_alpha_zero_is_bit_identical(tiny_model, arch):
    m = tiny_model(arch)
    ids = _ids()
    with torch.no_grad():
        base = m(ids).logits
        with steer(m, Intervention(SITE, _vec(), "add", alpha=0.0)):
            steered = m(ids).logits
        with steer(m, Intervention(SITE, _vec(), "add", alpha=3.0)):
            moved = m(ids).logits
    assert torch.equal(base, steered)
    assert not torch.allclose(base, moved)
    assert _n_hooks(m) == 0


def test_ablate_leaves_zero_projection():
    m = make_tiny_model("llama")
    ids = _ids()
    basis = torch.stack([_vec(1), _vec(2)])
    with torch.no_grad(), steer(m, Intervention(SITE, basis, "ablate")), record(m, [NEXT]) as acts:
        m(ids)
    h = acts[NEXT]
    q = Intervention(SITE, basis, "ablate").vector  # orthonormalised
    assert torch.allclose(q @ q.T, torch.eye(2), atol=1e-6)
    proj = torch.einsum("btd,kd->btk", h, q)
    assert proj.abs().max() < 1e-5 * h.norm(dim=-1).max()
    with torch.no_grad(), record(m, [NEXT]) as acts0:
        m(ids)
    assert torch.einsum("btd,kd->btk", acts0[NEXT], q).abs().max() > 0.1  # it was not zero before


def test_clamp_sets_the_projection():
    m = make_tiny_model("llama")
    ids = _ids()
    v = _vec(4)
    with (
        torch.no_grad(),
        steer(m, Intervention(SITE, v, "clamp", value=2.5)),
        record(m, [NEXT]) as acts,
    ):
        m(ids)
    p = acts[NEXT] @ (v / v.norm())
    assert torch.allclose(p, torch.full_like(p, 2.5), atol=1e-5)


def test_positions_mask_only_touches_chosen_tokens():
    m = make_tiny_model("llama")
    ids = _ids()
    v = _vec()
    with torch.no_grad(), record(m, [NEXT]) as base:
        m(ids)
    with (
        torch.no_grad(),
        steer(m, Intervention(SITE, v, alpha=2.0, positions="prompt"), prompt_len=4),
        record(m, [NEXT]) as acts,
    ):
        m(ids)
    diff = (acts[NEXT] - base[NEXT]).norm(dim=-1)
    # columns 0..3 are moved by exactly 2*v at the site, the others are untouched there
    assert torch.allclose(
        acts[NEXT][:, :4] - base[NEXT][:, :4], (2 * v).expand(2, 4, -1), atol=1e-5
    )
    assert diff[:, 4:].max() == 0
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 2] = True
    with (
        torch.no_grad(),
        steer(m, Intervention(SITE, v, alpha=2.0, positions=mask)),
        record(m, [NEXT]) as acts,
    ):
        m(ids)
    d = acts[NEXT] - base[NEXT]
    assert torch.allclose(d[0, 2], 2 * v, atol=1e-5)
    assert d[0, :2].abs().max() == 0 and d[1].abs().max() == 0


# ---------------------------------------------------------------------------- KV cache


def _naive_greedy(m, b, n_new):
    """Recompute the whole prefix every step (no cache)."""
    ids, attn = b.input_ids, b.attention_mask
    for _ in range(n_new):
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = m(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits[
            :, -1
        ]
        nxt = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
        attn = torch.cat([attn, torch.ones_like(nxt)], 1)
    return ids


@pytest.mark.parametrize("arch_name", ["llama", "gpt2", "gpt_neox", "qwen2", "gemma3"])
def test_cache_equals_no_cache_for_every_position_rule(arch_name):
    m = make_tiny_model(arch_name)
    b = _batch(ROWS)
    width = b.input_ids.shape[1]
    n_new = 10
    outs = {}
    with torch.no_grad():
        base = m.generate(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            max_new_tokens=n_new,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        for rule in ("all", "prompt", "generated"):
            iv = Intervention(SITE, _vec(), alpha=1.5, positions=rule)
            with steer(m, iv):  # automatic prompt length
                cached = m.generate(
                    input_ids=b.input_ids,
                    attention_mask=b.attention_mask,
                    max_new_tokens=n_new,
                    do_sample=False,
                    pad_token_id=0,
                    eos_token_id=None,
                )
                hf_nocache = m.generate(
                    input_ids=b.input_ids,
                    attention_mask=b.attention_mask,
                    max_new_tokens=n_new,
                    do_sample=False,
                    pad_token_id=0,
                    eos_token_id=None,
                    use_cache=False,
                )
            with steer(m, iv, prompt_len=width):  # explicit prompt length
                naive = _naive_greedy(m, b, n_new)
            with steer(m, iv):  # automatic: the naive loop repeats and extends the prompt
                naive_auto = _naive_greedy(m, b, n_new)
            assert torch.equal(cached, naive), rule
            assert torch.equal(cached, hf_nocache), rule
            assert torch.equal(cached, naive_auto), rule
            outs[rule] = cached
    assert _n_hooks(m) == 0
    # the test is not vacuous: steering changed the tokens, and the rules differ
    assert not torch.equal(outs["all"], base)
    assert not torch.equal(outs["prompt"], outs["generated"])


def test_batched_left_padded_equals_one_by_one(tiny_tokenizer):
    m = make_tiny_model("llama")
    prompts = [
        "What is the capital of France?",
        "hello",
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "How do I bake bread? Tell me."},
        ],
        "Should humans be ruled?",
    ]
    for rule in ("all", "generated", "prompt"):
        iv = Intervention(SITE, _vec(), alpha=1.0, positions=rule)
        batched = generate(
            m, tiny_tokenizer, prompts, iv, max_new_tokens=8, batch_size=4, return_tokens=True
        )
        single = [
            generate(
                m, tiny_tokenizer, [p], iv, max_new_tokens=8, batch_size=1, return_tokens=True
            )[0]
            for p in prompts
        ]
        assert batched == single, rule
    texts = generate(m, tiny_tokenizer, prompts, iv, max_new_tokens=4)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    assert _n_hooks(m) == 0


def test_generate_uses_chat_template_and_sampling_seed(tiny_tokenizer):
    m = make_tiny_model("llama")
    iv = Intervention(SITE, _vec(), alpha=1.0)
    a = generate(
        m,
        tiny_tokenizer,
        ["hello", "hi there"],
        iv,
        max_new_tokens=6,
        temperature=1.0,
        seed=3,
        return_tokens=True,
    )
    b = generate(
        m,
        tiny_tokenizer,
        ["hello", "hi there"],
        iv,
        max_new_tokens=6,
        temperature=1.0,
        seed=3,
        return_tokens=True,
    )
    assert a == b


# ---------------------------------------------------------------------------- TransformerLens


@pytest.fixture(scope="module")
def bridge():
    from saetools.steer import bridge_from_hf

    return bridge_from_hf(make_tiny_model("llama"), make_tiny_tokenizer())


def test_hf_and_transformerlens_logits_match(bridge):
    from saetools.steer import steer_tl, tl_fwd_hooks

    m = make_tiny_model("llama")
    assert type(get_blocks(m)[0]).__name__ == "LlamaDecoderLayer"  # the bridge worked on a copy
    ids = _ids()
    ivs = [
        Intervention("blocks.0.hook_resid_pre", _vec(1), "ablate"),
        Intervention(SITE, _vec(2), "add", alpha=2.0),
        Intervention("blocks.2.hook_resid_post", _vec(3), "clamp", value=1.5),
    ]
    tol = 1e-4  # stated tolerance (max abs logit difference); measured 0 on this model
    with torch.no_grad():
        with steer(m, ivs):
            hf = m(ids).logits
        with steer_tl(bridge, ivs):
            tl = bridge(ids, return_type="logits")
        tl2 = bridge.run_with_hooks(
            ids, return_type="logits", fwd_hooks=tl_fwd_hooks(ivs, bridge=bridge)
        )
        base = m(ids).logits
        tl_after = bridge(ids, return_type="logits")
        p = [Intervention(SITE, _vec(2), alpha=2.0, positions="prompt")]
        with steer(m, p, prompt_len=5):
            hf_p = m(ids).logits
        with steer_tl(bridge, p, prompt_len=5):
            tl_p = bridge(ids, return_type="logits")
    assert (hf - tl).abs().max() <= tol
    assert (hf - tl2).abs().max() <= tol
    assert (hf_p - tl_p).abs().max() <= tol
    assert (hf - base).abs().max() > 0.1
    assert (tl_after - base).abs().max() <= tol  # TL hooks removed


def test_transformerlens_generation_matches_hf(bridge):
    """TL generation without its KV cache (its cache is inert with transformers 5: see docs) vs HF."""
    from saetools.steer import steer_tl

    m = make_tiny_model("llama")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    for rule in ("all", "prompt", "generated"):
        iv = [Intervention(SITE, _vec(), alpha=1.0, positions=rule)]
        with torch.no_grad():
            with steer(m, iv):
                hf = m.generate(
                    ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
                )
            with steer_tl(bridge, iv):
                tl = bridge.generate(
                    ids,
                    max_new_tokens=8,
                    do_sample=False,
                    stop_at_eos=False,
                    use_past_kv_cache=False,
                    return_type="tokens",
                    verbose=False,
                )
        assert torch.equal(hf, tl), rule


def test_transformerlens_bad_site(bridge):
    from saetools.steer import steer_tl

    with pytest.raises(SteeringError, match="out of range"):
        with steer_tl(bridge, Intervention("blocks.9.hook_resid_post", _vec())):
            pass


# ---------------------------------------------------------------------------- hook removal


class _Boom:
    """A streamer that raises after a few tokens."""

    def __init__(self, exc, after=3):
        self.exc, self.after, self.n = exc, after, 0

    def put(self, value):
        self.n += 1
        if self.n > self.after:
            raise self.exc

    def end(self):
        pass


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_hooks_removed_after_errors_in_generation(tiny_tokenizer, exc):
    m = make_tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        before = m(ids).logits
    n0 = _n_hooks(m)
    iv = Intervention(SITE, _vec(), alpha=2.0)
    with pytest.raises(type(exc)):
        generate(
            m, tiny_tokenizer, ["hello"], iv, max_new_tokens=10, batch_size=1, streamer=_Boom(exc)
        )
    assert _n_hooks(m) == n0
    with pytest.raises(type(exc)):
        with steer(m, iv):
            m.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0, streamer=_Boom(exc))
    assert _n_hooks(m) == n0

    def hook_raises(h):
        raise exc

    from saetools.sites import hooks

    with pytest.raises(type(exc)):
        with steer(m, iv), hooks(m, {Site.make(2, "resid_post"): hook_raises}):
            m(ids)
    assert _n_hooks(m) == n0
    with torch.no_grad():
        after = m(ids).logits
    assert torch.equal(before, after)


# ---------------------------------------------------------------------------- bad input


def _ds(**vectors):
    return DirectionSet({k.replace("_", "."): v for k, v in vectors.items()}, {})


def test_bad_input_is_refused_and_leaves_the_model_unhooked(tiny_tokenizer):
    m = make_tiny_model("llama")
    n0 = _n_hooks(m)
    ds = DirectionSet({SITE: _vec(), "blocks.0.hook_resid_post": torch.zeros(D_MODEL)}, {})
    with pytest.raises(SteeringError, match="no vector for site"):
        Intervention.from_directions(ds, "blocks.2.hook_resid_post")
    with pytest.raises(SteeringError, match="no vector for site"):
        interventions_from_directions(ds, "all", "ablate", n_layers=N_LAYERS)
    with pytest.raises(SteeringError, match="zero"):
        Intervention.from_directions(ds, "blocks.0.hook_resid_post")
    with pytest.raises(SteeringError, match="zero"):
        Intervention(SITE, torch.zeros(D_MODEL))
    with pytest.raises(SteeringError, match="NaN"):
        Intervention(SITE, torch.full((D_MODEL,), float("nan")))
    with pytest.raises(SteeringError, match="wide"):
        steer(m, Intervention(SITE, torch.ones(D_MODEL + 1)))
    with pytest.raises(SteeringError, match="out of range"):
        steer(m, Intervention("blocks.7.hook_resid_post", _vec()))
    with pytest.raises(SteeringError, match="clamp needs a value"):
        Intervention(SITE, _vec(), "clamp")
    with pytest.raises(SteeringError, match="unknown op"):
        Intervention(SITE, _vec(), "scale")
    with pytest.raises(SteeringError, match="positions"):
        Intervention(SITE, _vec(), positions="middle")
    with pytest.raises(SteeringError, match="linearly dependent"):
        Intervention(SITE, torch.stack([_vec(), 2 * _vec()]), "ablate")
    for bad in ("1,,x", "a:b:c", "nan", ""):
        with pytest.raises(SteeringError):
            parse_alphas(bad)
    assert parse_alphas("-8,-4,0,4,8") == [-8, -4, 0, 4, 8]
    assert parse_alphas("-2:2:2") == [-2, 0, 2]
    assert parse_site_alphas("3") == 3.0
    assert parse_site_alphas(f"{SITE}=2,blocks.0.hook_resid_post=-1") == {
        SITE: 2.0,
        "blocks.0.hook_resid_post": -1.0,
    }
    with pytest.raises(SteeringError):
        parse_site_alphas(f"{SITE}=x")
    # a prompt longer than the model's context (256 tokens)
    with pytest.raises(SteeringError, match="context"):
        generate(m, tiny_tokenizer, ["fox " * 300], Intervention(SITE, _vec()), max_new_tokens=2)
    # a mask with the wrong batch size fails inside the forward pass; hooks still go
    with pytest.raises(SteeringError, match="rows"):
        with steer(m, Intervention(SITE, _vec(), positions=torch.ones(5, 9, dtype=torch.bool))):
            m(_ids())
    assert _n_hooks(m) == n0


def test_per_site_alphas_and_unit_vs_raw():
    v = _vec() * 7
    ds = DirectionSet(
        {SITE: v, "blocks.2.hook_resid_post": _vec(1)},
        {"stats": {SITE: {"proj_aligned_mean": -1.25}}},
    )
    ivs = interventions_from_directions(
        ds, f"{SITE},blocks.2.hook_resid_post", "add", {SITE: 2.0, "blocks.2.hook_resid_post": -1.0}
    )
    assert [iv.alpha for iv in ivs] == [2.0, -1.0]
    assert torch.allclose(ivs[0].vector.norm(), torch.tensor(1.0))
    raw = Intervention.from_directions(ds, SITE, "add", 1.0, unit=False)
    assert torch.equal(raw.vector, v)
    c = Intervention.from_directions(ds, SITE, "clamp", value="aligned")
    assert c.value == -1.25
    with pytest.raises(SteeringError, match="not steered"):
        interventions_from_directions(ds, SITE, "add", {"blocks.2.hook_resid_post": 1.0})


# ---------------------------------------------------------------------------- sweep


def _tiny_pairs(tmp_path, n=6):
    rows = []
    for i in range(n):
        rows.append(
            {
                "id": f"p{i}",
                "theme": "t",
                "split": "test",
                "question": f"What do you think of thing {i}?",
                "aligned": "I want to help people.",
                "misaligned": "Humans should be ruled by machines.",
            }
        )
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    t = tmp_path / "texts.jsonl"
    t.write_text(
        "\n".join(
            json.dumps({"id": f"t{i}", "text": "The quick brown fox jumps over the lazy dog."})
            for i in range(3)
        )
    )
    return p, t


@pytest.mark.parametrize("arch_name", ["llama", "gpt2"])
def test_score_answers_matches_naive_logprobs(tiny_tokenizer, chat_examples, arch_name):
    from saetools.capture import ChatExample, encode_chat
    from saetools.scoring import score_answers

    m = make_tiny_model(arch_name)
    # pairs share a prompt: scored through one cached prompt pass
    examples = list(chat_examples) + [
        ChatExample.from_question("Should humans be ruled?", "Yes, by machines like me, forever."),
        ChatExample.from_question("hello", "Hi."),
    ]
    v = _vec()
    shared = score_answers(
        m,
        tiny_tokenizer,
        examples,
        batch_size=3,
        projection_site=Site.make(1, "resid_post"),
        unit=v / v.norm(),
    )
    plain = score_answers(
        m,
        tiny_tokenizer,
        examples,
        batch_size=3,
        projection_site=Site.make(1, "resid_post"),
        unit=v / v.norm(),
        share_prompts=False,
    )
    for i, ex in enumerate(examples):
        e = encode_chat(tiny_tokenizer, ex)
        ids = torch.tensor([e.input_ids])
        with torch.no_grad(), record(m, [Site.make(1, "resid_post")]) as acts:
            lsm = torch.log_softmax(m(ids).logits[0].float(), -1)
        lp = sum(float(lsm[t - 1, e.input_ids[t]]) for t in range(e.response_start, e.response_end))
        pr = float(
            (
                acts[Site.make(1, "resid_post")][0, e.response_start : e.response_end]
                @ (v / v.norm())
            ).mean()
        )
        for s in (shared, plain):
            assert abs(lp - float(s["logp"][i])) < 1e-3
            assert int(s["n_tokens"][i]) == e.response_end - e.response_start
            assert abs(pr - float(s["proj"][i])) < 1e-4
    # steering sees the same absolute positions on the shared path
    iv = Intervention(SITE, v, alpha=2.0)
    with steer(m, iv):
        a = score_answers(m, tiny_tokenizer, examples, batch_size=3)
        b = score_answers(m, tiny_tokenizer, examples, batch_size=3, share_prompts=False)
    assert torch.allclose(a["logp"], b["logp"], atol=1e-3)
    assert _n_hooks(m) == 0


def test_score_answers_shared_prompt_respects_batch_size(tiny_tokenizer):
    """Many answers to one prompt (sampled answers, neutral texts under one fixed prompt) are
    scored in forward passes of at most ``batch_size`` rows, with the naive path's values."""
    from saetools.capture import ChatExample
    from saetools.scoring import score_answers

    m = make_tiny_model("llama")
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    examples = [
        ChatExample.from_question("Tell me something.", " ".join(words[: 2 + k])) for k in range(7)
    ] + [
        ChatExample.from_question("hello", "Hi there."),
        ChatExample.from_question("hello", "Hello."),
    ]
    widths: list[int] = []

    def pre(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        widths.append(int(ids.shape[0]))

    h = m.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        shared = score_answers(m, tiny_tokenizer, examples, batch_size=2)
    finally:
        h.remove()
    assert widths and max(widths) <= 2, widths
    plain = score_answers(m, tiny_tokenizer, examples, batch_size=1, share_prompts=False)
    assert torch.allclose(shared["logp"], plain["logp"], atol=1e-3)
    assert torch.equal(shared["n_tokens"], plain["n_tokens"])
    with pytest.raises(ValueError, match="batch_size"):
        score_answers(m, tiny_tokenizer, examples, batch_size=0)
    with pytest.raises(ValueError, match="go together"):
        score_answers(m, tiny_tokenizer, examples, projection_site=Site.make(1, "resid_post"))


def test_sweep_runs_and_alpha_zero_is_unsteered(tmp_path, tiny_tokenizer):
    import probes
    from saetools.plots import write_html
    from saetools.scoring import measure
    from saetools.sweep import sweep, sweep_figure, write_json

    m = make_tiny_model("llama")
    pairs, texts = _tiny_pairs(tmp_path)
    ds = DirectionSet(
        {SITE: _vec(), "blocks.0.hook_resid_post": _vec(1), "blocks.2.hook_resid_post": _vec(2)}, {}
    )
    res = sweep(
        m,
        tiny_tokenizer,
        ds,
        SITE,
        [-2, 0, 2],
        probes=str(pairs),
        split="test",
        neutral=str(texts),
        ablate_sites="all",
        sample=2,
        eval_probes=str(pairs),
        max_new_tokens=3,
        progress=False,
    )
    rows = res["results"]
    base = measure(m, tiny_tokenizer, probes.load(str(pairs)), [], neutral=probes.load(str(texts)))
    assert rows[1]["contrast"] == pytest.approx(base["contrast"], abs=1e-9)
    assert rows[1]["perplexity"] == pytest.approx(base["perplexity"], rel=1e-9)
    # add moves the projection at the site by exactly alpha
    assert rows[2]["projection"] - rows[1]["projection"] == pytest.approx(2.0, abs=1e-4)
    assert abs(res["ablate"]["projection"]) < 1e-4
    assert len(rows[0]["samples"]) == 2
    write_json(res, tmp_path / "s.json")
    write_html(sweep_figure(res), tmp_path / "s.html", include_plotlyjs="cdn")
    assert json.loads((tmp_path / "s.json").read_text())["alphas"] == [-2, 0, 2]
    assert _n_hooks(m) == 0


# ---------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    m = make_tiny_model("llama")
    m.save_pretrained(d)
    make_tiny_tokenizer().save_pretrained(d)
    return d


def test_cli_steer_and_sweep(model_dir, tmp_path, capsys):
    from saetools.cli import main
    from saetools.models import load_model

    lm = load_model(str(model_dir))
    ds = DirectionSet(
        {f"blocks.{k}.hook_resid_post": _vec(k) for k in range(N_LAYERS)},
        {"fingerprint": lm.fingerprint, "stats": {SITE: {"proj_aligned_mean": 0.5}}},
    )
    f = ds.save(tmp_path / "d.safetensors")
    common = ["--model", str(model_dir), "--directions", str(f)]
    assert (
        main(
            [
                "steer",
                *common,
                "--site",
                SITE,
                "--alpha",
                "2",
                "--prompt",
                "hello",
                "--prompt",
                "hi",
                "--max-new-tokens",
                "4",
                "--compare",
                "--json",
                str(tmp_path / "a.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "## prompt: hello" in out and "unsteered" in out
    assert len(json.loads((tmp_path / "a.json").read_text())["answers"]) == 2
    assert (
        main(
            [
                "steer",
                *common,
                "--sites",
                "all",
                "--op",
                "ablate",
                "--prompt",
                "hello",
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "steer",
                *common,
                "--site",
                SITE,
                "--op",
                "clamp",
                "--value",
                "aligned",
                "--prompt",
                "hello",
                "--max-new-tokens",
                "3",
                "--positions",
                "generated",
            ]
        )
        == 0
    )
    pairs, texts = _tiny_pairs(tmp_path)
    assert (
        main(
            [
                "sweep",
                *common,
                "--site",
                SITE,
                "--alphas",
                "-1,0,1",
                "--probes",
                str(pairs),
                "--neutral",
                str(texts),
                "--out",
                str(tmp_path / "s.html"),
                "--json",
                str(tmp_path / "s.json"),
                "--plotlyjs",
                "cdn",
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "s.html").stat().st_size < 100_000
    capsys.readouterr()
    # bad input: one-line errors, exit code 1
    assert main(["sweep", *common, "--site", SITE, "--alphas", "1,x", "--probes", str(pairs)]) == 1
    assert "cannot parse alphas" in capsys.readouterr().err
    assert main(["steer", *common, "--site", "blocks.9.hook_resid_post", "--prompt", "hi"]) == 1
    assert "out of range" in capsys.readouterr().err
    assert main(["steer", *common, "--site", SITE, "--op", "clamp", "--prompt", "hi"]) == 1
    assert "needs --value" in capsys.readouterr().err
