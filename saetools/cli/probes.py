"""``saetools probes``: list the built-in probe sets, or check a JSONL file."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "probes",
        help="list built-in probe sets, or validate a probe JSONL file",
        description="Without arguments, list the built-in probe sets with their kinds and sizes. "
        "With a file or name, load and validate it (errors name the file and line).",
    )
    p.add_argument(
        "name", nargs="?", default=None, help="a built-in name or a path to a JSONL file"
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=run)


def _describe(ps) -> str:
    splits = {}
    for it in ps.items:
        splits[it.split or "-"] = splits.get(it.split or "-", 0) + 1
    split_txt = ", ".join(f"{k} {v}" for k, v in sorted(splits.items()))
    return (
        f"{ps.name:<22} {ps.kind:<10} {len(ps):>5} items  ({split_txt}; {len(ps.themes())} themes)"
    )


def run(args) -> int:
    import probes

    names = [args.name] if args.name else probes.available()
    for name in names:
        print(_describe(probes.load(name)))
    return 0
