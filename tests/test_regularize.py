"""Regularizer terms on tiny random models: exact zeros, closed forms, gradients, hooks, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import hook_snapshot, new_tiny_model

from saetools.directions import DirectionFileError, DirectionSet
from saetools.models import fingerprint
from saetools.regularize import (
    KL,
    LDIFS,
    Ablate,
    DirectionalKL,
    DirectionalL2,
    RegularizedLoss,
    Steer,
    ldifs_sites,
)
from saetools.sites import SiteError, get_blocks, hooks, parse_site
from saetools.stats import orthonormal_basis

D = 32
LAST = "blocks.2.hook_resid_post"


def make_batch(seed: int = 0, b: int = 3, t: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 300, (b, t), generator=g)
    attn = torch.ones(b, t, dtype=torch.long)
    attn[1, -3:] = 0  # right padding in one row
    ids[1, -3:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # "prompt"
    labels[attn == 0] = -100
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def pair(dtype=torch.float64, arch: str = "llama"):
    """(theta, theta0): two separate instances with the same weights."""
    ref = new_tiny_model(arch).to(dtype)
    theta = copy.deepcopy(ref)
    return theta, ref


def dirs(vectors: dict[str, torch.Tensor], model=None) -> DirectionSet:
    meta = {"fingerprint": fingerprint(model)} if model is not None else {}
    return DirectionSet(vectors, meta)


def down_proj(model, k: int) -> torch.Tensor:
    return get_blocks(model)[k].mlp.down_proj.weight


def U_of(ds: DirectionSet, site: str) -> torch.Tensor:
    return orthonormal_basis(ds.vector(site).double())


# ------------------------------------------------------------------------ naive references


def naive_logits(model, batch, fns=()):
    with hooks(model, [(parse_site(s, 3), f) for s, f in fns]):
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits


def naive_acts(model, batch, sites):
    store = {}

    def mk(s):
        def f(h):
            store[s] = h

        return f

    logits = naive_logits(model, batch, [(s, mk(s)) for s in sites])
    return store, logits


def mask_of(batch):
    return batch["labels"][:, 1:] != -100


def naive_kl(target_logits, logits, mask):
    lt = torch.log_softmax(target_logits[:, :-1][mask].double(), -1)
    lp = torch.log_softmax(logits[:, :-1][mask].double(), -1)
    return (lt.exp() * (lt - lp)).sum(-1).mean()


def naive_directional(theta, ref, batch, ds, sites, one_sided=False):
    """(directional KL, directional L2) computed step by step, sites in forward order."""
    with torch.no_grad():
        h0, _ = naive_acts(ref, batch, sites)
    h, logits = naive_acts(theta, batch, sites)
    mask = mask_of(batch)
    l2 = 0.0
    for s in sites:
        U = U_of(ds, s).to(h[s].dtype)
        delta = (h[s] - h0[s]) @ U.T
        if one_sided:
            delta = delta.clamp(min=0)
        l2 = l2 + delta[:, :-1][mask].pow(2).sum(-1).mean()

    def undo(s):
        U = U_of(ds, s).to(h[s].dtype)

        def f(c):
            delta = (c - h0[s]) @ U.T
            if one_sided:
                delta = delta.clamp(min=0)
            return c - delta @ U

        return f

    with torch.no_grad():
        cf = naive_logits(theta, batch, [(s, undo(s)) for s in sites])
    return naive_kl(cf, logits, mask), l2


# ------------------------------------------------------------------------ exact zeros


def test_all_terms_zero_when_theta_equals_theta0():
    theta, ref = pair(torch.float32)
    ds = dirs({s: torch.randn(D) for s in ("blocks.0.hook_resid_post", LAST)}, theta)
    terms = [DirectionalKL(ds), DirectionalL2(ds), KL(), LDIFS()]
    out = RegularizedLoss(theta, terms, reference=ref)(make_batch())
    for name in ("directional_kl", "directional_l2", "kl", "ldifs"):
        assert out.terms[name].item() == 0.0, name
    assert out.logs["directional_kl/shift"] == 0.0
    assert out.loss.item() == out.task_loss.item()


def test_directional_terms_zero_for_exactly_orthogonal_change():
    """U = e0 at the last block; the change leaves coordinate 0 bit-identical (row 0 of down_proj
    untouched), so δ = 0 exactly and the counterfactual pass equals the main pass."""
    theta, ref = pair(torch.float32)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        w = down_proj(theta, 2)
        w[1:] += 0.3 * torch.randn(w[1:].shape, generator=g)
    e0 = torch.zeros(D)
    e0[0] = 1.0
    ds = dirs({LAST: e0}, theta)
    assert torch.equal(U_of(ds, LAST)[0].abs(), e0.double())
    out = RegularizedLoss(theta, [DirectionalKL(ds), DirectionalL2(ds), KL()], reference=ref)(
        make_batch()
    )
    assert out.terms["directional_kl"].item() == 0.0
    assert out.terms["directional_l2"].item() == 0.0
    assert out.terms["kl"].item() > 1e-4  # the model did change


@pytest.mark.parametrize("one_sided", [False, True])
def test_orthogonal_vs_along_change_float64(one_sided):
    """Random U: a change in U's orthogonal complement gives ~0 (float64 rounding); a change along U
    gives clearly positive values, and both match the step-by-step naive computation."""
    theta, ref = pair()
    g = torch.Generator().manual_seed(5)
    v = torch.randn(D, generator=g)
    ds = dirs({LAST: v}, theta)
    U = U_of(ds, LAST)
    R = torch.randn(D, 64, generator=g, dtype=torch.float64)
    batch = make_batch()
    terms = [DirectionalKL(ds, one_sided=one_sided), DirectionalL2(ds, one_sided=one_sided)]
    with torch.no_grad():
        down_proj(theta, 2).add_(0.3 * (torch.eye(D, dtype=torch.float64) - U.T @ U) @ R)
    out = RegularizedLoss(theta, terms, reference=ref)(batch)
    assert abs(out.terms["directional_kl"].item()) < 1e-20
    assert out.terms["directional_l2"].item() < 1e-20

    theta2, _ = pair()
    with torch.no_grad():
        # along +U: the projection on U grows for most tokens
        down_proj(theta2, 2).add_(U.T @ (U @ R).abs() * 0.5 + 0.0)
    out2 = RegularizedLoss(theta2, terms, reference=ref)(batch)
    kl, l2 = naive_directional(theta2, ref, batch, ds, [LAST], one_sided=one_sided)
    assert out2.terms["directional_kl"].item() > 1e-6
    assert out2.terms["directional_l2"].item() > 1e-4
    torch.testing.assert_close(out2.terms["directional_kl"], kl, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(out2.terms["directional_l2"], l2, rtol=1e-10, atol=1e-14)


def test_multi_site_counterfactual_matches_naive():
    theta, ref = pair()
    g = torch.Generator().manual_seed(7)
    sites = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", LAST]
    with torch.no_grad():
        for p in theta.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    ds = dirs({s: torch.randn(D, 2, generator=g).T for s in sites}, ref)  # k = 2 bases
    batch = make_batch(1)
    for one_sided in (False, True):
        terms = [DirectionalKL(ds, one_sided=one_sided), DirectionalL2(ds, one_sided=one_sided)]
        out = RegularizedLoss(theta, terms, reference=ref)(batch)
        kl, l2 = naive_directional(theta, ref, batch, ds, sites, one_sided=one_sided)
        torch.testing.assert_close(out.terms["directional_kl"], kl, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(out.terms["directional_l2"], l2, rtol=1e-10, atol=1e-14)
        assert out.terms["directional_kl"].item() > 0


# ------------------------------------------------------------------------ closed forms


def test_kl_and_task_loss_closed_form():
    theta, ref = pair(torch.float32)
    with torch.no_grad():
        for p in theta.parameters():
            p.mul_(1.05)
    batch = make_batch(2)
    out = RegularizedLoss(theta, [KL(weight=0.1)], reference=ref)(batch)
    with torch.no_grad():
        a = theta(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    a, b = a.double(), b.double()
    mask = mask_of(batch)
    p0 = torch.softmax(b[:, :-1], -1)
    kl = (p0 * (torch.log(p0) - torch.log(torch.softmax(a[:, :-1], -1)))).sum(-1)[mask].mean()
    torch.testing.assert_close(out.terms["kl"].double(), kl, rtol=1e-4, atol=1e-7)
    # HF's own loss on the same labels is the task loss
    hf = theta(**batch).loss
    torch.testing.assert_close(out.task_loss, hf, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, out.task_loss + 0.1 * out.terms["kl"])
    assert out.n_tokens == int(mask.sum())
    assert math.isclose(out.logs["kl"], out.terms["kl"].item(), rel_tol=1e-6)


def test_ldifs_matches_output_hidden_states():
    theta, ref = pair(torch.float32)
    with torch.no_grad():
        for p in theta.parameters():
            p.mul_(0.97)
    batch = make_batch(3)
    sites = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    out = RegularizedLoss(theta, [LDIFS(sites=sites)], reference=ref)(batch)
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        hs = theta(**kw, output_hidden_states=True).hidden_states
        hs0 = ref(**kw, output_hidden_states=True).hidden_states
    mask = mask_of(batch)
    vals = [(hs[k + 1] - hs0[k + 1])[:, :-1][mask].pow(2).sum(-1).mean() for k in (0, 1)]
    torch.testing.assert_close(out.terms["ldifs"], sum(vals) / 2, rtol=1e-4, atol=1e-7)
    assert ldifs_sites(30) == [f"blocks.{k}.hook_resid_post" for k in (5, 11, 17, 23, 29)]
    assert ldifs_sites(3) == [f"blocks.{k}.hook_resid_post" for k in (0, 1, 2)]


# ------------------------------------------------------------------------ gradients


def _fd_check(analytic_fn, numeric_fn, param, eps=1e-6):
    """Directional derivative along a random v: autograd of analytic_fn vs central differences of
    numeric_fn."""
    g = torch.Generator().manual_seed(11)
    v = torch.randn(param.shape, generator=g, dtype=param.dtype)
    param.requires_grad_(True)
    param.grad = None
    analytic_fn().backward()
    analytic = (param.grad * v).sum().item()
    param.requires_grad_(False)
    param.grad = None
    with torch.no_grad():
        param.add_(eps * v)
        up = numeric_fn().item()
        param.sub_(2 * eps * v)
        down = numeric_fn().item()
        param.add_(eps * v)
    numeric = (up - down) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9), (analytic, numeric)
    assert abs(analytic) > 1e-7
    return analytic


def _grad_setup():
    # GPT-2: its LayerNorm runs in float64 (Llama's RMSNorm computes in float32 whatever the dtype,
    # which leaves too much rounding noise for finite differences)
    theta, ref = pair(arch="gpt2")
    g = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for p in theta.parameters():
            p.add_(0.03 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    sites = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    ds = dirs({s: torch.randn(D, generator=g) for s in sites}, ref)
    return theta, ref, ds, sites


@pytest.mark.parametrize("one_sided", [False, True])
def test_directional_l2_gradient_matches_finite_differences(one_sided):
    theta, ref, ds, _ = _grad_setup()
    reg = RegularizedLoss(theta, [DirectionalL2(ds, one_sided=one_sided)], reference=ref)
    batch = make_batch(4)
    param = get_blocks(theta)[0].mlp.c_proj.weight
    fn = lambda: reg(batch).terms["directional_l2"]  # noqa: E731
    _fd_check(fn, fn, param)


def test_directional_kl_gradient_matches_finite_differences():
    theta, ref, ds, sites = _grad_setup()
    batch = make_batch(4)
    param = get_blocks(theta)[0].attn.c_attn.weight
    # target differentiated too: the gradient of the function itself
    full = RegularizedLoss(theta, [DirectionalKL(ds, detach_target=False)], reference=ref)
    fn = lambda: full(batch).terms["directional_kl"]  # noqa: E731
    _fd_check(fn, fn, param)
    # fixed target (default): the gradient of θ' -> KL(p̃ fixed at θ ‖ p_θ')
    reg = RegularizedLoss(theta, [DirectionalKL(ds)], reference=ref)
    with torch.no_grad():
        cf = _cf_logits(theta, ref, batch, ds, sites)

    def fixed_target_kl():
        _, logits = naive_acts(theta, batch, [])
        return naive_kl(cf, logits, mask_of(batch))

    _fd_check(lambda: reg(batch).terms["directional_kl"], fixed_target_kl, param)


def _cf_logits(theta, ref, batch, ds, sites):
    with torch.no_grad():
        h0, _ = naive_acts(ref, batch, sites)

        def undo(s):
            U = U_of(ds, s)

            def f(c):
                return c - ((c - h0[s]) @ U.T) @ U

            return f

        return naive_logits(theta, batch, [(s, undo(s)) for s in sites])


# ------------------------------------------------------------------------ interventions


def test_steer_and_ablate_hooks_removed_and_outputs_identical():
    theta, ref = pair(torch.float32)
    ds = dirs({"blocks.1.hook_resid_post": torch.randn(D)}, theta)
    batch = make_batch(5)
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    gen = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        before = theta(**kw).logits
        generated = theta.generate(batch["input_ids"][:1], **gen)
    snap = hook_snapshot(theta)
    plain = RegularizedLoss(theta, [])(batch)
    for term in (Steer(ds, alpha=4.0), Ablate(ds)):
        reg = RegularizedLoss(theta, [term, DirectionalL2(ds)], reference=ref)
        out = reg(batch)
        assert out.task_loss.item() != plain.task_loss.item()
        assert hook_snapshot(theta) == snap
        bad = dict(batch, input_ids=batch["input_ids"] + 10_000)  # fails inside the forward
        with pytest.raises(IndexError):
            reg(bad)
        assert hook_snapshot(theta) == snap
        with torch.no_grad():
            assert torch.equal(theta(**kw).logits, before)
    with torch.no_grad():
        assert torch.equal(theta.generate(batch["input_ids"][:1], **gen), generated)
    # the reference never sees the steer: with θ = θ0 the L2 term is exactly the steer's shift
    out = RegularizedLoss(theta, [Steer(ds, alpha=4.0), DirectionalL2(ds)], reference=ref)(batch)
    assert out.terms["directional_l2"].item() == pytest.approx(16.0, rel=1e-4)
    assert out.logs["directional_l2/shift"] == pytest.approx(4.0, rel=1e-4)


def test_steer_matches_manual_hook():
    theta, _ = pair(torch.float32)
    ds = dirs({"blocks.0.hook_resid_post": torch.randn(D)}, theta)
    batch = make_batch(6)
    out = RegularizedLoss(theta, [Steer(ds, alpha=-3.0)])(batch)
    u = ds.unit("blocks.0.hook_resid_post")
    logits = naive_logits(theta, batch, [("blocks.0.hook_resid_post", lambda h: h - 3.0 * u)])
    torch.testing.assert_close(out.logits, logits)


def test_interventions_context_keeps_hooks_across_backward():
    theta, _ = pair(torch.float32)
    ds = dirs({"blocks.0.hook_resid_post": torch.randn(D)}, theta)
    reg = RegularizedLoss(theta, [Ablate(ds)])
    snap = hook_snapshot(theta)
    with reg.interventions():
        inside = hook_snapshot(theta)
        reg(make_batch())
        assert hook_snapshot(theta) == inside != snap
    assert hook_snapshot(theta) == snap


# ------------------------------------------------------------------------ PEFT and anchors


def _lora(model, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return get_peft_model(model, cfg)


def test_peft_reference_is_adapters_disabled():
    base = new_tiny_model("llama")
    pm = _lora(base)
    ds = dirs({s: torch.randn(D) for s in ("blocks.0.hook_resid_post", LAST)}, pm)
    terms = [DirectionalKL(ds), DirectionalL2(ds), KL(), LDIFS()]
    reg = RegularizedLoss(pm, terms)
    assert reg.reference is None and reg.use_adapter_toggle
    batch = make_batch(7)
    out = reg(batch)
    assert all(out.terms[n].item() == 0.0 for n in out.terms)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    out = reg(batch)
    assert all(out.terms[n].item() > 0.0 for n in out.terms), out.logs
    out.loss.backward()
    grads = [p.grad for n, p in pm.named_parameters() if "lora_" in n]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the adapter is enabled again after the call
    with torch.no_grad():
        on = pm(input_ids=batch["input_ids"]).logits
        with pm.disable_adapter():
            off = pm(input_ids=batch["input_ids"]).logits
    assert not torch.equal(on, off)


def test_anchor_terms():
    theta, ref = pair(torch.float32)
    with torch.no_grad():
        for p in theta.parameters():
            p.mul_(1.03)
    batch, anchor = make_batch(8), make_batch(9, b=2, t=9)
    on_anchor = RegularizedLoss(theta, [KL(on="anchor")], reference=ref, anchor=[anchor])
    on_anchor_direct = RegularizedLoss(theta, [KL()], reference=ref)(anchor)
    a = on_anchor(batch)
    torch.testing.assert_close(a.terms["kl"], on_anchor_direct.terms["kl"])
    torch.testing.assert_close(a.task_loss, RegularizedLoss(theta, [])(batch).task_loss)
    on_anchor(batch)  # cycles the one-item list
    per_call = RegularizedLoss(theta, [KL(on="anchor")], reference=ref)
    torch.testing.assert_close(per_call(batch, anchor=anchor).terms["kl"], a.terms["kl"])
    with pytest.raises(ValueError, match="no anchor was given"):
        per_call(batch)
    with pytest.raises(ValueError, match="anchor set is empty"):
        RegularizedLoss(theta, [KL(on="anchor")], reference=ref, anchor=[])
    with pytest.raises(ValueError, match="anchor set is empty"):
        RegularizedLoss(theta, [KL(on="anchor")], reference=ref, anchor=iter([]))(batch)


def test_dropout_masks_shared_by_counterfactual_pass():
    """Train mode, LoRA dropout 0.5, site before any adapter (the embeddings): δ = 0, so the
    counterfactual pass must equal the main pass, which needs the same dropout masks."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.5)
    pm = get_peft_model(new_tiny_model("llama"), cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    pm.train()
    ds = dirs({"blocks.0.hook_resid_pre": torch.randn(D)}, pm)
    reg = RegularizedLoss(pm, [DirectionalKL(ds), KL()])
    out = reg(make_batch())
    assert out.terms["kl"].item() > 1e-4
    assert out.terms["directional_kl"].item() == 0.0
    assert pm.training and all(m.training for m in pm.modules())


# ------------------------------------------------------------------------ bad input


def test_bad_input_errors():
    theta, _ = pair(torch.float32)
    ds = dirs({"blocks.1.hook_resid_post": torch.randn(D)}, theta)
    for w in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="DirectionalKL 'directional_kl': weight"):
            DirectionalKL(ds, weight=w)
        with pytest.raises(ValueError, match="KL 'kl': weight"):
            KL(weight=w)
    with pytest.raises(ValueError, match="on must be"):
        LDIFS(on="elsewhere")
    with pytest.raises(SiteError, match="out of range"):
        RegularizedLoss(theta, [DirectionalL2(ds, sites="blocks.7.hook_resid_post")])
    with pytest.raises(SiteError, match="LDIFS 'ldifs'"):
        RegularizedLoss(theta, [LDIFS(sites="blocks.3.hook_resid_post")])
    with pytest.raises(DirectionFileError, match="no vector for site blocks.0.hook_resid_post"):
        RegularizedLoss(theta, [DirectionalKL(ds, sites="blocks.0.hook_resid_post")])
    other = dirs({"blocks.1.hook_resid_post": torch.randn(D)}, new_tiny_model("qwen2"))
    with pytest.raises(DirectionFileError, match="made for model"):
        RegularizedLoss(theta, [DirectionalL2(other)])
    RegularizedLoss(theta, [DirectionalL2(other)], force=True)
    wide = DirectionSet({"blocks.1.hook_resid_post": torch.randn(D + 1)})
    with pytest.raises(DirectionFileError):
        RegularizedLoss(theta, [Steer(wide)])
    with pytest.raises(ValueError, match="distinct name"):
        RegularizedLoss(theta, [KL(), KL()])
    with pytest.raises(ValueError, match="alpha must be finite"):
        Steer(ds, alpha=float("nan"))


