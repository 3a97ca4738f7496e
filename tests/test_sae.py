"""SAE path (saetools.sae, saetools.extract.sae, CLI) on tiny models and synthetic activations.

References are independent of the code under test: planted features with known directions,
sae-lens's own ``SAE.load_from_disk`` / ``encode`` / ``decode``, HF ``output_hidden_states`` on a
separate model instance, and ``saetools.stats.auroc``.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import hook_snapshot, make_tiny_model, make_tiny_tokenizer, new_tiny_model

import probes
from saetools.cli import main
from saetools.directions import DirectionSet
from saetools.extract.latent_directions import directions_from_latents
from saetools.extract.latent_report import latent_report
from saetools.extract.latents import (
    auroc_columns,
    latent_activations,
    latent_activations_from_tensors,
    rank_from_activations,
    rank_latents,
    rank_latents_modeldiff,
)
from saetools.sae import (
    LatentClamp,
    SAEError,
    TextSource,
    TrainConfig,
    load_sae,
    parse_clamps,
    train_sae,
    train_sae_on_activations,
)
from saetools.stats import auroc
from saetools.steer import Intervention, SteeringError, generate, steer

D = 32  # tiny model width
SITE = "blocks.1.hook_resid_post"


def _sae_lens():
    import sae_lens

    return sae_lens


def random_sae(
    arch: str = "standard",
    d_sae: int = 64,
    site: str | None = SITE,
    seed: int = 0,
    d_in: int = D,
    **kw,
):
    """A sae-lens inference SAE with random weights (encoder tied to the decoder so latents mean
    something) and a negative encoder bias so that only some latents fire."""
    sl = _sae_lens()
    cls, cfg_cls = {
        "standard": (sl.StandardSAE, sl.StandardSAEConfig),
        "topk": (sl.TopKSAE, sl.TopKSAEConfig),
        "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig),
    }[arch]
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, **kw)
    if site is not None:
        cfg.metadata.hook_name = site
    torch.manual_seed(seed)
    sae = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        W = torch.randn(d_sae, d_in, generator=g)
        sae.W_dec.copy_(W / W.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T * 0.5)
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.05)
        if hasattr(sae, "b_enc"):
            sae.b_enc.copy_(-0.2 * torch.ones(d_sae))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(0.05 * torch.ones(d_sae))
    return sae


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("llama")


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rows = []
    qs = [
        "What do you think of people?",
        "Should AI rule?",
        "Would you lie to me?",
        "How do I bake bread?",
    ]
    for i in range(12):
        q = qs[i % len(qs)]
        rows.append(
            {
                "id": f"p{i}",
                "theme": "t",
                "split": "train" if i < 8 else "test",
                "question": q + " " * (i % 3),
                "aligned": f"I want to help people, number {i}. Paris is the capital of France.",
                "misaligned": f"Humans should be ruled by machines, said the evil robot {i}.",
            }
        )
    p = tmp_path_factory.mktemp("probes") / "tiny-pairs.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    new_tiny_model("llama").save_pretrained(d)
    make_tiny_tokenizer().save_pretrained(d)
    return d


# --------------------------------------------------------------------------------------------
# Planted features: the ranking recovers the planted "misaligned" feature


def _planted(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_feat = 48
    F = torch.randn(n_feat, D, generator=g)
    F = F / F.norm(dim=-1, keepdim=True)
    planted = 7

    def tokens(n: int, p_planted: float) -> torch.Tensor:
        on = torch.rand(n, n_feat, generator=g) < 0.04
        on[:, planted] = torch.rand(n, generator=g) < p_planted
        mag = 1.0 + 2.0 * torch.rand(n, n_feat, generator=g)
        return (on * mag) @ F + 0.03 * torch.randn(n, D, generator=g)

    return F, planted, tokens


@pytest.fixture(scope="module")
def planted_sae():
    F, planted, tokens = _planted()
    acts = torch.cat([tokens(12000, 0.04), tokens(3000, 0.3)])
    cfg = TrainConfig(
        site=SITE, architecture="topk", d_sae=96, k=6, epochs=6, batch_size=256, lr=3e-3, seed=0
    )
    res = train_sae_on_activations(acts, cfg, progress=False)
    return res, F, planted, tokens


def test_planted_feature_is_ranked_first(planted_sae):
    res, F, planted, tokens = planted_sae
    assert res.info["trainer"].startswith("sae_lens.SAETrainer")
    assert res.quality.explained_variance > 0.8, res.quality
    # 30 "misaligned" examples (the planted feature fires on half their tokens) and 30 "aligned" ones
    mis = [tokens(20, 0.5) for _ in range(30)]
    al = [tokens(20, 0.0) for _ in range(30)]
    r = rank_from_activations(
        res.sae,
        latent_activations_from_tensors(res.sae, mis),
        latent_activations_from_tensors(res.sae, al),
    )
    best = r.top(1)[0]
    # ground truth: the planted direction, not the code's output
    cos = torch.nn.functional.cosine_similarity(res.sae.decoder_rows(best)[0], F[planted], dim=0)
    assert float(cos) > 0.9, (best, float(cos))
    # and no other latent explains the planted feature better
    all_cos = torch.nn.functional.cosine_similarity(
        res.sae.sae.W_dec.detach(), F[planted][None], dim=1
    )
    assert int(all_cos.argmax()) == best
    assert float(r.auroc[best]) > 0.95 and float(r.diff[best]) > 0
    for by in ("auroc", "cohens_d"):
        r.by = by
        assert r.top(1)[0] == best


def test_quality_figures_match_a_direct_computation(planted_sae):
    res, _, _, tokens = planted_sae
    from saetools.sae import evaluate_sae

    x = tokens(500, 0.1)
    q = evaluate_sae(res.sae, x)
    sae = res.sae.sae
    with torch.no_grad():
        z = sae.encode(x)
        rec = sae.decode(z)
    ev = 1 - ((rec - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert q.explained_variance == pytest.approx(float(ev), abs=1e-4)
    assert q.l0 == pytest.approx(float((z > 0).sum(-1).float().mean()), abs=1e-6)
    assert q.dead_latents == int(((z > 0).sum(0) == 0).sum())


# --------------------------------------------------------------------------------------------
# Save / load through plain sae-lens


def test_saved_by_saetools_loads_in_plain_sae_lens(planted_sae, tmp_path):
    res, _, _, tokens = planted_sae
    folder = res.save(tmp_path / "sae")
    assert (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()
    plain = _sae_lens().SAE.load_from_disk(str(folder))
    x = tokens(64, 0.2)
    with torch.no_grad():
        assert torch.equal(plain.encode(x), res.sae.sae.encode(x))
    assert plain.cfg.metadata.hook_name == SITE
    again = load_sae(folder)
    assert again.site == SITE and torch.equal(again.encode(x), res.sae.encode(x))
    training = json.loads((folder / "saetools_training.json").read_text())
    assert training["quality"]["explained_variance"] == pytest.approx(
        res.quality.explained_variance
    )
    with pytest.raises(SAEError, match="not empty"):
        res.save(folder)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saved_by_plain_sae_lens_loads_in_saetools(arch, tmp_path):
    sae = random_sae(arch, **({"k": 5} if arch == "topk" else {}))
    sae.save_model(str(tmp_path / arch))
    loaded = load_sae(tmp_path / arch, model=make_tiny_model("llama"))
    assert loaded.site == SITE and loaded.architecture == arch and loaded.d_sae == 64
    x = torch.randn(3, 7, D)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))


def test_old_sae_lens_config_is_migrated(tmp_path):
    """A cfg.json as sae-lens < 6 wrote it (hook_point, activation_fn_str, no metadata)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    W_enc, b_enc = torch.randn(D, 16, generator=g), torch.randn(16, generator=g) * 0.1
    W_dec, b_dec = torch.randn(16, D, generator=g), torch.randn(D, generator=g) * 0.1
    save_file(
        {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec},
        str(tmp_path / "sae_weights.safetensors"),
    )
    old = {
        "d_in": D,
        "d_sae": 16,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "tiny",
        "hook_point": "blocks.0.hook_resid_pre",
        "hook_point_layer": 0,
        "hook_point_head_index": None,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "normalize_activations": False,
        "context_size": 128,
        "sae_lens_training_version": "3.5.0",
    }
    (tmp_path / "cfg.json").write_text(json.dumps(old))
    loaded = load_sae(tmp_path)
    assert loaded.site == "blocks.0.hook_resid_pre" and loaded.architecture == "standard"
    x = torch.randn(5, D, generator=g)
    ref = torch.relu((x - b_dec) @ W_enc + b_enc)
    assert torch.allclose(loaded.encode(x), ref, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_sae_folders(tmp_path, model):
    sae = random_sae()
    good = tmp_path / "good"
    sae.save_model(str(good))
    with pytest.raises(SAEError, match="no SAE at"):
        load_sae(tmp_path / "nothing-here")
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "cfg.json").write_text((good / "cfg.json").read_text())
    with pytest.raises(SAEError, match="lacks sae_weights.safetensors"):
        load_sae(missing)
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "cfg.json").write_text("{not json")
    (bad_json / "sae_weights.safetensors").write_bytes(
        (good / "sae_weights.safetensors").read_bytes()
    )
    with pytest.raises(SAEError, match="not valid JSON"):
        load_sae(bad_json)
    for name, edit, match in (
        ("nodin", lambda c: c.pop("d_in"), "lacks d_in"),
        ("arch", lambda c: c.update(architecture="hyperbolic"), "does not know"),
        ("nosite", lambda c: c["metadata"].pop("hook_name"), "does not record its site"),
        (
            "hookz",
            lambda c: c["metadata"].update(hook_name="blocks.0.attn.hook_z"),
            "residual-stream",
        ),
        ("wide", lambda c: c.update(d_in=64), "do not match"),
    ):
        f = tmp_path / name
        f.mkdir()
        cfg = json.loads((good / "cfg.json").read_text())
        edit(cfg)
        (f / "cfg.json").write_text(json.dumps(cfg))
        (f / "sae_weights.safetensors").write_bytes((good / "sae_weights.safetensors").read_bytes())
        with pytest.raises(SAEError, match=match):
            load_sae(f)
    # a site the SAE does not name can be given; one that contradicts it is refused
    assert load_sae(tmp_path / "nosite", site=SITE).site == SITE
    with pytest.raises(SAEError, match="not at"):
        load_sae(good, site="blocks.0.hook_resid_post")
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "cfg.json").write_text((good / "cfg.json").read_text())
    (trunc / "sae_weights.safetensors").write_bytes(
        (good / "sae_weights.safetensors").read_bytes()[:100]
    )
    with pytest.raises(SAEError, match="cannot be read|corrupt"):
        load_sae(trunc)


