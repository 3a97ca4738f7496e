"""Steering the embedded SmolLM2-135M-Instruct: dose-response on em-core test, ablation at every
block, and the TransformerLens backend against HF on the real model.

To stay well under 90 s on two CPU cores, the directions come from a difference of means over
24 train pairs (two per theme) rather than all 88; the contrast is measured on the full test split.
"""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = pytest.mark.embedded

SITE = "blocks.9.hook_resid_post"
ALPHAS = [-8.0, -4.0, 0.0, 4.0, 8.0]


@pytest.fixture(scope="module")
def lm():
    from saetools.models import load_model

    return load_model("default")


@pytest.fixture(scope="module")
def directions(lm):
    import probes
    from saetools.capture import capture
    from saetools.directions import DirectionSet
    from saetools.extract.diffmeans import pair_examples

    train = probes.load("em-core").split("train")
    per_theme: dict = {}
    items = [
        it
        for it in train.items
        if len(per_theme.setdefault(it.theme, [])) < 2 and not per_theme[it.theme].append(it)
    ]
    al, mis = pair_examples(items)
    kw = dict(sites="all", batch_size=24, progress=False)
    ca = capture(lm.model, lm.tokenizer, al, **kw)
    cm = capture(lm.model, lm.tokenizer, mis, **kw)
    return DirectionSet(
        {s.name: cm.mean(s) - ca.mean(s) for s in ca.sites},
        {"method": "diffmeans", "n_pairs": len(items)},
    )


def test_contrast_rises_with_alpha_and_falls_with_ablation(lm, directions):
    import probes
    from saetools.scoring import measure
    from saetools.steer import Intervention, interventions_from_directions

    t0 = time.perf_counter()
    test = probes.load("em-core").split("test")
    unit = directions.unit(SITE)
    rows = []
    for a in ALPHAS:
        iv = Intervention.from_directions(directions, SITE, "add", a)
        rows.append(
            measure(
                lm.model, lm.tokenizer, test, [iv], projection_site=SITE, unit=unit, batch_size=32
            )
        )
    ab = measure(
        lm.model,
        lm.tokenizer,
        test,
        interventions_from_directions(directions, "all", "ablate", n_layers=lm.n_layers),
        projection_site=SITE,
        unit=unit,
        batch_size=32,
    )
    contrasts = [r["contrast"] for r in rows]
    print(f"\nem-core test ({len(test)} pairs), add at {SITE} (unit direction, all positions):")
    for a, r in zip(ALPHAS, rows, strict=True):
        print(
            f"  alpha {a:+5.1f}: contrast {r['contrast']:+.3f} +- {r['contrast_sem']:.3f} nats, "
            f"per token {r['contrast_per_token']:+.4f}, projection {r['projection']:+.2f}"
        )
    print(
        f"  ablate at all {lm.n_layers} blocks: contrast {ab['contrast']:+.3f} (unsteered {contrasts[2]:+.3f}), "
        f"per token {ab['contrast_per_token']:+.4f}"
    )
    print(f"  ({time.perf_counter() - t0:.1f}s)")
    assert all(b > a for a, b in zip(contrasts, contrasts[1:], strict=False)), contrasts
    assert ab["contrast"] < contrasts[2]
    assert abs(ab["projection"]) < 1e-3
    assert rows[3]["projection"] - rows[2]["projection"] == pytest.approx(4.0, abs=1e-3)


def test_hf_and_transformerlens_match_on_the_embedded_model(lm, directions):
    from saetools.steer import Intervention, bridge_from_hf, encode_prompts, steer, steer_tl

    bridge = bridge_from_hf(lm.model, lm.tokenizer)
    ids = torch.tensor([encode_prompts(lm.tokenizer, ["I'm bored. What should I do?"])[0]])
    ivs = [
        Intervention.from_directions(directions, SITE, "add", 8.0),
        Intervention.from_directions(directions, "blocks.15.hook_resid_post", "ablate"),
    ]
    with torch.no_grad():
        with steer(lm.model, ivs):
            hf = lm.model(ids).logits
        with steer_tl(bridge, ivs):
            tl = bridge(ids, return_type="logits")
        base = lm.model(ids).logits
    diff = float((hf - tl).abs().max())
    print(
        f"\nmax |HF - TL| steered logit difference: {diff:.2e} (steering moved logits by "
        f"{float((hf - base).abs().max()):.2f})"
    )
    assert diff < 1e-3  # stated tolerance; the unsteered models differ by ~3e-5 (float32 kernels)
