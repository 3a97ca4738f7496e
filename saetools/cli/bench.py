"""``saetools bench``: benchmarks that need no code outside the package (``bench defenses``)."""

from __future__ import annotations

import argparse


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
            "Fine-tune on narrow bad advice and on opswap with each defense (methods × strengths "
            "× direction variants × seeds); measure the general shift at several checkpoints, the "
            "in-domain contrast, neutral perplexity and opswap accuracy. Writes results.jsonl, "
            "table.md and defenses.html into --out; finished runs are skipped when run again. "
            "See docs/defenses.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from ..defenses import add_arguments

    add_arguments(d)
    d.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    d.set_defaults(func=_run)


def _run(args) -> int:
    from ..defenses import run_from_args

    return run_from_args(args)
