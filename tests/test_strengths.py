"""Strengths that carry across models: norm-relative alpha (steer, sweep, export, serve requests),
the weak-alpha note, normalized regularizer terms, and the sweep table without a neutral set."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from saetools.directions import DirectionSet
from saetools.export import export_directions
from saetools.regularize import DirectionalKL, DirectionalL2, RegularizedLoss
from saetools.steer import (
    SteeringError,
    interventions_from_directions,
    scale_alpha,
    weak_alpha_note,
)

S9 = "blocks.1.hook_resid_post"
S2 = "blocks.2.hook_resid_post"


def _ds(stats=None, d=32, fp=None):
    g = torch.Generator().manual_seed(0)
    vecs = {S9: torch.randn(d, generator=g), S2: torch.randn(d, generator=g)}
    meta = {"stats": stats if stats is not None else {S9: {"resid_norm_mean": 200.0},
                                                      S2: {"resid_norm_mean": 50.0}}}  # fmt: skip
    if fp:
        meta["fingerprint"] = fp
    return DirectionSet(vecs, meta)


def test_norm_relative_alpha_scales_by_each_sites_norm():
    ds = _ds()
    ivs = interventions_from_directions(ds, [S9, S2], "add", 0.1, alpha_scale="norm")
    assert [iv.alpha for iv in ivs] == pytest.approx([20.0, 5.0])
    ivs = interventions_from_directions(ds, [S9, S2], "add", {S9: 0.1, S2: 0.2}, alpha_scale="norm")
    assert [iv.alpha for iv in ivs] == pytest.approx([20.0, 10.0])
    assert interventions_from_directions(ds, S9, "add", 3.0)[0].alpha == 3.0  # abs: unchanged


def test_old_files_fall_back_to_activation_norm_and_missing_norm_is_clear():
    old = _ds({S9: {"activation_norm_mean": 80.0}, S2: {}})
    assert scale_alpha(old, S9, 0.5, "norm") == pytest.approx(40.0)
    with pytest.raises(SteeringError, match="records no residual norm for blocks.2"):
        scale_alpha(old, S2, 0.5, "norm")
    with pytest.raises(SteeringError, match="cannot be combined with the raw vector"):
        scale_alpha(old, S9, 0.5, "norm", unit=False)
    with pytest.raises(SteeringError, match="unknown alpha scale"):
        scale_alpha(old, S9, 0.5, "percent")


def test_weak_alpha_note():
    ds = _ds({S9: {"resid_norm_mean": 13600.0}})
    note = weak_alpha_note(ds, S9, 6.0)
    assert "0.04%" in note and "--alpha-scale norm --alpha 0.1 (= 1360)" in note
    assert weak_alpha_note(ds, S9, 1500.0) is None
    assert weak_alpha_note(_ds({S9: {}}), S9, 6.0) is None  # nothing recorded: no note


def test_export_norm_alpha_and_llamacpp_model_hint(tmp_path):
    import gguf

    ds = _ds(fp={"model_type": "gemma3_text", "n_layers": 3, "d_model": 32})
    out = export_directions(ds, tmp_path / "cv.gguf", "gguf", alpha=0.1, alpha_scale="norm")
    r = gguf.GGUFReader(str(out))
    assert r.fields["controlvector.model_hint"].contents() == "gemma3"
    norms = {t.name: float(torch.tensor(t.data).norm()) for t in r.tensors}
    assert norms == pytest.approx({"direction.1": 20.0, "direction.2": 5.0}, rel=1e-5)
    rep = export_directions(ds, tmp_path / "rep.gguf", "repeng")  # repeng keeps HF's model_type
    assert gguf.GGUFReader(str(rep)).fields["controlvector.model_hint"].contents() == "gemma3_text"


def test_sweep_table_leaves_perplexity_blank_without_neutral(capsys):
    from saetools.cli.steer import _print_sweep

    row = {"alpha": 1.0, "contrast": 0.5, "contrast_per_token": 0.01, "projection": 2.0}
    _print_sweep({"results": [row, {**row, "perplexity": 12.5}]})
    lines = capsys.readouterr().out.splitlines()
    assert "nan" not in lines[1] and lines[1].rstrip().endswith("2.00")
    assert lines[2].rstrip().endswith("12.50")


def test_serve_request_alpha_scale():
    from saetools.serve.protocol import APIError, steer_item

    item = steer_item({"site": S9, "alpha": 0.1, "alpha_scale": "norm"}, "s")
    assert item.alpha_scale == "norm"
    with pytest.raises(APIError, match="alpha_scale"):
        steer_item({"site": S9, "vector": [1.0, 2.0], "alpha_scale": "norm"}, "s")
    with pytest.raises(APIError, match="alpha_scale"):
        steer_item({"site": S9, "alpha_scale": "percent"}, "s")


# ------------------------------------------------------------------ normalized regularizers


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 300, (2, 12), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _moved_copy():
    """A tiny llama θ slightly moved away from θ0 (a separate instance)."""
    from conftest import new_tiny_model

    theta = new_tiny_model("llama")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in theta.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    for p in theta.parameters():
        p.requires_grad_(True)
    return theta


def test_normalized_directional_l2_is_in_units_of_one_percent_of_the_norm():
    ref = make_tiny_model("llama")
    theta = _moved_copy()
    ds = _ds()
    plain = RegularizedLoss(theta, [DirectionalL2(ds, [S9])], reference=ref)(_batch())
    norm = RegularizedLoss(theta, [DirectionalL2(ds, [S9], normalize=True)], reference=ref)(
        _batch()
    )
    t_plain, t_norm = plain.terms["directional_l2"], norm.terms["directional_l2"]
    assert float(t_norm) == pytest.approx(float(t_plain) / (0.01 * 200.0) ** 2, rel=1e-5)


def test_normalized_directional_kl_divides_by_the_reference_kl():
    ref = make_tiny_model("llama")
    theta = _moved_copy()
    ds = _ds()
    reg = RegularizedLoss(theta, [DirectionalKL(ds, [S9, S2], normalize=True)], reference=ref)
    out = reg(_batch())
    kl_ref = reg.kl_refs["directional_kl"]
    assert kl_ref > 0
    assert out.logs["directional_kl"] == pytest.approx(out.logs["directional_kl/raw"] / kl_ref)
    plain = RegularizedLoss(theta, [DirectionalKL(ds, [S9, S2])], reference=ref)(_batch())
    assert out.logs["directional_kl/raw"] == pytest.approx(plain.logs["directional_kl"], rel=1e-5)
    reg(_batch())  # measured once
    assert reg.kl_refs["directional_kl"] == kl_ref
    out.loss.backward()  # the normalized term has a gradient


def test_normalize_needs_residual_norms():
    ds = _ds({S9: {}, S2: {}})
    with pytest.raises(ValueError, match="normalize=True needs the sites' residual norms"):
        RegularizedLoss(
            _moved_copy(),
            [DirectionalL2(ds, [S9], normalize=True)],
            reference=make_tiny_model("llama"),
        )