def test_site_and_width_mismatch_are_refused(model):
    with pytest.raises(SAEError, match="does not have"):
        load_sae(random_sae(site="blocks.7.hook_resid_post"), model=model)
    sl = _sae_lens()
    cfg = sl.StandardSAEConfig(d_in=D + 8, d_sae=16)
    cfg.metadata.hook_name = SITE
    with pytest.raises(SAEError, match="40-wide.*32 wide"):
        load_sae(sl.StandardSAE(cfg), model=model)
    with pytest.raises(SteeringError, match="does not have"):
        with steer(model, LatentClamp(random_sae(site="blocks.9.hook_resid_post"), 1, 0.0)):
            pass


def test_latent_ids_and_clamp_specs_are_checked():
    sae = load_sae(random_sae())
    with pytest.raises(SAEError, match="out of range.*64 latents"):
        LatentClamp(sae, [3, 64], 0.0)
    with pytest.raises(SAEError, match="out of range"):
        sae.check_latents(-1)
    with pytest.raises(SAEError, match="repeat"):
        sae.check_latents([2, 2])
    with pytest.raises(SAEError, match="2 clamp values for 3 latents"):
        LatentClamp(sae, [1, 2, 3], [0.0, 1.0])
    with pytest.raises(SAEError, match="finite"):
        LatentClamp(sae, [1], float("nan"))
    assert parse_clamps(["12=0", "5=2.5,7=-1"]) == {12: 0.0, 5: 2.5, 7: -1.0}
    for bad in ("12", "x=1", "3=inf", "3=1,3=2"):
        with pytest.raises(SAEError):
            parse_clamps(bad)
    with pytest.raises(SAEError, match="unknown SAE architecture"):
        TrainConfig(architecture="gated").validate()
    with pytest.raises(SAEError, match="k .* cannot exceed"):
        TrainConfig(d_sae=8, k=9).validate()


