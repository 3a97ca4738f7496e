"""Chunked logit terms: the LM head run on the loss tokens a chunk at a time equals the full-logits
form (loss, every term, the gradient of every trainable parameter) to 1e-6 in float64, on several
architectures, with and without PEFT, with padding; gradient checkpointing works with the hooks."""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch
from conftest import D_MODEL, new_tiny_model

from saetools.directions import DirectionSet
from saetools.regularize import (
    KL,
    LDIFS,
    Ablate,
    DirectionalKL,
    DirectionalL2,
    RegularizedLoss,
    Steer,
)
from saetools.regularize.head import HeadTap, head_fn
from saetools.sites import get_blocks

SITES = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post")


def make_batch(seed: int = 0, b: int = 3, t: int = 14) -> dict:
    """Right padding in row 1 (left padding gives NaN at the padded positions of the tiny eager
    models in float64: a fully masked attention row overflows to -inf)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 300, (b, t), generator=g)
    attn = torch.ones(b, t, dtype=torch.long)
    attn[1, -4:] = 0
    ids[attn == 0] = 0
    labels = ids.clone()
    labels[:, :5] = -100
    labels[attn == 0] = -100
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels, "position_ids": pos}


def _lora(model, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [n for n in ("q_proj", "v_proj", "c_attn", "query_key_value") if n in names]
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return pm


def _setup(arch: str, peft: bool, dtype=torch.float64):
    """(θ, θ0 or None, directions): θ perturbed from θ0 (full fine-tune) or a LoRA on θ0."""
    ref = new_tiny_model(arch).to(dtype)
    g = torch.Generator().manual_seed(3)
    ds = DirectionSet({s: torch.randn(2, D_MODEL, generator=g) for s in SITES}, {})
    if peft:
        return _lora(ref), None, ds
    theta = copy.deepcopy(ref)
    with torch.no_grad():
        for p in theta.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.02)
    for p in theta.parameters():
        p.requires_grad_(True)
    return theta, ref, ds


def _terms(ds):
    return [
        KL(weight=0.5),
        DirectionalKL(ds, weight=1.0),
        DirectionalKL(ds, SITES[0], one_sided=True, detach_target=False, name="dkl_live"),
        DirectionalL2(ds, weight=0.3),
        LDIFS(weight=0.1, sites=list(SITES)),
    ]


def _run(model, terms, ref, batch, chunk):
    for p in model.parameters():
        p.grad = None
    out = RegularizedLoss(model, terms, reference=ref, logit_chunk=chunk)(batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _assert_same(a, ga, b, gb):
    assert set(a.terms) == set(b.terms)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(a.task_loss, b.task_loss, rtol=1e-6, atol=1e-9)
    for k in a.terms:
        torch.testing.assert_close(a.terms[k], b.terms[k], rtol=1e-6, atol=1e-9, msg=k)
    assert list(a.logs) == list(b.logs)
    assert set(ga) == set(gb) and ga
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-6, atol=1e-9, msg=k)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "gpt_neox", "qwen2"])
@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_chunked_equals_full_logits_float64(arch, peft):
    """Chunks of 4 rows (several chunks, the last one short) against the full-logits form."""
    model, ref, ds = _setup(arch, peft)
    model.train()
    terms = _terms(ds)
    batch = make_batch(1)
    full, g_full = _run(model, terms, ref, batch, None)
    chunked, g_chunked = _run(model, terms, ref, batch, 4)
    assert all(full.terms[k].item() > 0 for k in full.terms), full.logs
    _assert_same(chunked, g_chunked, full, g_full)
    one, g_one = _run(model, terms, ref, batch, 1000)  # one chunk
    _assert_same(one, g_one, full, g_full)


def test_chunked_anchor_terms_and_steer():
    model, ref, ds = _setup("llama", False)
    anchor = make_batch(9, b=2)
    terms = [
        KL(weight=0.5, on="anchor", name="kl_anchor"),
        DirectionalKL(ds, weight=1.0, on="anchor"),
        KL(weight=0.2),
        Steer(ds, SITES[0], alpha=0.5),
        Ablate(ds, SITES[1]),
    ]
    batch = make_batch(2)
    res = []
    for chunk in (None, 3):
        for p in model.parameters():
            p.grad = None
        out = RegularizedLoss(model, terms, reference=ref, logit_chunk=chunk)(batch, anchor=anchor)
        out.loss.backward()
        res.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    _assert_same(res[1][0], res[1][1], res[0][0], res[0][1])


def test_chunked_outputs_logits_stats_and_no_loss_tokens():
    model, ref, ds = _setup("gemma2", True)
    batch = make_batch(4)
    full = RegularizedLoss(model, [KL()], logit_chunk=None)(batch)
    chunked = RegularizedLoss(model, [KL()], logit_chunk=2)(batch)
    torch.testing.assert_close(chunked.logits, full.logits, rtol=1e-9, atol=1e-9)
    for a, b in zip(chunked.token_stats(), full.token_stats(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    ent, correct = full.token_stats()
    lp = torch.log_softmax(full.logits[:, :-1][full.mask].double(), -1)
    torch.testing.assert_close(ent, -(lp.exp() * lp).sum())
    assert int(correct) == int((lp.argmax(-1) == full.labels).sum())
    # no loss token at all: zeros that still backpropagate
    empty = dict(batch, labels=torch.full_like(batch["labels"], -100))
    out = RegularizedLoss(model, [KL(), DirectionalKL(ds)], logit_chunk=2)(empty)
    assert out.n_tokens == 0 and out.loss.item() == 0.0
    out.loss.backward()


def test_unknown_head_postprocessing_falls_back_to_full_logits():
    """A model whose logits are not lm_head(h) (here: doubled by a forward hook) is detected on
    the first call, which then reruns with full logits; later calls stay there."""
    model, ref, ds = _setup("llama", False)
    handle = model.register_forward_hook(lambda m, a, o: o.__class__(logits=o.logits * 2))
    ref_handle = ref.register_forward_hook(lambda m, a, o: o.__class__(logits=o.logits * 2))
    try:
        batch = make_batch(5)
        want, g_want = _run(model, [KL(), DirectionalKL(ds)], ref, batch, None)
        reg = RegularizedLoss(model, [KL(), DirectionalKL(ds)], reference=ref, logit_chunk=4)
        for p in model.parameters():
            p.grad = None
        with pytest.warns(UserWarning, match="chunked logit terms are off"):
            got = reg(batch)
        got.loss.backward()
        g_got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert reg.logit_chunk is None
        _assert_same(got, g_got, want, g_want)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            reg(batch)
    finally:
        handle.remove()
        ref_handle.remove()


def test_head_fn_matches_model_logits(arch):
    """The head as a function equals the model's own last step on every tiny architecture
    (Gemma 2's final softcap included)."""
    model = new_tiny_model(arch)
    batch = make_batch(6)
    kw = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        want = model(**kw).logits
        with HeadTap(model, keep=0) as tap:
            none = model(**kw).logits
        got = head_fn(model)(tap.result())
    assert none.shape[1] == 0
    torch.testing.assert_close(got, want)


def test_bad_logit_chunk():
    model, _, _ = _setup("llama", True)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="logit_chunk must be a positive integer or None"):
            RegularizedLoss(model, [KL()], logit_chunk=bad)


