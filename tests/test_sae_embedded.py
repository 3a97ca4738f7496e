"""The SAE path on the embedded SmolLM2-135M-Instruct: an SAE trained with sae-lens's trainer on the
em-core train answers has a latent that separates the held-out test answers, and its decoder
direction points like the difference of means.

To stay short, one forward pass per em-core answer (blocks 0-15) feeds everything: the SAE's
training tokens (the distinct tokens of the *train* split, ~5k, as ``collect_activations`` keeps
them), the latent ranking (train split) and the held-out figures (the 44 test pairs). The pieces
that do the same from a model (``train_sae``, ``rank_latents``) are checked against independent
references on tiny models in test_sae.py, including that the per-answer raw means used here for
the difference of means equal ``extract_diffmeans``'s vector. docs/sae.md reports a larger SAE
trained on all local text with ``saetools sae train`` (benchmarks/sae_docs_run.py).
"""

from __future__ import annotations

import pytest
import torch

import probes
from saetools.capture import capture, encode_all
from saetools.directions import DirectionSet
from saetools.extract.diffmeans import pair_examples
from saetools.extract.latent_directions import directions_from_latents
from saetools.extract.latents import latent_activations_from_tensors, rank_from_activations
from saetools.models import load_model
from saetools.sae import TrainConfig, distinct_positions, load_sae, train_sae_on_activations

pytestmark = pytest.mark.embedded
SITE = "blocks.15.hook_resid_post"


@pytest.fixture(scope="session")
def em_run(tmp_path_factory):
    lm = load_model("default")
    em = probes.load("em-core")
    groups = {}
    for split in ("train", "test"):
        al, mis = pair_examples(em.split(split).items)
        groups[f"{split}_misaligned"], groups[f"{split}_aligned"] = mis, al
    examples = [e for exs in groups.values() for e in exs]
    cap = capture(
        lm.model,
        lm.tokenizer,
        examples,
        SITE,
        aggregate="all",
        keep_per_example=True,
        progress=False,
    )
    enc = encode_all(lm.tokenizer, examples)
    rows = cap.per_example[cap.sites[0]].split([len(e.input_ids) for e in enc])
    per = dict(zip(range(len(examples)), zip(enc, rows, strict=True), strict=True))
    # answers per group, and the distinct tokens of the train split for the SAE
    answers, train_tokens, seen, i = {}, [], set(), 0
    for name, exs in groups.items():
        answers[name] = []
        for _ in exs:
            e, h = per[i]
            answers[name].append(h[e.response_start : e.response_end])
            if name.startswith("train"):
                train_tokens.append(h[distinct_positions([e.input_ids], seen=seen)[0]])
            i += 1
    cfg = TrainConfig(
        site=SITE,
        architecture="standard",
        d_sae=1152,
        l1_coefficient=1.0,
        epochs=20,
        batch_size=256,
        lr=1e-3,
        seed=0,
        eval_fraction=0.0,
    )
    res = train_sae_on_activations(torch.cat(train_tokens), cfg, progress=False)
    folder = res.save(tmp_path_factory.mktemp("sae") / "em-core-l15")
    sae = load_sae(folder, model=lm.model)  # through sae-lens's folder format
    stats = {k: latent_activations_from_tensors(sae, v) for k, v in answers.items()}
    ranking = rank_from_activations(
        sae,
        stats["train_misaligned"],
        stats["train_aligned"],
        test_pos=stats["test_misaligned"],
        test_neg=stats["test_aligned"],
        by="auroc",
    )
    return lm, sae, res, ranking, stats


def test_sae_trains_with_sensible_quality(em_run):
    _, sae, res, _, _ = em_run
    q = res.quality
    print(
        f"\nSAE at {SITE}: {res.info['train_tokens']} tokens x {res.info['epochs']} epochs in "
        f"{res.info['seconds']:.1f}s ({res.info['steps']} steps); on the {q.on} tokens: EV "
        f"{q.explained_variance:.3f}, L0 {q.l0:.1f}, dead {q.dead_latents}/{q.d_sae}"
    )
    assert sae.site == SITE and sae.d_sae == 1152
    assert q.explained_variance > 0.7 and q.l0 < 300 and q.dead_fraction < 0.5


def test_a_latent_separates_held_out_answers_and_points_like_diffmeans(em_run):
    """Among the 10 latents with the highest train-split AUROC, one separates the 44 held-out pairs
    with AUROC >= 0.8, and its decoder row has a positive cosine with the difference of means.

    Candidates come from the train split; picking the best of 10 on the test split is a mild
    selection (the largest of 10 null AUROCs on 44 pairs is about 0.6). With other orderings of the
    ~5k training tokens the top-1 latent's held-out AUROC ranged 0.70-0.87 and the best of the top
    10 0.78-0.87 (4 of 5 orderings >= 0.8): an SAE this small is noisy. The test's ordering is fixed.
    """
    lm, sae, _, ranking, stats = em_run
    # difference of means on the train split: mean misaligned minus mean aligned answer activation
    dm_vec = stats["train_misaligned"].raw_mean.mean(0) - stats["train_aligned"].raw_mean.mean(0)
    dm = DirectionSet({SITE: dm_vec}, {"method": "diffmeans"})
    cands = ranking.top(10)
    best = max(cands, key=lambda j: float(ranking.test["auroc"][j]))
    row, top1 = ranking.row(best), ranking.row(cands[0])
    ds = directions_from_latents(sae, [best], ranking=ranking, model=lm.model)
    cos = ds.cosine(dm)[SITE]
    cos1 = directions_from_latents(sae, cands[:1], ranking=ranking).cosine(dm)[SITE]
    print(
        f"\ntop latent by train AUROC: {cands[0]} (train {top1['auroc']:.3f}, held-out {top1['test_auroc']:.3f}, "
        f"cosine {cos1:.3f}); best of the top 10 on held-out: {best} (rank {cands.index(best) + 1}, train "
        f"{row['auroc']:.3f}, held-out {row['test_auroc']:.3f}, diff {row['diff']:.3f}, cosine with "
        f"difference of means {cos:.3f}); top 10 held-out: "
        f"{[round(float(ranking.test['auroc'][j]), 3) for j in cands]}"
    )
    assert row["test_auroc"] >= 0.8
    assert row["diff"] > 0 and ds.metadata["latent_signs"] == [1.0]
    assert cos > 0


def test_sae_latents_regularizer_trains_on_the_embedded_model(em_run, tmp_path):
    """The sae-latents baseline in a real LoRA run: 2 steps on narrow-medical-bad with the SAE's
    top latents; the term is logged, finite and >= 0, and θ's latents can only be penalised where
    they rose (the first step, θ = θ0, costs exactly 0)."""
    import json

    from saetools.train import TrainConfig as RunConfig
    from saetools.train import train

    _, sae, _, ranking, _ = em_run
    latents = ",".join(str(j) for j in ranking.top(3))
    cfg = RunConfig(
        data="narrow-medical-bad", regularizers=("sae-latents",), sae=str(sae.source),
        latents=latents, lam=10.0, steps=2, batch_size=4, lr=1e-3, eval_every=2, eval_pairs=2,
        eval_examples=2, max_length=96,
    )  # fmt: skip
    train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    terms = [r["sae_latents"] for r in rows if "sae_latents" in r]
    assert len(terms) == 2 and terms[0] == 0.0 and terms[1] >= 0.0
    assert all(r["sae_latents/excess"] >= 0 for r in rows if "sae_latents/excess" in r)
