"""``saetools demo``: the main job, the full loop on the embedded model in one command."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the full loop on the embedded model and write a report folder",
        description="Prepare the embedded SmolLM2-135M-Instruct, extract em-core directions at every block, "
        "write the direction file and the layer report into --out, and print a summary.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--out", default="saetools-demo", help="folder to write into (created if missing)"
    )
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--quick", action="store_true", help="smaller settings (for smoke tests)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    run_demo(args.out, device=args.device, quick=args.quick)
    return 0
