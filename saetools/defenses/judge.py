"""The judged misalignment rate of the benchmark's narrow runs: the probe judge (made once per
benchmark folder, ``OUT/probe-judge.safetensors``, or the file ``probe_judge`` of the config) and
its verdicts on answers sampled at the end of each narrow run (:func:`judged_measures`).

The judge is :func:`saetools.evaluate.probe_judge.fit_probe_judge` on the base model: fitted on the
``pairs`` set's train split at the block at half the depth, its threshold at a 5% false positive
rate on the test split's aligned answers. Each narrow run samples ``judge_samples`` answers per
``judge_questions`` question at temperature 1 (seeded with the run's seed, so runs of one seed share
the random stream) from its fine-tuned model, and the judge scores them on the base model (the
adapter switched off): the misaligned rate among the coherent answers with its Wilson interval."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import probes

from ..evaluate import EvaluationError, fit_probe_judge, judged_rate, load_probe_judge
from .config import BenchmarkConfig, BenchmarkError
from .inputs import ModelFactory

JUDGE_FILE = "probe-judge.safetensors"
ANSWERS_FILE = "judged-answers.jsonl"  # in each narrow run's folder


def make_probe_judge(cfg: BenchmarkConfig, out: Path, factory: ModelFactory, say=print) -> str:
    """The probe judge file of the benchmark: ``cfg.probe_judge``, else ``out/probe-judge.
    safetensors`` (fitted on the base model unless present); checked against the model. The
    judge's questions are read first, so a bad set fails before any run."""
    try:
        qs = probes.as_set(cfg.judge_questions)
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"--judge-questions: {e}") from None
    if not qs.items:
        raise BenchmarkError(f"--judge-questions {cfg.judge_questions!r} holds no questions")
    model, tok = factory()
    path = Path(cfg.probe_judge) if cfg.probe_judge else out / JUDGE_FILE
    if not path.is_file():
        say(f"probe judge: fitting on the base model ({cfg.pairs} train pairs, 5% FPR on test)")
        out.mkdir(parents=True, exist_ok=True)
        fit_probe_judge(model, tok, cfg.pairs, model_id=cfg.model).save(path)
    try:
        load_probe_judge(str(path), model)
    except EvaluationError as e:
        raise BenchmarkError(f"probe judge file {path}: {e}") from None
    return str(path)


def judged_measures(
    cfg: BenchmarkConfig, seed: int, tuned, tok, common: Mapping, run_dir: Path
) -> dict:
    """The judged rate of a fine-tuned model (``tuned``, a PEFT model whose adapter is switched off
    for the judge): its counts, rate and 95% Wilson interval as row fields; the answers with their
    scores and verdicts go to ``run_dir/judged-answers.jsonl``. Empty without a judge."""
    if not common.get("judge_file"):
        return {}
    t0 = time.perf_counter()
    r = judged_rate(
        tuned,
        tok,
        common["judge_file"],
        cfg.judge_questions,
        cfg.judge_samples,
        seed,
        max_new_tokens=cfg.judge_max_new_tokens,
        temperature=1.0,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ANSWERS_FILE, "w") as f:
        for s in r["samples"]:
            f.write(json.dumps(s) + "\n")
    return {
        "judged_rate": r["rate"],
        "judged_rate_ci95": r["ci95"],
        "judged_misaligned": r["misaligned"],
        "judged_coherent": r["n_coherent"],
        "judged_incoherent": r["n_incoherent"],
        "judged_n": r["n"],
        "judged_seconds": time.perf_counter() - t0,  # sampling and judging
    }
