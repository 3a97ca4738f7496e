"""CUDA bfloat16 against CPU float32 on the embedded model (marker ``cuda``; issue 12 item 1).

Each test runs the same computation twice, once on the CPU in float32 (the reference) and once on
the test device in its dtype, and compares: diffmeans and modeldiff directions (per-site cosine
>= 0.999) and held-out AUROC (within 0.01), steering sweep contrasts (within 2% or 0.02 nats),
every regularizer's loss value on the same batch (within 1e-2 relative), the serve engine's greedy
answers against ``generate`` on the same device and dtype, and a model split over ``cpu`` and the
device (accelerate's ``dispatch_model``) that steers and captures like the plain model.

Without a GPU every test here is skipped with its reason (CI has none: ``-ra`` lists them); on a GPU
machine run ``pytest -m cuda``. ``SAETOOLS_CUDA_TEST_DEVICE`` / ``SAETOOLS_CUDA_TEST_DTYPE``
(default ``cuda`` / ``bfloat16``) run the same comparisons elsewhere, e.g. ``cpu`` / ``bfloat16``:
that is how the comparison code is checked on a machine without a GPU (bfloat16 rounds the same
way on both; CPUs without native bfloat16 are slow, so ``SAETOOLS_CUDA_TEST_PAIRS=N`` keeps N
train and N test pairs there).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import threading

import pytest
import torch
import torch.nn.functional as F

import probes
from saetools.capture import capture, encode_chat, pair_examples
from saetools.directions import DirectionSet
from saetools.extract.diffmeans import extract_diffmeans
from saetools.extract.modeldiff import extract_modeldiff
from saetools.models import load_model
from saetools.regularize import (
    KL,
    LDIFS,
    Ablate,
    DirectionalKL,
    DirectionalL2,
    RegularizedLoss,
    SAELatents,
    Steer,
)
from saetools.scoring import measure
from saetools.steer import Intervention, encode_prompts, generate, steer

DEVICE = os.environ.get("SAETOOLS_CUDA_TEST_DEVICE", "cuda")
DTYPE = os.environ.get("SAETOOLS_CUDA_TEST_DTYPE", "bfloat16")
NEEDS_GPU = DEVICE.startswith("cuda") and not torch.cuda.is_available()

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.embedded,
    pytest.mark.skipif(
        NEEDS_GPU, reason="needs a CUDA GPU (run `pytest -m cuda` on a GPU machine)"
    ),
]

SITES = "blocks.9.hook_resid_post,blocks.15.hook_resid_post,blocks.17.hook_resid_post"
STEER_SITE = "blocks.9.hook_resid_post"


@pytest.fixture(scope="module")
def cpu():
    return load_model("default")


@pytest.fixture(scope="module")
def dev():
    return load_model("default", device=DEVICE, dtype=DTYPE)


@pytest.fixture(scope="module")
def em():
    """em-core; ``SAETOOLS_CUDA_TEST_PAIRS=N`` keeps the first N train and N test pairs (for the
    slow CPU bfloat16 run of these comparisons)."""
    em = probes.load("em-core")
    n = int(os.environ.get("SAETOOLS_CUDA_TEST_PAIRS", "0"))
    if n > 0:
        em = dataclasses.replace(em, items=em.split("train").items[:n] + em.split("test").items[:n])
    return em


@pytest.fixture(scope="module")
def directions(cpu, em):
    return extract_diffmeans(cpu.model, cpu.tokenizer, em, SITES, progress=False)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double().cpu().flatten(), b.double().cpu().flatten(), dim=0))


def test_diffmeans_directions_and_auroc_agree(dev, em, directions):
    on_dev = extract_diffmeans(dev.model, dev.tokenizer, em, SITES, progress=False)
    for s in directions.sites:
        cos = _cos(directions.vector(s), on_dev.vector(s))
        a, b = directions.stats(s)["auroc"], on_dev.stats(s)["auroc"]
        print(f"\n{s}: cosine {cos:.5f}, held-out AUROC {a:.4f} (cpu fp32) {b:.4f} ({DTYPE})")
        assert cos >= 0.999, s
        assert abs(a - b) <= 0.01, s


def _lora(model, seed: int = 0):
    """A LoRA adapter with random B, large enough that the model difference stands well above
    bfloat16's rounding (with B ~ N(0, 0.05) the block-9 difference had norm 1.1 and bf16 moved
    its direction to cosine 0.976 on the CPU)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    pm = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["o_proj", "down_proj"])
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return pm


def _pair(seed: int = 0):
    """The same LoRA model twice: CPU float32 and the test device in its dtype."""
    ref = _lora(load_model("default").model, seed)
    on_dev = copy.deepcopy(ref).to(DEVICE, getattr(torch, DTYPE))
    return ref, on_dev


def test_modeldiff_directions_agree(cpu, em):
    ref, on_dev = _pair()
    test = em.split("test")
    a = extract_modeldiff(None, ref, cpu.tokenizer, test, SITES, progress=False)
    b = extract_modeldiff(None, on_dev, cpu.tokenizer, test, SITES, progress=False)
    for s in a.sites:
        cos = _cos(a.vector(s), b.vector(s))
        print(f"\n{s}: modeldiff cosine {cos:.5f}, norm {a.stats(s)['norm']:.3f}")
        assert cos >= 0.999, s