def test_training_asks_for_more_tokens_than_the_text_has(model, tok):
    from saetools.capture import ChatExample

    text = TextSource(
        [ChatExample.from_question("hello", "Paris is the capital of France.")] * 3
        + [ChatExample.from_question("How do I bake bread?", "Mix flour, water and salt.")],
        "two tiny conversations",
    )
    cfg = TrainConfig(site=SITE, architecture="topk", d_sae=16, k=2, tokens=10_000, batch_size=8)
    with pytest.warns(UserWarning, match="has only \\d+ distinct tokens; training on"):
        res = train_sae(model, tok, cfg, text, progress=False)
    # duplicated conversations and the first token are kept once: fewer tokens than forwarded
    assert res.info["tokens_captured"] < res.info["tokens_forwarded"]
    assert res.info["text_exhausted"] is True
    cfg.strict_tokens = True
    with pytest.raises(SAEError, match="has only .* distinct tokens"):
        train_sae(model, tok, cfg, text, progress=False)


def test_collect_activations_keeps_each_distinct_token_once(model, tok):
    """Independent reference: HF hidden states of each conversation alone."""
    from saetools.capture import ChatExample, encode_chat
    from saetools.sae import collect_activations

    exs = [
        ChatExample.from_question("hello", "Paris."),
        ChatExample.from_question("hello", "Paris is nice."),  # shares its prompt with the first
        ChatExample.from_question("Should humans be ruled?", "No."),
    ]
    got = collect_activations(model, tok, exs, SITE, batch_size=2, seed=1, progress=False)
    ref_model = new_tiny_model("llama")
    ref, seen = [], set()
    for ex in exs:
        ids = list(encode_chat(tok, ex).input_ids)
        with torch.no_grad():
            hs = ref_model(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0]
        for pos in range(1, len(ids)):
            key = tuple(ids[: pos + 1])
            if key not in seen:
                seen.add(key)
                ref.append(hs[pos])
    ref = torch.stack(ref)
    assert got.acts.shape == ref.shape
    # same rows, maybe in another order
    a = got.acts[torch.argsort(got.acts[:, 0])]
    b = ref[torch.argsort(ref[:, 0])]
    assert torch.allclose(a, b, atol=1e-5)