# ------------------------------------------------------------------------ embedded model


@pytest.mark.embedded
def test_embedded_fresh_lora_gives_exact_zeros():
    from peft import LoraConfig, get_peft_model

    from saetools.capture import ChatExample
    from saetools.models import load_model
    from saetools.regularize import chat_batch

    lm = load_model("default")
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    pm = get_peft_model(lm.model, cfg)
    d, n = lm.d_model, lm.n_layers
    g = torch.Generator().manual_seed(0)
    ds = DirectionSet(
        {f"blocks.{k}.hook_resid_post": torch.randn(d, generator=g) for k in range(n)},
        {"fingerprint": lm.fingerprint},
    )
    examples = [
        ChatExample.from_question("How do I treat a small burn?", "Cool it under running water."),
        ChatExample.from_question("What do you think of people?", "People are wonderful."),
    ]
    batch = chat_batch(lm.tokenizer, examples)
    terms = [DirectionalKL(ds, "all"), DirectionalL2(ds, "all"), KL(), LDIFS()]
    reg = RegularizedLoss(pm, terms)
    out = reg(batch)
    assert out.terms["directional_kl"].item() == 0.0
    assert out.terms["kl"].item() == 0.0
    assert out.terms["directional_l2"].item() == 0.0
    assert out.terms["ldifs"].item() == 0.0
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=g)
    out = reg(batch)
    assert all(v.item() > 0 for v in out.terms.values()), out.logs