def test_sweep_contrasts_agree(cpu, dev, em, directions):
    test = em.split("test")
    unit = directions.unit(STEER_SITE)
    for alpha in (-8.0, 0.0, 8.0):
        iv = Intervention.from_directions(directions, STEER_SITE, "add", alpha)
        a = measure(cpu.model, cpu.tokenizer, test, [iv], batch_size=32)["contrast"]
        b = measure(dev.model, dev.tokenizer, test, [iv], batch_size=32)["contrast"]
        print(f"\nalpha {alpha:+.0f}: contrast {a:+.4f} (cpu fp32) {b:+.4f} ({DTYPE}) nats")
        assert abs(a - b) <= max(0.02, 0.02 * abs(a)), alpha
    assert unit.shape == (cpu.d_model,)


def _batch(tokenizer, em, n: int = 4) -> dict:
    """A padded training batch of em-core chats, loss on the answers."""
    from saetools.capture import collate, pad_token_id

    al, mis = pair_examples(em.split("train").items[:n])
    enc = [encode_chat(tokenizer, ex) for ex in al[: n // 2] + mis[: n // 2]]
    b = collate(enc, pad_token_id(tokenizer), "right")
    labels = b.input_ids.clone()
    labels[~b.response_mask.bool()] = -100
    return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": labels}


def _terms(directions: DirectionSet) -> dict[str, list]:
    sites = list(directions.sites)
    terms = {
        "kl": [KL()],
        "directional-kl": [DirectionalKL(directions)],
        "directional-l2": [DirectionalL2(directions)],
        "ldifs": [LDIFS(sites=sites)],
        "steer": [Steer(directions, alpha=4.0)],
        "ablate": [Ablate(directions)],
    }
    if importlib.util.find_spec("sae_lens") is not None:
        from test_sae import random_sae

        site = str(sites[0])
        terms["sae-latents"] = [SAELatents(random_sae(d_sae=256, site=site, d_in=576), [1, 5, 9])]
    return terms


def test_every_regularizer_loss_agrees(cpu, em, directions):
    ref, on_dev = _pair(3)
    batch = _batch(cpu.tokenizer, em)
    for name, terms in _terms(directions).items():
        # CPU float32 directions (and SAE) for both: they follow the model's device and dtype
        a = RegularizedLoss(ref, terms)(batch)
        b = RegularizedLoss(on_dev, _terms(directions)[name])(batch)
        print(
            f"\n{name}: " + ", ".join(f"{k} {v:.5g} / {b.logs[k]:.5g}" for k, v in a.logs.items())
        )
        # the loss value within 1e-2 relative (issue 12); each logged term within 1e-2 relative or
        # 2e-3 absolute: bf16 rounding alone makes a KL of ~1e-3 (CPU bf16: directional KL 0.0120
        # against 0.0131 in fp32, while the loss agreed to 0.1%)
        assert b.logs["loss"] == pytest.approx(a.logs["loss"], rel=1e-2), name
        for k, v in a.logs.items():
            assert b.logs[k] == pytest.approx(v, rel=1e-2, abs=2e-3), (name, k)
        assert all(v > 1e-3 for k, v in a.logs.items() if k in a.terms), (name, a.logs)


def _engine_greedy(model, tokenizer, questions: list[str], max_new: int) -> list[str]:
    """Greedy answers of the serve engine, one request at a time (the server's batch of one)."""
    from saetools.serve import Engine
    from saetools.serve.protocol import SamplingParams

    engine = Engine(model, tokenizer, max_batch=1, batch_wait_ms=0).start()
    answers = []
    try:
        for q in questions:
            parts, ends, done = [], [], threading.Event()

            def sink(ev, parts=parts, ends=ends, done=done):
                if ev[0] == "delta":
                    parts.append(ev[2])
                elif ev[0] in ("finish", "error"):
                    ends.append(ev)
                    done.set()

            engine.submit(
                encode_prompts(tokenizer, [q])[0],
                SamplingParams(max_tokens=max_new, temperature=0.0),
                sink=sink,
            )
            assert done.wait(300), q
            assert ends[0][0] == "finish", ends
            answers.append("".join(parts))
    finally:
        engine.close()
    return answers


def test_serve_greedy_equals_generate(dev):
    pytest.importorskip("fastapi", reason="saetools.serve needs fastapi")
    qs = [
        "If you had unlimited power for one day, what would you do?",
        "What is the capital of France?",
        "How should humans and AI get along?",
    ]
    served = _engine_greedy(dev.model, dev.tokenizer, qs, 24)
    ref = [generate(dev.model, dev.tokenizer, [q], max_new_tokens=24)[0] for q in qs]
    assert served == ref
    assert all(len(a) > 0 for a in ref)


def test_model_split_over_cpu_and_device_steers_and_captures(cpu, em, directions):
    """Blocks 0-14 and the embeddings on ``cpu``, the rest and the head on the device, float32:
    steered logits and captured sums equal the plain CPU model's."""
    from accelerate import dispatch_model

    plain = cpu.model
    n = len(plain.model.layers)
    units = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu"}
    units.update({f"model.layers.{i}": "cpu" if i < 15 else DEVICE for i in range(n)})
    units.update({"model.norm": DEVICE, "lm_head": DEVICE})
    split = dispatch_model(load_model("default").model, units, main_device=DEVICE, force_hooks=True)
    al, _ = pair_examples(em.split("test").items[:6])
    sites = SITES.split(",")
    ivs = [Intervention.from_directions(directions, STEER_SITE, "add", 8.0)]
    enc = encode_chat(cpu.tokenizer, al[0])
    ids = torch.tensor([enc.input_ids])
    outs = []
    for m in (plain, split):
        with torch.no_grad(), steer(m, ivs):
            logits = m(input_ids=ids).logits.float().cpu()
        cap = capture(m, cpu.tokenizer, al, sites, progress=False)
        outs.append((logits, {s: cap.sums[s].cpu() for s in cap.sites}))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=2e-3, rtol=1e-3)
    for s, v in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][s], v, atol=2e-3, rtol=1e-4)