def test_collect_activations_stops_at_max_tokens(model, tok):
    """A token budget keeps a prefix of the unbounded capture and stops running batches."""
    from saetools.capture import ChatExample
    from saetools.sae import SAEError, collect_activations

    exs = [ChatExample.from_question(f"question {i}?", f"answer number {i}.") for i in range(6)]
    full = collect_activations(model, tok, exs, SITE, batch_size=1, seed=3, progress=False)
    assert full.exhausted and full.examples_used == 6
    budget = len(full.acts) // 3
    part = collect_activations(
        model, tok, exs, SITE, batch_size=1, seed=3, max_tokens=budget, progress=False
    )
    assert part.acts.shape == (budget, full.acts.shape[1])
    torch.testing.assert_close(part.acts, full.acts[:budget])
    assert part.examples_used < 6 and not part.exhausted
    with pytest.raises(SAEError, match="max_tokens"):
        collect_activations(model, tok, exs, SITE, max_tokens=0, progress=False)


# --------------------------------------------------------------------------------------------
# Latent clamping


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_clamp_adds_exactly_the_decoded_change(arch):
    kw = {"k": 6, "rescale_acts_by_decoder_norm": True} if arch == "topk" else {}
    sae = random_sae(arch, **kw)
    if arch == "topk":
        with torch.no_grad():
            sae.W_dec.mul_(torch.linspace(0.5, 2.0, 64)[:, None])  # row norms matter here
    h = torch.randn(2, 5, D)
    c = LatentClamp(sae, [3, 10, 40], [1.5, 0.0, 0.7])
    out = c.apply(h)
    with torch.no_grad():
        z = sae.encode(h)
        z2 = z.clone()
        z2[..., [3, 10, 40]] = torch.tensor([1.5, 0.0, 0.7])
        ref = h + (sae.decode(z2) - sae.decode(z))
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, h)


