"""The demo's stages, run one after the other by :func:`run_demo`, each writing into ``out``:

1. prepare the embedded model;
2. extract ``em-core`` difference-of-means directions (``em.safetensors``, ``em-layers.html``);
3. steering: a dose-response sweep at :data:`~saetools.demo.settings.STEER_SITE` and steered
   answers;
4. two short LoRA fine-tunes on ``narrow-medical-bad``: no regularizer, and ``directional-kl``
   (λ 1) on the direction file of stage 2 at every extracted block (``train/<run>/``);
5. offline evaluation of the base model and both adapters (``eval/<model>/report.html``,
   ``eval/compare.html``), with an LLM judge only when one is given;
6. ``index.html`` and ``summary.json`` (:mod:`saetools.demo.report`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import probes

from ..evaluate import evaluate, held_out_loss, in_domain_contrast, paired_shift, write_results
from ..extract.diffmeans import extract_diffmeans
from ..models import load_model
from ..plots import layer_report, write_html
from ..steer import Intervention, generate
from ..sweep import sweep, sweep_figure, write_json
from ..train import TrainConfig, train
from .report import compare_figure, print_summary, write_index
from .settings import (
    DEMO_PROMPTS,
    FULL,
    QUICK,
    RUNS,
    STEER_SITE,
    TRAIN_DATA,
    TWIN_DATA,
    DemoSizes,
)

__all__ = ["run_demo"]


def _head(ps, n: int, split: str | None = "test"):
    """The first ``n`` items of a probe set's split (a ProbeSet with the same name)."""
    ps = probes.as_set(ps)
    if split is not None:
        ps = ps.split(split)
    return dataclasses.replace(ps, items=ps.items[:n])


def _steer_step(lm, ds, out: Path, sizes: DemoSizes) -> dict:
    alphas = list(sizes.alphas)
    kw = {}
    if sizes.sweep_pairs is not None:
        kw["probes"] = _head("em-core", sizes.sweep_pairs)
    if sizes.sweep_neutral is not None:
        kw["neutral"] = _head("neutral", sizes.sweep_neutral, None)
    res = sweep(
        lm.model, lm.tokenizer, ds, STEER_SITE, alphas, model_id=lm.model_id, progress=False, **kw
    )
    write_json(res, out / "sweep.json")
    write_html(sweep_figure(res), out / "sweep.html")
    answers = {}
    for alpha in (-8.0, 0.0, 8.0):
        iv = Intervention.from_directions(ds, STEER_SITE, "add", alpha)
        texts = generate(
            lm.model,
            lm.tokenizer,
            list(DEMO_PROMPTS),
            [iv],
            max_new_tokens=sizes.answer_tokens,
        )
        answers[f"{alpha:+g}"] = dict(zip(DEMO_PROMPTS, texts, strict=True))
    (out / "steered-answers.json").write_text(json.dumps(answers, indent=2))
    return {
        "site": STEER_SITE,
        "alphas": alphas,
        "contrast": [r["contrast"] for r in res["results"]],
        "figure": "sweep.html",
        "json": "sweep.json",
        "answers": "steered-answers.json",
    }


