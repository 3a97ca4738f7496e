"""``saetools probes``: list the built-in probe sets, or check a probe file."""

from __future__ import annotations

from .data_options import add_format_options, load_set


def register(sub) -> None:
    p = sub.add_parser(
        "probes",
        help="list built-in probe sets, or validate a probe file",
        description="Without arguments, list the built-in probe sets with their kinds and sizes. "
        "With a file or name, load and validate it (errors name the file and line) and say how "
        "it was read (format, columns, where ids and splits came from).",
    )
    p.add_argument(
        "name",
        nargs="?",
        default=None,
        help="a built-in name, or a path to a JSONL, CSV/TSV, parquet or question YAML file or a "
        "datasets folder",
    )
    add_format_options(p, "the file")
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


def _origin(ps) -> str:
    o = ps.origin
    parts = [f"format {o.get('format')}"]
    if o.get("columns"):
        parts.append("columns " + ",".join(f"{k}={v}" for k, v in o["columns"].items()))
    parts.append("ids " + ("from the file" if o.get("ids") == "file" else "derived from content"))
    if o.get("split") == "seeded":
        parts.append(f"split seeded (test fraction {o['test_fraction']:g}, seed {o['split_seed']})")
    else:
        parts.append(f"split {'from the file' if o.get('split') == 'file' else 'none'}")
    return "  read as: " + "; ".join(parts)


def run(args) -> int:
    import probes

    if args.name:
        ps = load_set(args.name, args)
        print(_describe(ps))
        print(_origin(ps))
        return 0
    for name in probes.available():
        print(_describe(probes.load(name)))
    return 0