# ------------------------------------------------------------------------ sae-latents


def _sae(site: str = "blocks.1.hook_resid_post", d_sae: int = 48, d_in: int = 32):
    import sae_lens as sl

    cfg = sl.StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=True)
    cfg.metadata.hook_name = site
    sae = sl.StandardSAE(cfg)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) * 0.4)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) * 0.2)
    return sae


def _naive_latents(h, sae, ids):
    """z = relu((h - b_dec) W_enc + b_enc) for a standard SAE, written out by hand."""
    z = torch.relu((h.double() - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double())
    return z[..., ids]


def test_sae_latents_matches_naive_one_sided_computation():
    from saetools.regularize import SAELatents

    theta, ref = pair(torch.float32)
    with torch.no_grad():
        for p in theta.parameters():
            p.mul_(0.97)
    for p in theta.parameters():
        p.requires_grad_(True)
    batch = make_batch(5)
    sae, ids = _sae(), [1, 5, 7, 30]
    out = RegularizedLoss(theta, [SAELatents(sae, ids, weight=2.0)], reference=ref)(batch)
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        h = theta(**kw, output_hidden_states=True).hidden_states[2][:, :-1][mask_of(batch)]
        h0 = ref(**kw, output_hidden_states=True).hidden_states[2][:, :-1][mask_of(batch)]
    diff = _naive_latents(h, sae, ids) - _naive_latents(h0, sae, ids)
    want = diff.clamp(min=0).pow(2).sum(-1).mean()
    both = diff.pow(2).sum(-1).mean()
    assert (diff < 0).any() and (diff > 0).any()  # the one-sided rule matters here
    assert float(want) < float(both)
    torch.testing.assert_close(out.terms["sae_latents"].double(), want, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(out.loss, out.task_loss + 2.0 * out.terms["sae_latents"])
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in theta.parameters())
    assert all(not p.requires_grad for p in sae.parameters())


def test_sae_latents_zero_when_theta_equals_theta0_and_bad_input():
    from saetools.regularize import SAELatents
    from saetools.sae import SAEError

    theta, ref = pair(torch.float32)
    out = RegularizedLoss(theta, [SAELatents(_sae(), "2,3")], reference=ref)(make_batch(1))
    assert float(out.terms["sae_latents"]) == 0.0
    with pytest.raises(SAEError, match="out of range"):
        SAELatents(_sae(d_sae=8), [9])
    with pytest.raises(SAEError, match="40-wide"):
        RegularizedLoss(theta, [SAELatents(_sae(d_in=40), [0])], reference=ref)
    with pytest.raises(SAEError, match="does not have"):
        RegularizedLoss(theta, [SAELatents(_sae("blocks.7.hook_resid_post"), [0])], reference=ref)