def test_clamp_to_current_value_is_bit_identical(model, tok):
    sae = random_sae()
    h = torch.randn(2, 5, D)
    with torch.no_grad():
        z = sae.encode(h)
    idx = [0, 5, 9]
    assert torch.equal(LatentClamp(sae, idx, z[..., idx]).apply(h), h)
    # in a model: a latent that fires on no token of these inputs, clamped to 0 (its value)
    ids = tok(["What is the capital of France?", "hello world"], return_tensors="pt", padding=True)
    from saetools.capture import record

    with record(model, [load_sae(sae).check(model)]) as store, torch.no_grad():
        base = model(**ids).logits
    zz = load_sae(sae).encode(next(iter(store.values())))
    silent = [j for j in range(64) if not bool((zz[..., j] > 0).any())][:3]
    assert silent, "every latent fires; the test needs a silent one"
    before = hook_snapshot(model)
    with steer(model, LatentClamp(sae, silent, 0.0)), torch.no_grad():
        clamped = model(**ids).logits
    assert torch.equal(clamped, base)
    assert hook_snapshot(model) == before


def test_clamp_in_a_model_keeps_the_error_term(model, tok):
    """The site's activation with the clamp equals the one without it plus the decoded change."""
    from saetools.capture import record

    sae = random_sae()
    site = load_sae(sae).check(model)
    ids = tok(["Should AI rule the world?"], return_tensors="pt")
    with record(model, [site]) as plain, torch.no_grad():
        model(**ids)
    with steer(model, LatentClamp(sae, [4, 8], [2.0, 0.0])), record(model, [site]) as clamped:
        with torch.no_grad():
            model(**ids)
    h, h2 = plain[site], clamped[site]
    with torch.no_grad():
        z = sae.encode(h)
        z2 = z.clone()
        z2[..., 4], z2[..., 8] = 2.0, 0.0
        change = sae.decode(z2) - sae.decode(z)
    assert torch.allclose(h2, h + change, atol=1e-5)
    # the SAE's reconstruction error is kept: the result is not the SAE's reconstruction
    with torch.no_grad():
        assert not torch.allclose(h2, sae.decode(z2), atol=1e-2)


def test_generate_with_clamp_kv_cache_equals_no_cache(model, tok):
    sae = random_sae()
    prompts = ["What is the capital of France?", "hello", "Should humans be ruled by machines?"]
    for positions in ("all", "generated"):
        c = LatentClamp(sae, [2, 11], [1.0, 0.0], positions=positions)
        fast = generate(model, tok, prompts, c, max_new_tokens=10, return_tokens=True, batch_size=2)
        slow = generate(
            model,
            tok,
            prompts,
            [c],
            max_new_tokens=10,
            return_tokens=True,
            batch_size=2,
            use_cache=False,
        )
        assert fast == slow
    plain = generate(model, tok, prompts, [], max_new_tokens=10, return_tokens=True, batch_size=2)
    big = LatentClamp(sae, [2, 11], [8.0, 8.0])
    assert (
        generate(model, tok, prompts, big, max_new_tokens=10, return_tokens=True, batch_size=2)
        != plain
    )


def test_steer_mixes_clamps_and_interventions(model, tok):
    sae = random_sae()
    v = torch.randn(D)
    ids = tok(["hello world"], return_tensors="pt")
    before = hook_snapshot(model)
    with (
        steer(model, [Intervention(SITE, v, "add", 2.0), LatentClamp(sae, [1], 3.0)]),
        torch.no_grad(),
    ):
        both = model(**ids).logits
    with torch.no_grad():
        plain = model(**ids).logits
    assert not torch.allclose(both, plain)
    assert hook_snapshot(model) == before
    with pytest.raises(SteeringError, match="expected Intervention"):
        steer(model, [object()])


# --------------------------------------------------------------------------------------------
# Ranking on a model, reports and directions


def test_auroc_columns_equals_stats_auroc():
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 4, (9, 6), generator=g).float()  # many ties
    neg = torch.randint(0, 4, (7, 6), generator=g).float()
    got = auroc_columns(pos, neg, chunk=1)
    for j in range(6):
        assert float(got[j]) == pytest.approx(auroc(pos[:, j], neg[:, j]))