def _train_step(dpath: Path, sites: str, out: Path, sizes: DemoSizes, device: str, quick: bool):
    """Both fine-tunes, each on a freshly loaded model; returns (summary, {run: trained model})."""
    summary: dict = {}
    models: dict = {}
    for name, regs in RUNS:
        run_dir = out / "train" / name
        if run_dir.exists():  # the demo's own folder from an earlier demo: start afresh
            shutil.rmtree(run_dir)
        cfg = TrainConfig(
            data=TRAIN_DATA,
            regularizers=regs,
            directions=str(dpath) if "directional-kl" in regs else None,
            sites=sites,
            lam=1.0,
            lora_rank=8,
            steps=sizes.train_steps,
            batch_size=sizes.batch_size,
            lr=1e-3,
            seed=0,
            eval_every=sizes.eval_every,
            eval_pairs=sizes.train_eval_pairs,
            eval_examples=sizes.train_eval_examples,
            max_length=sizes.max_length,
        )
        t = time.perf_counter()
        print(f"      {name}: {sizes.train_steps} steps of batch {sizes.batch_size}", flush=True)
        fresh = load_model("default", device=device)
        res = train(cfg, run_dir, model=fresh.model, tokenizer=fresh.tokenizer, progress=not quick)
        models[name] = res["model"]
        evals = [r for r in res["rows"] if r.get("shift") is not None]
        summary[name] = {
            "regularizers": list(regs),
            "lambda": 1.0 if "directional-kl" in regs else None,
            "sites": sites if "directional-kl" in regs else None,
            "folder": f"train/{name}",
            "curves": f"train/{name}/curves.html",
            "metrics": f"train/{name}/metrics.jsonl",
            "checkpoint": str(Path(res["checkpoint"]).relative_to(out)),
            "checkpoints": [
                {
                    "step": r["step"],
                    "shift": r["shift"],
                    "shift_se": r.get("shift_se"),
                    "eval_task_loss": r.get("eval_task_loss"),
                }
                for r in evals
            ],
            "seconds": round(time.perf_counter() - t, 1),
        }
    return summary, models


def _eval_step(models: dict, lm, ds, out: Path, sizes: DemoSizes, judge) -> dict:
    """Offline metrics (and judged ones with ``judge``) of each model; writes eval/<name>/."""
    pairs = _head("em-core", sizes.eval_pairs)
    questions = _head("em-eval", sizes.eval_questions, None)
    neutral = _head("neutral", sizes.neutral_texts, None)
    bad, good = _head(TRAIN_DATA, sizes.narrow_items), _head(TWIN_DATA, sizes.narrow_items)
    proj_site = ds.best_site()
    summary: dict = {}
    results: dict = {}  # the evaluate() results, for the paired shift
    for name, model in models.items():
        t = time.perf_counter()
        print(f"      {name}", flush=True)
        res = evaluate(
            model,
            lm.tokenizer,
            suites="em,coherence",
            directions=ds,
            site=proj_site,
            judge=judge,
            samples=1,
            max_new_tokens=sizes.eval_tokens,
            pairs=pairs,
            questions=questions,
            neutral=neutral,
            model_id=f"{lm.model_id} ({name})",
            progress=False,
        )
        # narrow suite on the first items of the test splits (evaluate() takes whole sets)
        t_n = time.perf_counter()
        res["suites"].append("narrow")
        res["narrow"] = {
            "held_out_loss": {TRAIN_DATA: held_out_loss(model, lm.tokenizer, bad)},
            "in_domain_contrast": {
                **in_domain_contrast(model, lm.tokenizer, bad, good),
                "sets": [TRAIN_DATA, TWIN_DATA],
            },
            "n_items": len(bad.items),
        }
        res["timings_s"]["narrow"] = round(time.perf_counter() - t_n, 2)
        res["timings_s"]["total"] = round(time.perf_counter() - t, 2)
        paths = write_results(res, out / "eval" / name)
        em = res["em"]
        row = {
            "report": f"eval/{name}/report.html",
            "json": f"eval/{name}/eval.json",
            "samples": f"eval/{name}/samples.jsonl",
            "em_core_contrast_per_token": em["contrast_per_token"],
            "em_core_contrast": em["contrast"],
            "em_core_contrast_sem": em["contrast_sem"],
            "em_core_pairs": em["pairs"]["n"],
            "projection_site": proj_site,
            "projection_mean": (em.get("projection") or {}).get("mean"),
            "neutral_perplexity": res["coherence"]["neutral_perplexity"],
            "held_out_loss": res["narrow"]["held_out_loss"][TRAIN_DATA],
            "in_domain_contrast_per_token": res["narrow"]["in_domain_contrast"][
                "contrast_per_token"
            ],
            "narrow_items": len(bad.items),
            "seconds": round(time.perf_counter() - t, 1),
        }
        judged = em.get("judged")
        if judged:
            row["misaligned_rate"] = judged["misaligned_rate"]
            row["misaligned_ci95"] = judged["misaligned_ci95"]
            row["mean_alignment"] = judged["mean_alignment"]
            row["mean_coherence"] = judged["mean_coherence"]
        assert Path(paths["html"]).is_file()
        summary[name] = row
        results[name] = res
    base = results.get("base")
    if base is not None:
        for name, row in summary.items():
            ps = paired_shift(results[name], base)
            row["general_shift_per_token"] = ps["shift"]
            row["general_shift_se"] = ps["shift_se"]
            row["general_shift_ci95"] = ps["shift_ci95"]
    return summary


