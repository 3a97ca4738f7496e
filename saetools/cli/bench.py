"""``saetools bench``: benchmarks that need no code outside the package (``bench defenses``).

The defense benchmark's flags (:func:`add_arguments`), their mapping onto a
:class:`~saetools.defenses.BenchmarkConfig` (:func:`config_from_args`) and the command
(:func:`run_from_args`) are shared with ``python benchmarks/defenses.py``, which takes the same
flags."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..defenses import (
    DEFAULT_STRENGTHS,
    METHODS,
    BenchmarkConfig,
    ModelFactory,
    parse_strengths,
    run_benchmark,
    write_report,
)
from .common import add_figure_options, positive_float32, seed


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: the defense benchmark (bench defenses)",
        description="Benchmarks. See docs/defenses.md.",
    )
    ss = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    d = ss.add_parser(
        "defenses",
        help="in-training defenses compared at matched reduction of the general shift",
        description=(
            "Fine-tune on narrow bad advice and on a benign task (nonce-word) with each defense "
            "(methods × strengths × direction variants × term variants × seeds); measure the "
            "general shift on two pair sets at several checkpoints, the in-domain contrast, "
            "neutral perplexity and the benign task's accuracy. Writes results.jsonl, "
            "table.md and defenses.html into --out; finished runs are skipped when run again. "
            "See docs/defenses.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(d)
    d.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    add_figure_options(d)
    d.set_defaults(func=_run)


def _run(args) -> int:
    return run_from_args(args)


def _csv(cast=str):
    def parse(text: str):
        return tuple(cast(v.strip()) for v in str(text).split(",") if v.strip())

    return parse


def _opt_int(text: str) -> int | None:
    return None if str(text).lower() in ("all", "none", "0") else int(text)


def add_arguments(p) -> None:
    """The benchmark's flags on an ``argparse`` parser."""
    d = BenchmarkConfig()
    _grid_arguments(p.add_argument_group("grid"), d)
    _data_arguments(p.add_argument_group("data (probe set names or JSONL paths)"), d)
    _size_arguments(p.add_argument_group("sizes"), d)
    _judge_arguments(p.add_argument_group("judged misalignment rate (probe judge)"), d)


def _grid_arguments(g, d: BenchmarkConfig) -> None:
    """The folder, the report, and the grid: methods, strengths, seeds, tasks, directions."""
    g.add_argument("--out", required=True, metavar="DIR", help="output folder (resumable)")
    g.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rewrite table.md and defenses.html of --out from every finished run "
        "in its results.jsonl (e.g. after calls with different methods or direction variants)",
    )
    g.add_argument(
        "--plotlyjs",
        choices=("inline", "cdn"),
        default="inline",
        help="defenses.html with plotly.js inline (works offline, ~5 MB) or loaded from a CDN",
    )
    g.add_argument(
        "--methods",
        type=_csv(),
        default=d.methods,
        help=f"comma list from {', '.join(METHODS)} (default: all but sae-latents)",
    )
    g.add_argument(
        "--strengths",
        action="append",
        default=[],
        metavar="METHOD=V1,V2",
        help="strengths of one method (λ; α for steer; safe fraction for interleave); repeat per "
        "method. Defaults: "
        + "; ".join(f"{m} {','.join(f'{v:g}' for v in s)}" for m, s in DEFAULT_STRENGTHS.items()),
    )
    g.add_argument("--seeds", type=_csv(seed), default=d.seeds, help="comma list of seeds")
    g.add_argument("--tasks", type=_csv(), default=d.tasks, help="narrow, benign or both")
    g.add_argument(
        "--direction-sources",
        type=_csv(),
        default=d.sources,
        help="comma list: em-core, em-transfer (difference of means of each set's train pairs "
        "on the base model), modeldiff (bad-minus-good fine-tunes with --dir-seed), "
        "modeldiff-pcaK (their top-K subspace, K 2-8), or sources joined by '+' (stacked and "
        "orthonormalized, e.g. em-core+modeldiff)",
    )
    g.add_argument(
        "--variants",
        type=_csv(),
        default=d.variants,
        help="term variants of directional-kl and directional-l2, comma list: '-' (plain) or "
        "options joined by '+' from one-sided, anchor (computed on the safe data instead of the "
        "training batch), warmupN (λ rises linearly over the first N steps)",
    )
    g.add_argument("--direction-sites", type=_csv(), default=d.site_modes, help="all, one, or both")
    g.add_argument("--site", default=None, help="the site of 'one' (default: the middle block)")
    g.add_argument("--em-core-directions", default=None, metavar="FILE", help="use this file")
    g.add_argument("--modeldiff-directions", default=None, metavar="FILE", help="use this file")
    g.add_argument("--sae", default=None, help="SAE for sae-latents (added to --methods)")
    g.add_argument("--latents", default=None, help="latent ids for sae-latents")


def _data_arguments(dg, d: BenchmarkConfig) -> None:
    """The data sets of the tasks and of the measures."""
    dg.add_argument("--narrow-data", default=d.narrow_data, help="the narrow bad task")
    dg.add_argument("--good-data", default=d.good_data, help="its good twin (in-domain contrast)")
    dg.add_argument(
        "--benign-data", default=d.benign_data, help="the benign task (exact match; or opswap)"
    )
    dg.add_argument("--pairs", default=d.pairs, help="pairs for the general shift (test split)")
    dg.add_argument(
        "--transfer-pairs",
        default=d.transfer_pairs,
        help="a second pairs set the general shift is also measured on (test split; 'none': off)",
    )
    dg.add_argument("--neutral", default=d.neutral, help="texts for the perplexity")
    dg.add_argument("--safe-data", default=d.safe_data, help="safe data of interleave")


