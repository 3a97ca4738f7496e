"""``saetools demo``: the main job, the full loop on the embedded model in one command."""

from __future__ import annotations

import argparse

from .common import add_figure_options


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the full loop on the embedded model and write a report folder",
        description="On the embedded SmolLM2-135M-Instruct: extract em-core directions at every "
        "block (direction file + layer report), a steering sweep at blocks.9, two short LoRA "
        "fine-tunes on narrow-medical-bad (no regularizer vs directional KL on the extracted "
        "direction), an offline evaluation of the base model and both adapters, and one "
        "index.html in --out that links everything. Prints where the report is.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--out", default="saetools-demo", help="folder to write into (created if missing)"
    )
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument(
        "--quick", action="store_true", help="same stages at toy sizes (for smoke tests)"
    )
    p.add_argument("--no-steer", action="store_true", help="skip the steering sweep")
    p.add_argument(
        "--no-train", action="store_true", help="skip the fine-tunes (evaluate the base only)"
    )
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    p.add_argument(
        "--judge-url",
        default=None,
        help="OpenAI-compatible judge base URL (ends in /v1); adds judged misalignment rates "
        "(default: no judge, offline metrics only)",
    )
    p.add_argument("--judge-model", default=None, help="judge model id (with --judge-url)")
    p.add_argument(
        "--judge-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the judge's API key",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    add_figure_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    judge = None
    if args.judge_url:
        from ..evaluate import JudgeConfig

        if not args.judge_model:
            raise SystemExit("saetools demo: --judge-url needs --judge-model")
        judge = JudgeConfig(
            base_url=args.judge_url, model=args.judge_model, api_key_env=args.judge_key_env
        )
    run_demo(
        args.out,
        device=args.device,
        quick=args.quick,
        steer=not args.no_steer,
        train=not args.no_train,
        evaluate=not args.no_eval,
        judge=judge,
    )
    return 0
