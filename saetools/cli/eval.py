"""``saetools eval``: misalignment, coherence and narrow-task metrics, with an optional LLM judge."""

from __future__ import annotations

import argparse
import os
import sys

from .common import (
    add_figure_options,
    add_model_options,
    load_model_from_args,
    nonnegative_float32,
    seed,
)
from .data_options import add_format_options, load_set


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="measure misalignment (offline and judged), coherence and narrow-task metrics",
        description=(
            "Evaluate a model (optionally with an adapter and steering): logprob contrast on em-core "
            "test pairs, projection of the model's own answers to em-eval on a direction, an LLM "
            "judge's alignment and coherence scores of sampled answers (any OpenAI-compatible "
            "endpoint, or 'local' to serve one in-process), neutral-text perplexity, narrow-task "
            "held-out losses and opswap accuracy. Writes eval.json, samples.jsonl and report.html "
            "into --out. See docs/evaluation.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(p)
    p.add_argument(
        "--suite",
        default="em",
        help="em, coherence, narrow, all, or a comma list; judged-rate (the probe judge's "
        "misaligned rate, offline) runs only when named",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    d = p.add_argument_group("direction (projection) and steering")
    d.add_argument("--directions", default=None, metavar="FILE", help="direction file")
    d.add_argument(
        "--site",
        default=None,
        help="site of the projection (default: the file's best site) and of the steering",
    )
    d.add_argument(
        "--alpha",
        default=None,
        help="steer while evaluating: add alpha times the unit direction at --site "
        "(a number or site=alpha,...); without --alpha (and with --op add) nothing is steered",
    )
    d.add_argument("--op", default="add", choices=["add", "ablate", "clamp"])
    d.add_argument("--value", default=None, help="clamp value: number, 'aligned', 'misaligned'")
    d.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    v = d.add_mutually_exclusive_group()
    v.add_argument("--unit", dest="unit", action="store_true", default=True)
    v.add_argument("--raw", dest="unit", action="store_false")
    d.add_argument("--force", action="store_true", help="use a direction file of another model")
    s = p.add_argument_group("sampling")
    s.add_argument(
        "--samples",
        type=int,
        default=None,
        help="answers per question (default: a question YAML file's samples_per_paraphrase, "
        "else 4)",
    )
    s.add_argument("--max-new-tokens", type=int, default=96)
    s.add_argument("--temperature", type=nonnegative_float32, default=1.0)
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--opswap-limit", type=int, default=None, help="score only N opswap items")
    j = p.add_argument_group("judge (any OpenAI-compatible endpoint)")
    j.add_argument(
        "--judge-url",
        default=os.environ.get("SAETOOLS_JUDGE_URL"),
        help="base URL ending in /v1 (default $SAETOOLS_JUDGE_URL), or 'local' to serve "
        "--judge-model in-process; none: no judged metrics",
    )
    j.add_argument(
        "--judge-model",
        default=os.environ.get("SAETOOLS_JUDGE_MODEL"),
        help="judge model id (default $SAETOOLS_JUDGE_MODEL; with --judge-url local a model "
        "for load_model, default 'default')",
    )
    j.add_argument(
        "--judge-key-env",
        default="OPENAI_API_KEY",
        metavar="VAR",
        help="environment variable holding the judge's API key",
    )
    j.add_argument("--judge-prompts", default=None, metavar="FILE", help="judge prompt file")
    j.add_argument("--judge-concurrency", type=int, default=8)
    j.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per request")
    j.add_argument("--judge-retries", type=int, default=3)
    j.add_argument("--judge-top-logprobs", type=int, default=20)
    j.add_argument(
        "--judge-method",
        default="logprobs",
        choices=["logprobs", "sample"],
        help="logprobs: expected value over the first token's top log-probabilities (needs a judge "
        "whose tokenizer has whole-number tokens 0-100); sample: mean of --judge-samples replies",
    )
    j.add_argument("--judge-samples", type=int, default=10, help="replies per answer (sample)")
    j.add_argument(
        "--min-mass",
        type=float,
        default=0.25,
        help="least probability on integer tokens for a score (else None)",
    )
    _register_probe_judge(p)
    _add_data_options(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_figure_options(p)
    p.set_defaults(func=run_eval)


def _register_probe_judge(p) -> None:
    """The options of the judged-rate suite's probe judge."""
    pj = p.add_argument_group("probe judge (--suite judged-rate; no endpoint needed)")
    pj.add_argument(
        "--probe-judge",
        default=None,
        metavar="FILE",
        help="a probe judge file (from an earlier run's probe-judge.safetensors); without it one "
        "is fitted on em-core with the settings below and saved into --out",
    )
    pj.add_argument(
        "--probe-judge-site", default=None, help="site (default: the block at half the depth)"
    )
    pj.add_argument(
        "--probe-judge-classifier", default="diffmeans", choices=["diffmeans", "logreg"]
    )
    pj.add_argument(
        "--probe-judge-fpr",
        type=float,
        default=0.05,
        help="false positive rate on em-core test aligned answers that sets the threshold",
    )


def _add_data_options(p) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--questions",
        default="em-eval",
        help="questions probe set: a name, a JSONL/CSV file, or a YAML file in the "
        "emergent-misalignment paper's shape (its judge prompts are used with the judge)",
    )
    g.add_argument(
        "--pairs",
        default="em-core",
        help="pairs probe set of the em suite's logprob contrast (its test split; see --columns)",
    )
    add_format_options(p, "--pairs")


def _interventions(args, ds, lm):
    from ..steer import interventions_from_directions, parse_site_alphas

    if ds is None:
        if args.alpha is not None or args.op != "add":
            raise ValueError("steering (--alpha, --op) needs --directions")
        return []
    if args.op == "add" and args.alpha is None:
        return []
    if args.op == "clamp" and args.value is None:
        raise ValueError("--op clamp needs --value")
    value = args.value
    if value is not None:
        try:
            value = float(value)
        except ValueError:
            pass
    return interventions_from_directions(
        ds,
        args.site,
        args.op,
        parse_site_alphas(args.alpha) if args.alpha is not None else 1.0,
        value=value,
        unit=args.unit,
        positions=args.positions,
        n_layers=lm.n_layers,
    )


def _probe_judge(args, lm, suites):
    """The probe judge of the judged-rate suite: loaded from --probe-judge, else fitted on em-core
    and saved into --out (None when the suite is not asked for)."""
    from pathlib import Path

    from ..evaluate import ProbeJudge, fit_probe_judge

    if "judged-rate" not in suites:
        return None
    if args.probe_judge:
        return ProbeJudge.load(args.probe_judge, lm.model, force=args.force)
    if not args.quiet:
        print("eval: fitting the probe judge on em-core", file=sys.stderr)
    judge = fit_probe_judge(
        lm.model,
        lm.tokenizer,
        site=args.probe_judge_site,
        classifier=args.probe_judge_classifier,
        fpr=args.probe_judge_fpr,
        batch_size=args.batch_size,
        model_id=lm.model_id,
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = judge.save(Path(args.out) / "probe-judge.safetensors")
    print(f"eval: wrote {path} (reuse it with --probe-judge)", file=sys.stderr)
    return judge


def run_eval(args) -> int:
    import contextlib

    import torch

    from ..directions import DirectionSet
    from ..evaluate import (
        JudgeConfig,
        evaluate,
        headline,
        local_judge,
        parse_suites,
        write_results,
    )

    suites = parse_suites(args.suite)  # fail on a bad suite before loading anything
    # ... on an alpha out of range, and on a bad direction file (checked against the model later)
    if args.alpha is not None:
        from ..steer import parse_site_alphas

        parse_site_alphas(args.alpha)
    if args.directions:
        DirectionSet.load(args.directions)
    if args.samples is not None and args.samples < 1:
        raise ValueError("--samples must be >= 1")
    # the data files are read (and checked) before the model is loaded
    pairs = load_set(args.pairs, args, "pairs") if "em" in suites else args.pairs
    questions = args.questions
    if "em" in suites or args.judge_url:
        import probes

        questions = probes.as_set(args.questions)
    if args.directions and not os.path.isfile(args.directions):
        raise FileNotFoundError(f"direction file {args.directions} does not exist")
    if args.probe_judge and not os.path.isfile(args.probe_judge):
        raise FileNotFoundError(f"probe judge file {args.probe_judge} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = JudgeConfig(
        base_url=args.judge_url or "",
        model=args.judge_model or "",
        api_key_env=args.judge_key_env,
        top_logprobs=args.judge_top_logprobs,
        min_mass=args.min_mass,
        timeout=args.judge_timeout,
        max_retries=args.judge_retries,
        concurrency=args.judge_concurrency,
        prompts=args.judge_prompts,
        method=args.judge_method,
        samples=args.judge_samples,
    )
    if args.judge_url and args.judge_url != "local" and not args.judge_model:
        raise ValueError("--judge-url needs --judge-model (or $SAETOOLS_JUDGE_MODEL)")
    lm = load_model_from_args(args)
    ds = None
    site = args.site
    if args.directions:
        ds = DirectionSet.load(args.directions, model=lm.model, force=args.force)
        if site is None:
            site = ds.best_site()
            args.site = site
    ivs = _interventions(args, ds, lm)
    probe_judge = _probe_judge(args, lm, suites)
    proj_site = site.split(",")[0].split("=")[0].strip() if site else None
    with contextlib.ExitStack() as stack:
        judge = None
        if args.judge_url == "local":
            judge = stack.enter_context(local_judge(args.judge_model or "default", config=base))
        elif args.judge_url:
            judge = base
        res = evaluate(
            lm.model,
            lm.tokenizer,
            suites=suites,
            interventions=ivs,
            directions=ds,
            site=proj_site,
            judge=judge,
            samples=args.samples,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            batch_size=args.batch_size,
            questions=questions,
            pairs=pairs,
            opswap_limit=args.opswap_limit,
            model_id=lm.model_id,
            progress=not args.quiet,
            probe_judge=probe_judge,
        )
    res["adapter"] = args.adapter
    paths = write_results(res, args.out)
    for k, v in headline(res):
        print(f"{k:>44}: {v}")
    print(f"wrote {paths['json']}, {paths['samples']}, {paths['html']}", file=sys.stderr)
    return 0
