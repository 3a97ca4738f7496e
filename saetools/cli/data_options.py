"""Options for data files in other shapes than saetools' own (``docs/datasets.md``, "Other
formats"): ``--columns`` (rename the file's columns to saetools' fields), ``--test-fraction`` and
``--split-seed`` (the seeded split of records that have none). Shared by ``extract``, ``sweep``,
``eval``, ``train`` and ``probes``."""

from __future__ import annotations

import argparse


def add_format_options(p: argparse.ArgumentParser, what: str, *, columns: bool = True) -> None:
    """``--columns``, ``--test-fraction`` and ``--split-seed`` for the data option ``what``
    (e.g. ``"--probes"``). Not given, they are absent from the namespace (their defaults are
    :func:`probes.load`'s, named in the help)."""
    g = p.add_argument_group(
        f"data in other formats ({what}: CSV/TSV, parquet, a datasets folder, JSONL without ids)"
    )
    if columns:
        g.add_argument(
            "--columns",
            default=argparse.SUPPRESS,
            metavar="FIELD=COLUMN,...",
            help=f"read {what} with these columns as saetools' fields, e.g. "
            "question=prompt,aligned=good,misaligned=bad (also id, split, theme, system, "
            "messages, text); a field not given is read from the column of its name",
        )
    g.add_argument(
        "--test-fraction",
        type=float,
        default=argparse.SUPPRESS,
        metavar="F",
        help=f"records of {what} without a split: this fraction goes to the test split, "
        "drawn with --split-seed (default 0.1)",
    )
    g.add_argument(
        "--split-seed",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="seed of that split (default 0)",
    )


def format_options(args: argparse.Namespace) -> dict:
    """The given format options as keyword arguments of :func:`probes.load` (checked)."""
    import probes

    opts: dict = {}
    if getattr(args, "columns", None) is not None:
        opts["columns"] = probes.parse_columns(args.columns)
    if getattr(args, "test_fraction", None) is not None:
        opts["test_fraction"] = args.test_fraction
    if getattr(args, "split_seed", None) is not None:
        opts["split_seed"] = args.split_seed
    probes.check_split_options(opts.get("test_fraction"), opts.get("split_seed"))
    return opts


def load_set(name, args: argparse.Namespace, *kinds: str):
    """The probe set ``name`` read with the command's format options (of one of ``kinds``)."""
    import probes

    return probes.as_set(name, *kinds, **format_options(args))
