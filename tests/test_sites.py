"""Site names: parsing, resolution to modules on every tiny architecture, and hook hygiene."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, N_LAYERS, hook_snapshot

from saetools.sites import (
    KINDS,
    HookPoint,
    Site,
    SiteError,
    add_hook,
    d_model,
    deepest,
    get_blocks,
    hook_point,
    hooks,
    n_layers,
    parse_site,
    parse_sites,
)

# ------------------------------------------------------------------------------------ parsing


def names(sites):
    return [s.name for s in sites]


def test_parse_single():
    (s,) = parse_sites("blocks.3.hook_resid_post", 8)
    assert s == Site.make(3, "resid_post")
    assert s.name == "blocks.3.hook_resid_post" and str(s) == s.name
    assert parse_site(" blocks.0.hook_attn_out ", 8) == Site.make(0, "attn_out")


def test_parse_comma_list_sorted_and_deduplicated():
    got = parse_sites(
        "blocks.2.hook_resid_post, blocks.1.hook_mlp_out,blocks.2.hook_resid_pre,"
        "blocks.1.hook_mlp_out,",
        4,
    )
    assert names(got) == [
        "blocks.1.hook_mlp_out",
        "blocks.2.hook_resid_pre",
        "blocks.2.hook_resid_post",
    ]


def test_parse_list_and_site_objects():
    got = parse_sites(["blocks.1.hook_resid_post", Site.make(0, "attn_out")], 4)
    assert names(got) == ["blocks.0.hook_attn_out", "blocks.1.hook_resid_post"]
    assert parse_sites(Site.make(2, "mlp_out"), 4) == [Site.make(2, "mlp_out")]


def test_depth_order_inside_a_block():
    sites = [Site.make(1, k) for k in reversed(KINDS)] + [Site.make(0, "resid_post")]
    assert names(sorted(sites)) == [
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_mlp_out",
        "blocks.1.hook_resid_post",
    ]
    assert deepest(sites) == Site.make(1, "resid_post")


def test_parse_range():
    got = parse_sites("blocks.2-5.hook_resid_post", 8)
    assert names(got) == [f"blocks.{k}.hook_resid_post" for k in range(2, 6)]
    assert names(parse_sites("blocks.4-4.hook_mlp_out", 8)) == ["blocks.4.hook_mlp_out"]


def test_parse_all():
    assert names(parse_sites("all", 3)) == [f"blocks.{k}.hook_resid_post" for k in range(3)]
    want = [f"blocks.{k}.hook_resid_pre" for k in range(3)]
    assert names(parse_sites("all:hook_resid_pre", 3)) == want
    assert names(parse_sites("all:resid_pre", 3)) == want
    both = parse_sites("all, all:hook_attn_out", 2)
    assert len(both) == 4


def test_out_of_range_layer_names_layer_and_range():
    with pytest.raises(SiteError) as e:
        parse_sites("blocks.12.hook_resid_post", 4)
    msg = str(e.value)
    assert "12" in msg and "0..3" in msg and "4 blocks" in msg
    with pytest.raises(SiteError, match=r"layer 9 .*0\.\.3"):
        parse_sites("blocks.1-9.hook_resid_post", 4)
    with pytest.raises(SiteError, match="layer 5"):
        parse_sites([Site.make(5, "resid_post")], 4)


@pytest.mark.parametrize(
    "bad",
    [
        "blocks.1.hook_resid",
        "block.1.hook_resid_post",
        "blocks.x.hook_resid_post",
        "model.layers.1",
        "blocks.-1.hook_resid_post",
        "all:hook_nope",
    ],
)
def test_unknown_site_lists_valid_sites(bad):
    with pytest.raises(SiteError) as e:
        parse_sites(bad, 4)
    msg = str(e.value)
    assert "valid sites" in msg
    for kind in KINDS:
        assert kind in msg
    assert "0..3" in msg


def test_empty_range_and_empty_spec():
    with pytest.raises(SiteError, match="empty layer range"):
        parse_sites("blocks.5-2.hook_resid_post", 8)
    for empty in ("", " , ", []):
        with pytest.raises(SiteError, match="no sites given"):
            parse_sites(empty, 8)


def test_parse_site_refuses_several():
    with pytest.raises(SiteError, match="single site"):
        parse_site("blocks.0-1.hook_resid_post", 4)


def test_unknown_kind():
    with pytest.raises(SiteError, match="valid kinds"):
        Site.make(0, "resid_mid")


# ------------------------------------------------------------------------------------ resolution


def _expected_module(model, arch: str, site: Site) -> HookPoint:
    """Independent table of where each site lives in each architecture."""
    block = {
        "gpt2": lambda: model.transformer.h,
        "gpt_neox": lambda: model.gpt_neox.layers,
    }.get(arch, lambda: model.model.layers)()[site.layer]
    if site.kind == "resid_pre":
        return HookPoint(block, True)
    if site.kind == "resid_post":
        return HookPoint(block, False)
    if site.kind == "attn_out":
        if arch in ("gemma2", "gemma3"):
            return HookPoint(block.post_attention_layernorm, False)
        return HookPoint({"gpt2": "attn", "gpt_neox": "attention"}.get(arch, "self_attn"), False)
    if arch in ("gemma2", "gemma3"):
        return HookPoint(block.post_feedforward_layernorm, False)
    return HookPoint(block.mlp, False)


@pytest.mark.parametrize("arch", ARCHS)
def test_resolution_every_arch_and_kind(tiny_model, arch):
    model = tiny_model(arch)
    assert n_layers(model) == N_LAYERS
    assert len(get_blocks(model)) == N_LAYERS
    assert d_model(model) == model.get_input_embeddings().weight.shape[1]
    for site in parse_sites(["all:" + k for k in KINDS], N_LAYERS):
        got = hook_point(model, site)
        want = _expected_module(model, arch, site)
        if isinstance(want.module, str):
            block = get_blocks(model)[site.layer]
            want = HookPoint(getattr(block, want.module), want.is_input)
        assert got.module is want.module, (arch, site.name)
        assert got.is_input == want.is_input


def test_resolution_refuses_out_of_range_and_unknown_models(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(SiteError, match="out of range"):
        hook_point(model, Site.make(N_LAYERS, "resid_post"))
    with pytest.raises(SiteError, match="cannot find the decoder blocks"):
        get_blocks(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------ hooks


def _ids(seed=0, b=2, t=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 250, (b, t), generator=g)


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("arch", ARCHS)
def test_hooks_removed_after_exception_in_forward(tiny_model, arch):
    model = tiny_model(arch)
    ids = _ids()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    snap = hook_snapshot(model)
    seen = []

    def record(h):
        seen.append(h.shape)

    def explode(h):
        raise Boom("inside the forward")

    fns = {Site.make(k, kind): record for k in range(N_LAYERS) for kind in KINDS}
    fns[Site.make(N_LAYERS - 1, "mlp_out")] = explode
    with pytest.raises(Boom), hooks(model, fns), torch.no_grad():
        model(input_ids=ids)
    assert seen and all(s == (2, 7, d_model(model)) for s in seen)
    assert hook_snapshot(model) == snap
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)


def test_hooks_removed_when_install_fails(tiny_model):
    model = tiny_model("llama")
    snap = hook_snapshot(model)
    bad = Site(layer=N_LAYERS + 3, order=3, kind="resid_post")  # bypasses parse checks
    with (
        pytest.raises(SiteError),
        hooks(model, [(Site.make(0, "resid_post"), lambda h: None), (bad, lambda h: None)]),
    ):
        pass
    assert hook_snapshot(model) == snap


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", KINDS)
def test_identity_hook_bit_identical_and_replacement_changes_logits(tiny_model, arch, kind):
    model = tiny_model(arch)
    ids = _ids(1)
    site = Site.make(1, kind)
    snap = hook_snapshot(model)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with hooks(model, {site: lambda h: h}):
            same = model(input_ids=ids).logits
        with hooks(model, {site: lambda h: None}):
            same2 = model(input_ids=ids).logits
        delta = torch.randn(d_model(model), generator=torch.Generator().manual_seed(3))
        with hooks(model, {site: lambda h: h + delta}):
            changed = model(input_ids=ids).logits
    assert torch.equal(base, same)
    assert torch.equal(base, same2)
    assert (changed - base).abs().max() > 1e-3
    assert hook_snapshot(model) == snap


@pytest.mark.parametrize("arch", ARCHS)
def test_replacement_at_resid_post_is_seen_by_next_resid_pre(tiny_model, arch):
    model = tiny_model(arch)
    ids = _ids(2)
    got = {}
    marker = torch.full((d_model(model),), 7.0)

    def replace(h):
        return torch.zeros_like(h) + marker

    def grab(h):
        got["pre"] = h.clone()

    with (
        torch.no_grad(),
        hooks(model, {Site.make(0, "resid_post"): replace, Site.make(1, "resid_pre"): grab}),
    ):
        model(input_ids=ids)
    assert torch.equal(got["pre"], torch.zeros_like(got["pre"]) + marker)


def test_add_hook_handle_removes(tiny_model):
    model = tiny_model("gpt2")
    snap = hook_snapshot(model)
    handle = add_hook(model, Site.make(0, "resid_pre"), lambda h: h * 0)
    handle.remove()
    assert hook_snapshot(model) == snap
