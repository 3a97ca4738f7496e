"""``saetools inspect``: show what a direction file holds."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a direction file's metadata and per-site statistics",
        description="Print a direction file in human-readable form, or as JSON with --json.",
    )
    p.add_argument("file", help="direction file (.safetensors) written by saetools")
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=run)


def _fmt(stats: dict, key: str, spec: str) -> str:
    v = stats.get(key)
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def run(args) -> int:
    from ..directions import DirectionSet

    ds = DirectionSet.load(args.file)
    meta = ds.metadata
    if args.json:
        out = {
            "file": args.file,
            "sites": {s: list(ds.vector(s).shape) for s in ds.sites},
            "metadata": meta,
        }
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    fp = meta.get("fingerprint", {})
    ps = meta.get("probe_set", {})
    print(f"{args.file}")
    print(
        f"  format        saetools.directions v{meta.get('format_version')} (saetools {meta.get('saetools_version')})"
    )
    print(
        f"  model         {meta.get('model_id')}  [{fp.get('architecture')}, {fp.get('n_layers')} blocks, d_model {ds.d_model}, embed hash {fp.get('embed_hash')}]"
    )
    print(f"  method        {meta.get('method')}  ({meta.get('sign', '')})")
    print(f"  aggregation   {meta.get('aggregation')}")
    if ps:
        print(
            f"  probe set     {ps.get('name')} (sha256 {str(ps.get('sha256'))[:12]}…), train split {ps.get('train_split')}, test split {ps.get('test_split')}"
        )
    if meta.get("counts"):
        print("  counts        " + ", ".join(f"{k} {v}" for k, v in meta["counts"].items()))
    print(f"  sites         {len(ds.sites)}")
    header = f"  {'site':<28} {'shape':>9} {'norm':>8} {'AUROC':>7} {'d':>7}"
    print(header)
    for s in ds.sites:
        st = ds.stats(s)
        shape = "x".join(str(x) for x in ds.vector(s).shape)
        print(
            f"  {s:<28} {shape:>9} {_fmt(st, 'norm', '8.3f')} {_fmt(st, 'auroc', '7.3f')} {_fmt(st, 'cohens_d', '7.2f')}"
        )
    try:
        best = ds.best_site()
        print(f"  best site     {best} (AUROC {ds.stats(best)['auroc']:.3f})")
    except ValueError:
        pass
    return 0