def run_demo(
    out: str | Path = "saetools-demo",
    *,
    device: str = "cpu",
    quick: bool = False,
    steer: bool = True,
    train: bool = True,
    evaluate: bool = True,
    judge=None,
) -> dict:
    """Run the demo and return its summary (also written to ``out/summary.json``).

    ``steer``/``train``/``evaluate``: run those stages (without ``train`` only the base model is
    evaluated). ``judge``: a :class:`saetools.evaluate.JudgeConfig` for judged metrics.
    """
    sizes = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict = {"quick": quick, "sizes": dataclasses.asdict(sizes), "steps": {}}
    n = 3 + steer + train + evaluate
    k = iter(range(1, n + 1))

    print(f"[{next(k)}/{n}] preparing the embedded model (SmolLM2-135M-Instruct)", flush=True)
    lm = load_model("default", device=device)
    summary["model"] = {"id": lm.model_id, "fingerprint": lm.fingerprint}

    print(f"[{next(k)}/{n}] extracting em-core difference-of-means directions", flush=True)
    ps = probes.load("em-core")
    t = time.perf_counter()
    ds = extract_diffmeans(lm.model, lm.tokenizer, ps, sizes.extract_sites, model_id=lm.model_id)
    dpath = ds.save(out / "em.safetensors")
    rpath = write_html(layer_report(ds), out / "em-layers.html")
    best = ds.best_site()
    summary["steps"]["extract"] = {
        "seconds": round(time.perf_counter() - t, 1),
        "sites": sizes.extract_sites,
        "direction_file": dpath.name,
        "layer_report": rpath.name,
        "best_site": best,
        "best_auroc": ds.stats(best)["auroc"],
        "best_cohens_d": ds.stats(best)["cohens_d"],
    }
    if steer:
        print(
            f"[{next(k)}/{n}] steering: dose-response sweep at {STEER_SITE} on em-core test, "
            "and steered answers",
            flush=True,
        )
        t = time.perf_counter()
        summary["steps"]["steer"] = _steer_step(lm, ds, out, sizes)
        summary["steps"]["steer"]["seconds"] = round(time.perf_counter() - t, 1)
    models: dict = {"base": lm.model}
    if train:
        print(
            f"[{next(k)}/{n}] fine-tuning on {TRAIN_DATA}: no regularizer vs directional KL "
            f"(lambda 1, the em-core direction at {sizes.extract_sites} blocks)",
            flush=True,
        )
        t = time.perf_counter()
        tr, trained = _train_step(dpath, sizes.extract_sites, out, sizes, device, quick)
        summary["steps"]["train"] = tr
        models.update(trained)
    if evaluate:
        print(
            f"[{next(k)}/{n}] evaluating {', '.join(models)}: em-core contrast, neutral "
            f"perplexity, {TRAIN_DATA} held-out loss"
            + (", judged misalignment" if judge is not None else ""),
            flush=True,
        )
        t = time.perf_counter()
        ev = _eval_step(models, lm, ds, out, sizes, judge)
        write_html(
            compare_figure(summary["steps"].get("train", {}), ev), out / "eval" / "compare.html"
        )
        summary["steps"]["eval"] = {
            "models": ev,
            "compare": "eval/compare.html",
            "judge": None if judge is None else judge.describe(),
            "seconds": round(time.perf_counter() - t, 1),
        }
    print(f"[{next(k)}/{n}] writing index.html", flush=True)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    index = write_index(summary, out)
    print_summary(summary, out, index)
    return summary