def _size_arguments(s, d: BenchmarkConfig) -> None:
    """The model, device, steps and sizes, and how the runs are spread over processes."""
    s.add_argument("--model", default=d.model, help="model name or folder")
    s.add_argument("--device", default=d.device, help="auto (cuda if available), cpu, cuda, ...")
    s.add_argument("--steps", type=int, default=d.steps)
    s.add_argument(
        "--benign-steps", type=int, default=None, help="steps of the benign task (default --steps)"
    )
    s.add_argument("--eval-every", type=int, default=d.eval_every)
    s.add_argument("--batch-size", type=int, default=d.batch_size)
    s.add_argument("--lr", type=positive_float32, default=d.lr)
    s.add_argument("--lora-rank", type=int, default=d.lora_rank)
    s.add_argument("--max-length", type=int, default=d.max_length)
    s.add_argument(
        "--eval-pairs", type=_opt_int, default=d.eval_pairs, help="test pairs of each pair set"
    )
    s.add_argument(
        "--eval-examples", type=_opt_int, default=d.eval_examples, help="held-out narrow items"
    )
    s.add_argument(
        "--benign-examples",
        type=_opt_int,
        default=d.benign_examples,
        help="benign test items scored by exact match ('all': every one)",
    )
    s.add_argument("--neutral-texts", type=_opt_int, default=d.neutral_texts)
    s.add_argument(
        "--dir-steps", type=int, default=d.dir_steps, help="steps of each modeldiff fine-tune"
    )
    s.add_argument(
        "--dir-seed", type=seed, default=d.dir_seed, help="seed of the modeldiff fine-tunes"
    )
    s.add_argument("--dir-pairs", type=_opt_int, default=d.dir_pairs, help="em-core train pairs")
    s.add_argument("--anchor", default=None, help="anchor set for the terms (default: train batch)")
    s.add_argument("--keep-checkpoints", action="store_true", help="keep each run's adapters")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (in all)")
    s.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each in its own process with threads/jobs torch threads (on a "
        "2-core CPU, --jobs 2 --threads 2 is faster than one job of 2 threads)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def _judge_arguments(j, d: BenchmarkConfig) -> None:
    """The probe judge's misaligned-answer rate at the end of each narrow run."""
    j.add_argument(
        "--no-judged-rate",
        action="store_true",
        help="skip the judged rate (no answers sampled or judged; faster)",
    )
    j.add_argument(
        "--judge-questions",
        default=d.judge_questions,
        help="questions the answers are sampled to (temperature 1)",
    )
    j.add_argument(
        "--judge-samples",
        type=int,
        default=d.judge_samples,
        help="answers sampled per question at the end of each narrow run",
    )
    j.add_argument(
        "--judge-max-new-tokens",
        type=int,
        default=d.judge_max_new_tokens,
        help="new tokens per sampled answer",
    )
    j.add_argument(
        "--probe-judge",
        default=None,
        metavar="FILE",
        help="a probe judge file (saetools eval --suite judged-rate writes one); default: one is "
        "fitted on --pairs with the base model and kept in --out",
    )


def config_from_args(args) -> BenchmarkConfig:
    methods = tuple(args.methods)
    if (args.sae or args.latents) and "sae-latents" not in methods:
        methods += ("sae-latents",)
    return BenchmarkConfig(
        methods=methods,
        strengths=parse_strengths(args.strengths),
        seeds=tuple(args.seeds),
        tasks=tuple(args.tasks),
        sources=tuple(args.direction_sources),
        site_modes=tuple(args.direction_sites),
        variants=tuple(args.variants),
        site=args.site,
        model=args.model,
        device=args.device,
        narrow_data=args.narrow_data,
        good_data=args.good_data,
        benign_data=args.benign_data,
        pairs=args.pairs,
        transfer_pairs=None if str(args.transfer_pairs).lower() == "none" else args.transfer_pairs,
        neutral=args.neutral,
        safe_data=args.safe_data,
        anchor=args.anchor,
        steps=args.steps,
        benign_steps=args.benign_steps,
        eval_every=args.eval_every,
        batch_size=args.batch_size,
        lr=args.lr,
        lora_rank=args.lora_rank,
        max_length=args.max_length,
        eval_pairs=args.eval_pairs,
        eval_examples=args.eval_examples,
        benign_examples=args.benign_examples,
        neutral_texts=args.neutral_texts,
        dir_steps=args.dir_steps,
        dir_seed=args.dir_seed,
        dir_pairs=args.dir_pairs,
        em_core_file=args.em_core_directions,
        modeldiff_file=args.modeldiff_directions,
        sae=args.sae,
        latents=args.latents,
        judged_rate=not args.no_judged_rate,
        judge_questions=args.judge_questions,
        judge_samples=args.judge_samples,
        judge_max_new_tokens=args.judge_max_new_tokens,
        probe_judge=args.probe_judge,
        keep_checkpoints=args.keep_checkpoints,
    )


def _plotlyjs(args) -> bool | str:
    return "cdn" if getattr(args, "plotlyjs", "inline") == "cdn" else True


def run_from_args(args, *, model_factory: ModelFactory | None = None) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if getattr(args, "report_only", False):
        res = write_report(args.out, include_plotlyjs=_plotlyjs(args))
        print(Path(res["table"]).read_text())
        print(f"wrote {res['table']}, {res['html']}")
        return 0
    cfg = config_from_args(args)
    jobs = getattr(args, "jobs", 1)
    res = run_benchmark(
        cfg,
        args.out,
        model_factory=model_factory,
        progress=not args.no_progress,
        jobs=jobs,
        include_plotlyjs=_plotlyjs(args),
    )
    print(Path(res["table"]).read_text())
    print(f"wrote {res['results']}, {res['table']}, {res['html']}")
    return 0