# ------------------------------------------------------------------------ gradient checkpointing


MLP_SITE = "blocks.1.hook_mlp_out"


def _ckpt_step(peft: bool, ckpt: bool, hold: bool = True):
    """One step with DirectionalKL at a block output and inside block 1 (its MLP), KL, a Steer and
    an Ablate inside blocks 1 and 2 (checkpointed with the block); returns (output, grads, MLP
    calls in the forward, MLP calls in all)."""
    model, ref, ds = _setup("llama", peft)
    extra = {MLP_SITE: ds.vector(SITES[0]), "blocks.2.hook_mlp_out": ds.vector(SITES[1])}
    ds = DirectionSet({**{s: ds.vector(s) for s in SITES}, **extra}, {})
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if peft:
            model.enable_input_require_grads()
    model.train()
    terms = [
        DirectionalKL(ds, [SITES[0], MLP_SITE], weight=1.0),
        KL(weight=0.3),
        Steer(ds, MLP_SITE, alpha=0.7),
        Ablate(ds, "blocks.2.hook_mlp_out"),
    ]
    reg = RegularizedLoss(model, terms, reference=ref)
    calls: list[bool] = []
    handle = get_blocks(model)[1].mlp.register_forward_pre_hook(
        lambda *a, _c=calls: _c.append(torch.is_grad_enabled())
    )
    try:
        with reg.interventions() if hold else contextlib.nullcontext():
            out = reg(make_batch(8))
            n_forward = len(calls)
            out.loss.backward()
    finally:
        handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads, n_forward, len(calls)


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_with_hooks(peft):
    """``gradient_checkpointing_enable()``: block forwards run again during backward (transformers
    checkpoints ``forward``, so hooks on a block itself stay outside; hooks on its MLP or attention
    run again). With ``reg.interventions()`` held across backward, loss and gradients equal those
    without checkpointing."""
    a, ga, fwd_a, all_a = _ckpt_step(peft, ckpt=False)
    b, gb, fwd_b, all_b = _ckpt_step(peft, ckpt=True)
    assert all_a == fwd_a and all_b > fwd_b  # the MLP ran again in the backward: checkpointing
    _assert_same(b, gb, a, ga)
    # without holding the hooks, the recomputation misses the Ablate inside block 2: torch
    # notices (other saved tensors) and raises, rather than giving other gradients silently
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        _ckpt_step(peft, ckpt=True, hold=False)


def test_chunked_head_follows_the_forwards_autocast():
    """A mixed-precision wrapper that autocasts inside ``forward`` only (accelerate's, the
    Trainer's ``bf16=True``): the chunked head runs under the same autocast, so the first call's
    check passes and the values match the full-logits form at bfloat16 precision."""
    model = _lora(new_tiny_model("llama"))
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    try:
        batch = make_batch(11)
        g = torch.Generator().manual_seed(4)
        ds = DirectionSet({s: torch.randn(D_MODEL, generator=g) for s in SITES}, {})
        terms = [KL(), DirectionalKL(ds)]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fall-back to full logits
            chunked = RegularizedLoss(model, terms, logit_chunk=4)(batch)
        full = RegularizedLoss(model, terms, logit_chunk=None)(batch)
        for k in ("loss", "task_loss", "kl", "directional_kl"):
            assert chunked.logs[k] == pytest.approx(full.logs[k], rel=2e-2, abs=1e-4), k
    finally:
        del model.forward
