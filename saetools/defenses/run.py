"""One run of the grid: the :class:`~saetools.train.TrainConfig` of a method, strength and variant,
the LoRA fine-tune, its measures at every checkpoint (general shift per question on both pair sets,
held-out task loss) and at the end (in-domain contrast and perplexity, or the benign task's
exact-match accuracy with its Wilson interval), and its rows of ``results.jsonl``."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from ..evaluate import in_domain_contrast, neutral_perplexity, opswap_accuracy
from ..scoring import pair_contrast, task_loss
from ..stats import mean_se, wilson_interval
from ..train import TrainConfig, train
from .config import DIRECTION_METHODS, BenchmarkConfig, Run, variant_options
from .folder import drop_checkpoints
from .inputs import ModelFactory, middle_site, task_batches
from .judge import judged_measures


def train_config(
    cfg: BenchmarkConfig, run: Run, dir_files: Mapping[str, str], site: str
) -> TrainConfig:
    """The fine-tune of ``run``: its task's data, and the method as a regularizer (strength λ),
    steering (α) or interleaved safe data (fraction), with its direction file and sites."""
    data = cfg.narrow_data if run.task == "narrow" else cfg.benign_data
    regs: tuple[str, ...] = ("none",)
    kw: dict = {}
    if run.method == "interleave":
        kw["interleave"] = run.strength
        kw["interleave_data"] = cfg.safe_data
    elif run.method == "steer":
        regs, kw["alpha"] = ("steer",), run.strength
    elif run.method != "none":
        regs, kw["lam"] = (run.method,), run.strength
    if run.method in DIRECTION_METHODS:
        kw["directions"] = dir_files[run.source]
        kw["sites"] = "all" if run.sites == "all" else site
    if run.method == "sae-latents":
        kw["sae"], kw["latents"] = cfg.sae, cfg.latents
    opts = variant_options(run.variant)
    kw["one_sided"] = bool(opts.get("one_sided"))
    kw["lam_warmup"] = int(opts.get("lam_warmup", 0))
    anchor = (cfg.anchor or cfg.safe_data) if opts.get("anchor") else cfg.anchor
    return TrainConfig(
        data=data,
        model=cfg.model,
        regularizers=regs,
        lora_rank=cfg.lora_rank,
        steps=cfg.steps_for(run.task),
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=run.seed,
        # the loop's own eval (step 0 and the end) is kept minimal: the benchmark evaluates
        # every eval_every steps itself (per-question values), in on_step
        eval_every=cfg.steps_for(run.task),
        eval_pairs=1,
        eval_examples=1,
        eval_probes=cfg.pairs,
        anchor=anchor,
        max_length=cfg.max_length,
        **kw,
    )


def run_one(
    cfg: BenchmarkConfig,
    run: Run,
    out: Path,
    factory: ModelFactory,
    dir_files: Mapping[str, str],
    common: dict,
) -> list[dict]:
    """Fine-tune ``run`` (in ``out/runs/<run_id>``, started afresh) and measure it; returns its
    rows of ``results.jsonl``: one per checkpoint (step 0 is the base model), the last ``final``.
    ``common`` is :func:`~saetools.defenses.inputs.shared_inputs`."""
    t0, c0 = time.perf_counter(), time.process_time()
    model, tok = factory()
    site = cfg.site or middle_site(model)
    tc = train_config(cfg, run, dir_files, site)
    batches = task_batches(cfg, run.task, tok)
    narrow = run.task == "narrow"
    sets = _pair_sets(common) if narrow else []
    # step 0 is the base model: shift 0 by definition, and the base held-out loss computed once
    evals: list[dict] = [_step0_row(run, common)]

    def evaluate_at(step: int, m) -> None:
        evals.append(_checkpoint_row(step, m, tok, sets, batches))

    def on_step(step, logs):
        if narrow and step % cfg.eval_every == 0 and step != tc.steps:
            evaluate_at(step, model)  # the LoRA layers are injected into `model` in place

    run_dir = out / "runs" / run.run_id
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts again
    res = train(tc, run_dir, model=model, tokenizer=tok, progress=False, on_step=on_step)
    tuned = res["model"]
    tuned.eval()
    evaluate_at(tc.steps, tuned)
    final = evals[-1]
    final["train_task_loss"] = next(
        (r.get("task_loss") for r in reversed(res["rows"]) if r.get("task_loss") is not None),
        None,
    )
    final.update(_final_measures(run, tuned, tok, common))
    if narrow:
        final.update(judged_measures(cfg, run.seed, tuned, tok, common, run_dir))
    if not cfg.keep_checkpoints:
        drop_checkpoints(run_dir)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    meta = _run_meta(run, tc)
    rows = []
    for e in evals:
        rows.append(
            {
                **meta,
                **e,
                "final": e is final,
                "seconds": seconds if e is final else None,
                # CPU time of this process (all its threads): the wall time on an idle machine
                "cpu_seconds": cpu if e is final else None,
                "config": common["config"],
            }
        )
    return rows


# the general shift's keys in a row, per pair set of ``common``: (set, base contrast, key prefix)
SHIFT_SETS = (
    ("pairs", "base_contrast", "shift"),
    ("transfer_pairs", "base_contrast_transfer", "shift_transfer"),
)


def _pair_sets(common: Mapping) -> list[tuple]:
    """(pairs, base contrast, key prefix) of each pair set the shift is measured on."""
    return [
        (common[ps], common[base], key)
        for ps, base, key in SHIFT_SETS
        if common.get(ps) is not None and common.get(base) is not None
    ]


def _step0_row(run: Run, common: Mapping) -> dict:
    """The base model's checkpoint: shift 0 on each pair set (narrow), and the held-out loss
    computed once."""
    row: dict = {"step": 0}
    if run.task == "narrow":
        for _, base, key in _pair_sets(common):
            row[key], row[key + "_se"] = 0.0, 0.0
            row[key + "_per_question"] = [0.0] * len(base)
    row["eval_task_loss"] = common["base_task_loss"][run.task]
    return row


def _checkpoint_row(step: int, model, tok, sets, batches) -> dict:
    """The measures at one checkpoint: for each pair set of ``sets`` (narrow runs), the general
    shift against its base contrast per question, with its mean ± se; the held-out task loss."""
    row: dict = {"step": step}
    for pairs, base, key in sets:
        d = (pair_contrast(model, tok, pairs).cpu() - base).double().tolist()
        row[key], row[key + "_se"] = mean_se(d)
        row[key + "_per_question"] = [round(x, 6) for x in d]
    row["eval_task_loss"] = task_loss(model, batches) if batches else None
    return row


def _final_measures(run: Run, tuned, tok, common: Mapping) -> dict:
    """The end-of-run measures: in-domain contrast and neutral perplexity after the narrow task;
    after the benign one its exact-match accuracy on the benign test items (greedy), with the
    95% Wilson interval over those items, and the lenient first-integer accuracy."""
    if run.task == "narrow":
        idc = in_domain_contrast(tuned, tok, common["bad_test"], common["good_test"], split=None)
        return {
            "in_domain_contrast": idc["contrast_per_token"],
            "in_domain_contrast_se": idc["contrast_sem"],
            "perplexity": neutral_perplexity(tuned, tok, common["neutral"]),
        }
    test = common["benign_test"]
    acc = opswap_accuracy(tuned, tok, test, split=None, max_new_tokens=answer_tokens(tok, test))
    k, n = round(acc["accuracy"] * acc["n"]), acc["n"]
    return {
        "benign_accuracy": acc["accuracy"],
        "benign_accuracy_ci95": list(wilson_interval(k, n)),
        "benign_correct": k,
        "benign_n": n,
        "benign_accuracy_first_int": acc["accuracy_first_int"],
    }


def answer_tokens(tok, examples) -> int:
    """New tokens to generate for exact match on ``examples``: the longest answer's token count
    plus 4 (room for the end-of-turn token and a wrong longer answer), at least 8."""
    lengths = [len(tok(e.response, add_special_tokens=False)["input_ids"]) for e in examples]
    return max(8, max(lengths, default=0) + 4)


def _run_meta(run: Run, tc: TrainConfig) -> dict:
    """A run's identity in each of its rows: the grid cell and what it trained with."""
    return {
        "run_id": run.run_id,
        **dataclasses.asdict(run),
        "direction_file": tc.directions,
        "direction_sites": tc.sites if tc.directions else None,
        "regularizers": list(tc.regularizers),
        "lam": tc.lam if run.method not in ("none", "steer", "ablate", "interleave") else None,
        "alpha": tc.alpha if run.method == "steer" else None,
        "interleave": tc.interleave,
        "one_sided": tc.one_sided,
        "anchor": tc.anchor,
        "lam_warmup": tc.lam_warmup,
    }
