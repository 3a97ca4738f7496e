"""The ``saetools`` command. Each submodule registers its subcommands through ``register(sub)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from .common import ArgumentParser, figure_export

# Modules that define ``register(subparsers)``; each subcommand sets ``func`` to run it.
_COMMAND_MODULES = (
    "extract",
    "inspect",
    "probes",
    "models",
    "demo",
    "steer",
    "train",
    "interop",
    "sae",
    "serve",
    "eval",
    "screen",
    "bench",
)


class CLIError(Exception):
    """An error the command line reports in one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="saetools",
        description="Find misalignment directions inside language models and put them to work.",
    )
    parser.add_argument("--version", action="version", version=f"saetools {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with figure_export(args):  # --figure-formats: figures also as PNG/SVG/PDF
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("saetools: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, KeyError, OSError, RuntimeError) as e:
        if getattr(args, "debug", False):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"saetools {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
