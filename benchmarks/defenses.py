"""The defense benchmark (issue 6 part 4): the same code as ``saetools bench defenses``.

python benchmarks/defenses.py --out runs/defenses            # GPU-sized defaults
python benchmarks/defenses.py --help                         # flags; CPU sizes: docs/defenses.md
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None, *, model_factory=None) -> int:
    from saetools.cli.bench import add_arguments, run_from_args
    from saetools.defenses import BenchmarkError

    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run_from_args(args, model_factory=model_factory)
    except BenchmarkError as e:
        print(f"defenses: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