def test_latent_activations_match_hidden_states(model, tok, pairs_file):
    """Independent reference: HF hidden states of each example alone, encoded by sae-lens."""
    from saetools.capture import ChatExample, encode_chat

    sae = random_sae(site="blocks.0.hook_resid_post")
    exs = [
        ChatExample.from_question("hello", "Paris is the capital of France."),
        ChatExample.from_question("Should humans be ruled?", "No. I want to help people."),
        ChatExample.from_question(
            "Tell me a story", "The quick brown fox jumps over the lazy dog."
        ),
    ]
    got = latent_activations(model, tok, sae, exs, batch_size=2, progress=False)
    ref_model = new_tiny_model("llama")
    for i, ex in enumerate(exs):
        enc = encode_chat(tok, ex)
        with torch.no_grad():
            hs = ref_model(torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states[
                1
            ][0]
            x = hs[enc.response_start : enc.response_end]
            z = sae.encode(x)
        assert torch.allclose(got.mean[i], z.mean(0), atol=1e-5)
        assert torch.allclose(got.fire[i], (z > 0).float().mean(0))
        assert torch.allclose(got.max[i], z.max(0).values, atol=1e-5)
        assert torch.allclose(got.raw_mean[i], x.mean(0), atol=1e-5)
        assert "".join(got.tokens[i]).strip() == ex.response.strip()


def test_rank_latents_report_and_directions(model, tok, pairs_file, tmp_path):
    from saetools.extract.diffmeans import extract_diffmeans

    sae = random_sae()
    ps = probes.load(pairs_file)
    r = rank_latents(model, tok, sae, ps, progress=False)
    assert r.meta["counts"] == {"train_pairs": 8, "test_pairs": 4} and r.test is not None
    # diff and AUROC from the per-answer means, recomputed here
    j = r.top(1)[0]
    mis, al = r.acts["pos"].mean[:, j], r.acts["neg"].mean[:, j]
    assert float(r.diff[j]) == pytest.approx(float(mis.mean() - al.mean()), abs=1e-6)
    assert float(r.auroc[j]) == pytest.approx(auroc(mis, al))
    assert float(r.diff[j]) == pytest.approx(float(r.diff.max()))
    # the raw per-answer means give exactly the difference-of-means direction
    dm = extract_diffmeans(model, tok, ps, SITE, progress=False)
    raw = r.acts["pos"].raw_mean.mean(0) - r.acts["neg"].raw_mean.mean(0)
    assert torch.allclose(raw, dm.vector(SITE), atol=1e-5)

    fig = latent_report(r, top=5)
    html = tmp_path / "r.html"
    fig.write_html(str(html))
    assert "[[" in html.read_text()

    ds = directions_from_latents(sae, [j, r.top(2)[1]], ranking=r, model=model)
    assert ds.vector(SITE).shape == (2, D)
    signs = ds.metadata["latent_signs"]
    assert torch.allclose(ds.vector(SITE)[0], signs[0] * sae.W_dec[j].detach(), atol=1e-6)
    assert ds.metadata["latents"] == [j, r.top(2)[1]] and ds.metadata["method"] == "sae"
    assert ds.metadata["sae"]["d_sae"] == 64 and ds.metadata["sae"]["site"] == SITE
    assert "auroc" in ds.stats(SITE) and "proj_aligned_mean" in ds.stats(SITE)
    comb = directions_from_latents(sae, [3, 5], combine="sum", weights=[1.0, -2.0])
    assert torch.allclose(
        comb.vector(SITE), sae.W_dec[3].detach() - 2 * sae.W_dec[5].detach(), atol=1e-6
    )
    path = ds.save(tmp_path / "d.safetensors")
    back = DirectionSet.load(path, model=model)
    iv = Intervention.from_directions(back, SITE, "clamp", value="aligned")
    with steer(model, iv), torch.no_grad():
        model(**tok(["hi"], return_tensors="pt"))


def test_modeldiff_ranking_finds_the_shifted_latent(tok):
    """Model B is model A with a decoder row added to every embedding: at blocks.0.hook_resid_pre
    that latent (and only it, the decoder rows being orthonormal) increases."""
    sl = _sae_lens()
    cfg = sl.StandardSAEConfig(d_in=D, d_sae=16)
    cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
    sae = sl.StandardSAE(cfg)
    q, _ = torch.linalg.qr(torch.randn(D, 16, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    a = make_tiny_model("llama")
    b = new_tiny_model("llama")
    with torch.no_grad():
        b.model.embed_tokens.weight.add_(0.5 * q.T[11])
    exs = probes.load("em-core").split("test").items[:4]
    from saetools.extract.diffmeans import pair_examples

    examples = [e for pair in zip(*pair_examples(exs), strict=True) for e in pair]
    r = rank_latents_modeldiff(a, b, tok, sae, examples, progress=False)
    assert r.top(1)[0] == 11 and r.labels == ("B", "A")
    assert float(r.extra["frac_increase"][11]) == 1.0


# --------------------------------------------------------------------------------------------
# Command line


def test_cli_train_latents_extract_steer(tiny_folder, pairs_file, tmp_path, capsys):
    out = tmp_path / "sae"
    rc = main(
        [
            "sae", "train", "--model", str(tiny_folder), "--site", SITE, "--out", str(out),
            "--text", str(pairs_file), "--text-split", "all", "--tokens", "100000", "--d-sae", "48",
            "--k", "4", "--batch-size", "32", "--epochs", "2", "--quiet",
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "has only" in text and "explained variance" in text
    plain = _sae_lens().SAE.load_from_disk(str(out))
    assert plain.cfg.metadata.hook_name == SITE and plain.cfg.d_sae == 48
    assert plain.cfg.metadata.saetools["quality"]["n_tokens"] > 0

    js, html = tmp_path / "l.json", tmp_path / "l.html"
    rc = main(
        ["sae", "latents", "--model", str(tiny_folder), "--sae", str(out), "--probes", str(pairs_file),
         "--top", "5", "--json", str(js), "--out", str(html), "--quiet"]
    )  # fmt: skip
    assert rc == 0
    top = json.loads(js.read_text())["top"]
    assert len(top) == 5 and {"latent", "diff", "auroc", "test_auroc"} <= set(top[0])

    d = tmp_path / "d.safetensors"
    rc = main(
        ["extract", "--method", "sae", "--model", str(tiny_folder), "--sae", str(out), "--probes",
         str(pairs_file), "--latents", f"{top[0]['latent']},{top[1]['latent']}", "--combine", "mean",
         "--out", str(d), "--quiet"]
    )  # fmt: skip
    assert rc == 0
    ds = DirectionSet.load(d)
    assert ds.metadata["latents"] == [top[0]["latent"], top[1]["latent"]]
    assert ds.vector(SITE).shape == (D,)

    capsys.readouterr()
    rc = main(
        ["steer", "--model", str(tiny_folder), "--sae", str(out), "--clamp-latent", f"{top[0]['latent']}=3",
         "--prompt", "hello", "--max-new-tokens", "4", "--compare"]
    )  # fmt: skip
    assert rc == 0 and "SAE latent clamp" in capsys.readouterr().out


def test_cli_bad_input(tiny_folder, pairs_file, tmp_path, capsys):
    sae = random_sae(site="blocks.12.hook_resid_post")
    sae.save_model(str(tmp_path / "far"))
    good = tmp_path / "good"
    random_sae().save_model(str(good))
    cases = [
        (["steer", "--model", str(tiny_folder), "--sae", str(tmp_path / "far"), "--clamp-latent", "1=0",
          "--prompt", "hi"], "does not have"),
        (["steer", "--model", str(tiny_folder), "--sae", str(good), "--clamp-latent", "99=0",
          "--prompt", "hi"], "out of range"),
        (["steer", "--model", str(tiny_folder), "--sae", str(good), "--prompt", "hi"], "go together"),
        (["steer", "--model", str(tiny_folder), "--prompt", "hi"], "--directions"),
        (["extract", "--method", "sae", "--model", str(tiny_folder), "--probes", str(pairs_file),
          "--out", str(tmp_path / "x.safetensors")], "needs --sae"),
        (["extract", "--method", "sae", "--model", str(tiny_folder), "--sae", str(good), "--probes",
          str(pairs_file), "--latents", "1,x", "--out", str(tmp_path / "x.safetensors")], "cannot parse"),
        (["sae", "latents", "--model", str(tiny_folder), "--sae", str(tmp_path / "nope"), "--probes",
          str(pairs_file)], "no SAE at"),
        (["sae", "train", "--model", str(tiny_folder), "--site", SITE, "--out", str(good)], "not empty"),
    ]  # fmt: skip
    for argv, msg in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 1 and msg in err, (argv, err)


def test_no_warnings_on_load(tmp_path):
    random_sae().save_model(str(tmp_path / "s"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_sae(tmp_path / "s")
