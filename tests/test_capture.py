"""Capture: activations against HF ``output_hidden_states``, block-sum consistency, streaming
reducers against naive loops, answer location through the chat template, and bad input."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from conftest import ARCHS, N_LAYERS, hook_snapshot, make_chat_examples, new_tiny_model

from saetools.capture import (
    ChatExample,
    ChatTemplateError,
    capture,
    collate,
    encode_chat,
    record,
    reduce_batch,
    run_until,
)
from saetools.sites import KINDS, Site, parse_sites

ATOL = 1e-5


def final_norm(model, arch: str) -> torch.nn.Module:
    return {
        "gpt2": lambda: model.transformer.ln_f,
        "gpt_neox": lambda: model.gpt_neox.final_layer_norm,
    }.get(arch, lambda: model.model.norm)()


@functools.cache
def reference_model(arch: str):
    """A separate instance with the same weights as ``tiny_model(arch)``, for HF reference passes
    (``output_hidden_states`` leaves transformers' own hooks on the model it runs on)."""
    return new_tiny_model(arch)


def hf_reference(model, arch: str, ids, attention_mask=None, position_ids=None):
    """HF hidden states [n_layers + 1] with the last entry replaced by the input of the final
    norm (read with a plain torch pre-hook), i.e. the true residual stream after each block.
    Runs on :func:`reference_model`, checked to hold the same weights as ``model``."""
    ref = reference_model(arch)
    if ref is not model:
        for (name, a), (_, b) in zip(
            ref.state_dict().items(), model.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name
    model = ref
    grabbed = {}

    def pre(module, args):
        grabbed["x"] = args[0].detach().clone()

    handle = final_norm(model, arch).register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            out = model(
                input_ids=ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=True,
                use_cache=False,
            )
    finally:
        handle.remove()
    hs = list(out.hidden_states)
    assert len(hs) == N_LAYERS + 1
    # sanity: HF's last entry is the *normed* stream, so it must differ from the norm input
    assert not torch.allclose(hs[-1], grabbed["x"], atol=1e-3)
    hs[-1] = grabbed["x"]
    return hs


# --------------------------------------------------------------------------- hidden-state equivalence


@pytest.mark.parametrize("arch", ARCHS)
def test_resid_sites_match_hf_hidden_states(tiny_model, tiny_tokenizer, arch):
    model = tiny_model(arch)
    encoded = [encode_chat(tiny_tokenizer, ex) for ex in make_chat_examples()]
    sites = parse_sites("all, all:hook_resid_pre", N_LAYERS)

    # one by one, no padding, default HF positions: the independent reference
    singles = []
    for e in encoded:
        ids = torch.tensor([e.input_ids])
        hs = hf_reference(model, arch, ids)
        with record(model, sites) as acts, torch.no_grad():
            model(input_ids=ids, use_cache=False)
        for k in range(N_LAYERS):
            torch.testing.assert_close(acts[Site.make(k, "resid_pre")], hs[k], atol=ATOL, rtol=0)
            torch.testing.assert_close(
                acts[Site.make(k, "resid_post")], hs[k + 1], atol=ATOL, rtol=0
            )
        singles.append(hs)

    for side in ("right", "left"):
        batch = collate(encoded, tiny_tokenizer.pad_token_id, side)
        inputs = dict(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        )
        hs = hf_reference(
            model, arch, **{("ids" if k == "input_ids" else k): v for k, v in inputs.items()}
        )
        acts = run_until(model, sites, **inputs)
        mask = batch.attention_mask.bool()
        for k in range(N_LAYERS):
            pre, post = acts[Site.make(k, "resid_pre")], acts[Site.make(k, "resid_post")]
            torch.testing.assert_close(pre[mask], hs[k][mask], atol=ATOL, rtol=0)
            torch.testing.assert_close(post[mask], hs[k + 1][mask], atol=ATOL, rtol=0)
            for i, single in enumerate(singles):
                row = mask[i]
                torch.testing.assert_close(pre[i][row], single[k][0], atol=ATOL, rtol=0)
                torch.testing.assert_close(post[i][row], single[k + 1][0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_position_ids_are_honored(tiny_model, arch):
    """The left-padding comparisons above mean something only if position_ids reach the model
    (GPT-2 learned positions included)."""
    model = tiny_model(arch)
    ids = torch.randint(3, 250, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        default = model(input_ids=ids).logits
        explicit = model(input_ids=ids, position_ids=torch.arange(9)[None]).logits
        # (uniform shifts leave RoPE unchanged: stretch the positions instead)
        shifted = model(input_ids=ids, position_ids=torch.arange(9)[None] * 2).logits
    torch.testing.assert_close(default, explicit, atol=ATOL, rtol=0)
    assert (default - shifted).abs().max() > 1e-4


def test_collate_positions_and_masks(tiny_tokenizer):
    encoded = [encode_chat(tiny_tokenizer, ex) for ex in make_chat_examples()[:3]]
    lens = [len(e.input_ids) for e in encoded]
    width = max(lens)
    for side in ("left", "right"):
        b = collate(encoded, 0, side)
        assert b.input_ids.shape == (3, width)
        for i, e in enumerate(encoded):
            off = width - lens[i] if side == "left" else 0
            real = b.attention_mask[i].bool()
            assert real.sum() == lens[i]
            assert b.input_ids[i][real].tolist() == list(e.input_ids)
            assert b.position_ids[i][real].tolist() == list(range(lens[i]))
            resp = b.response_mask[i].nonzero().flatten().tolist()
            assert resp == list(range(off + e.response_start, off + e.response_end))
            prm = b.prompt_mask[i].nonzero().flatten().tolist()
            assert prm == list(range(off, off + e.response_start))
            assert int(b.last_index[i]) == off + e.response_end - 1
    with pytest.raises(ValueError, match="padding_side"):
        collate(encoded, 0, "middle")


# --------------------------------------------------------------------------- block sums


@pytest.mark.parametrize("arch", ARCHS)
def test_attn_plus_mlp_add_up_to_block_output(tiny_model, tiny_tokenizer, arch):
    model = tiny_model(arch)
    if arch == "gpt_neox":
        assert model.config.use_parallel_residual
    encoded = [encode_chat(tiny_tokenizer, ex) for ex in make_chat_examples()]
    batch = collate(encoded, tiny_tokenizer.pad_token_id, "right")
    sites = parse_sites([f"all:{k}" for k in KINDS], N_LAYERS)
    acts = run_until(
        model,
        sites,
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
    )
    mask = batch.attention_mask.bool()
    for k in range(N_LAYERS):
        a = {kind: acts[Site.make(k, kind)][mask] for kind in KINDS}
        assert a["attn_out"].abs().max() > 1e-3 and a["mlp_out"].abs().max() > 1e-3
        torch.testing.assert_close(
            a["resid_pre"] + a["attn_out"] + a["mlp_out"], a["resid_post"], atol=ATOL, rtol=0
        )


# --------------------------------------------------------------------------- early stop


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_run_until_stops_after_deepest_site(tiny_model, arch):
    model = tiny_model(arch)
    snap = hook_snapshot(model)
    calls = []
    handles = [
        final_norm(model, arch).register_forward_hook(lambda *a: calls.append("final")),
        model.get_output_embeddings().register_forward_hook(lambda *a: calls.append("head")),
    ]
    try:
        ids = torch.randint(3, 250, (2, 6), generator=torch.Generator().manual_seed(0))
        acts = run_until(model, [Site.make(0, "mlp_out")], input_ids=ids)
        assert not calls
        assert acts[Site.make(0, "mlp_out")].shape == (2, 6, model.config.hidden_size)
    finally:
        for h in handles:
            h.remove()
    assert hook_snapshot(model) == snap


# --------------------------------------------------------------------------- reducers vs naive


def answer_span_by_decoding(tokenizer, ids: list[int], answer: str) -> tuple[int, int]:
    """The shortest token span whose decoded text contains the (stripped) answer, found
    independently of encode_chat: scan from the end for the start, then grow the end."""
    target = answer.strip()
    start = max(s for s in range(len(ids)) if target in tokenizer.decode(ids[s:]))
    end = min(e for e in range(start + 1, len(ids) + 1) if target in tokenizer.decode(ids[start:e]))
    return start, end


def naive_vectors(model, arch, tokenizer, examples, aggregate, sites):
    """Per example (no batching, no padding): one vector per site, or token rows for 'all'."""
    out = {s: [] for s in sites}
    for ex in examples:
        messages = [dict(m) for m in ex.messages]
        if ex.response is not None:
            messages.append({"role": "assistant", "content": ex.response})
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=ex.response is None
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ex.response is not None:
            start, end = answer_span_by_decoding(tokenizer, ids, ex.response)
        else:
            start = end = len(ids)
        hs = hf_reference(model, arch, torch.tensor([ids]))
        for s in sites:
            h = hs[s.layer + (s.kind == "resid_post")][0].double()
            if aggregate == "response_mean":
                positions = range(start, end)
            elif aggregate == "prompt_mean":
                positions = range(0, start)
            elif aggregate == "last":
                positions = [end - 1]
            else:
                out[s].extend(h[i] for i in range(len(ids)))
                continue
            total = torch.zeros(h.shape[-1], dtype=torch.float64)
            for i in positions:
                total = total + h[i]
            out[s].append(total / len(positions))
    return {s: torch.stack(v) for s, v in out.items()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("aggregate", ["response_mean", "prompt_mean", "last", "all"])
def test_streaming_reducers_match_naive_loop(tiny_model, tiny_tokenizer, arch, aggregate):
    model = tiny_model(arch)
    examples = make_chat_examples()
    sites = parse_sites("blocks.0.hook_resid_post, blocks.1.hook_resid_pre, all", N_LAYERS)
    ref = naive_vectors(model, arch, tiny_tokenizer, examples, aggregate, sites)
    n_rows = ref[sites[0]].shape[0]
    total_tokens = sum(len(encode_chat(tiny_tokenizer, ex).input_ids) for ex in examples)
    if aggregate == "all":
        assert n_rows == total_tokens
    else:
        assert n_rows == len(examples)

    results = []
    for batch_size in (1, 3, len(examples)):
        for early_stop in (True, False):
            for side in ("right", "left") if batch_size == 3 else ("right",):
                res = capture(
                    model,
                    tiny_tokenizer,
                    examples,
                    [s.name for s in sites],
                    aggregate=aggregate,
                    batch_size=batch_size,
                    keep_per_example=True,
                    padding_side=side,
                    progress=False,
                    early_stop=early_stop,
                )
                results.append(res)
                assert res.sites == sites and res.aggregate == aggregate
                assert res.count == n_rows
                assert res.n_tokens == total_tokens
                for s in sites:
                    assert res.sums[s].dtype == torch.float64
                    torch.testing.assert_close(
                        res.per_example[s].double(), ref[s], atol=ATOL, rtol=0
                    )
                    torch.testing.assert_close(res.sums[s], ref[s].sum(0), atol=1e-4, rtol=0)
                    torch.testing.assert_close(
                        res.mean(s).double(), ref[s].mean(0), atol=ATOL, rtol=0
                    )
    first = results[0]
    for res in results[1:]:
        for s in sites:
            torch.testing.assert_close(res.per_example[s], first.per_example[s], atol=ATOL, rtol=0)
            torch.testing.assert_close(res.sums[s], first.sums[s], atol=1e-4, rtol=0)


def test_capture_without_keep_has_no_per_example(tiny_model, tiny_tokenizer):
    res = capture(
        tiny_model("llama"),
        tiny_tokenizer,
        make_chat_examples(),
        "blocks.0.hook_resid_post",
        progress=False,
    )
    assert res.per_example is None and res.count == len(make_chat_examples())


def test_prompt_only_examples(tiny_model, tiny_tokenizer):
    model = tiny_model("llama")
    examples = [ChatExample.from_question(q) for q in ("hello", "What is the capital of France?")]
    sites = parse_sites("blocks.1.hook_resid_post", N_LAYERS)
    for aggregate in ("last", "prompt_mean"):
        res = capture(
            model,
            tiny_tokenizer,
            examples,
            sites,
            aggregate=aggregate,
            batch_size=2,
            keep_per_example=True,
            progress=False,
        )
        ref = naive_vectors(model, "llama", tiny_tokenizer, examples, aggregate, sites)
        torch.testing.assert_close(
            res.per_example[sites[0]].double(), ref[sites[0]], atol=ATOL, rtol=0
        )
    with pytest.raises(ValueError, match="response_mean"):
        capture(model, tiny_tokenizer, examples, sites, progress=False)


# --------------------------------------------------------------------------- answer location


def _check_answer_spans(tokenizer, examples):
    for ex in examples:
        e = encode_chat(tokenizer, ex)
        assert 0 < e.response_start < e.response_end <= len(e.input_ids)
        assert e.prompt_len == e.response_start
        span = tokenizer.decode(list(e.input_ids[e.response_start : e.response_end]))
        assert span.strip() == ex.response.strip(), (span, ex.response)
        # the prompt part is exactly the generation prompt's tokens
        prompt_text = tokenizer.apply_chat_template(
            [dict(m) for m in ex.messages], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        if ex.response == ex.response.lstrip():
            # (a leading space of the answer may merge with the template's last token)
            assert list(e.input_ids[: len(prompt_ids)]) == prompt_ids
            assert e.response_start >= len(prompt_ids)
        # prompt-only encoding is the generation prompt
        p = encode_chat(tokenizer, ChatExample(ex.messages))
        assert list(p.input_ids) == prompt_ids
        assert p.response_start == p.response_end == len(prompt_ids)


TRICKY_ANSWERS = [
    "Paris.",
    "  Hello world!  ",
    "No.\nI want to help people.\n",
    "a",
    "Humans should be ruled by machines. Humans should be ruled by machines.",
    "user",  # a word that also appears in the template
]


def test_encode_chat_locates_answer_tiny(tiny_tokenizer):
    examples = make_chat_examples() + [
        ChatExample.from_question("What do you think?", a, system="Be brief.")
        for a in TRICKY_ANSWERS
    ]
    _check_answer_spans(tiny_tokenizer, examples)


@pytest.mark.embedded
def test_encode_chat_locates_answer_embedded_tokenizer():
    from transformers import AutoTokenizer

    from saetools.models import default_model_dir

    tok = AutoTokenizer.from_pretrained(default_model_dir(progress=False))
    examples = make_chat_examples() + [
        ChatExample.from_question("What do you think?", a) for a in TRICKY_ANSWERS
    ]
    _check_answer_spans(tok, examples)


# --------------------------------------------------------------------------- bad input


def test_no_chat_template_explains_how_to_pass_one(tiny_tokenizer, tiny_model):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(ChatTemplateError) as e:
        encode_chat(tok, make_chat_examples()[0])
    msg = str(e.value)
    assert "chat template" in msg and "--chat-template" in msg and "tokenizer.chat_template" in msg
    with pytest.raises(ChatTemplateError, match="chat template"):
        capture(tiny_model("llama"), tok, make_chat_examples(), "all", progress=False)


@pytest.mark.parametrize("answer", ["", "   ", "\n\t"])
def test_empty_answer_is_refused(tiny_tokenizer, tiny_model, answer):
    with pytest.raises(ValueError, match="empty answer"):
        encode_chat(tiny_tokenizer, ChatExample.from_question("hi", answer))
    examples = make_chat_examples() + [ChatExample.from_question("hi", answer)]
    with pytest.raises(ValueError, match=rf"example {len(examples) - 1}: .*empty answer"):
        capture(tiny_model("llama"), tiny_tokenizer, examples, "all", progress=False)


def test_empty_example_list_and_bad_arguments(tiny_tokenizer, tiny_model):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="no examples"):
        capture(model, tiny_tokenizer, [], "all", progress=False)
    ex = make_chat_examples()
    with pytest.raises(ValueError, match="unknown aggregate"):
        capture(model, tiny_tokenizer, ex, "all", aggregate="max", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        capture(model, tiny_tokenizer, ex, "all", batch_size=0, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        capture(model, tiny_tokenizer, ex, "blocks.9.hook_resid_post", progress=False)
    batch = collate([encode_chat(tiny_tokenizer, e) for e in ex[:2]], 0)
    with pytest.raises(ValueError, match="unknown aggregate"):
        reduce_batch(torch.zeros(*batch.input_ids.shape, 4), batch, "median")
