"""``saetools extract``: probe set -> DirectionSet file (+ optional HTML layer report)."""

from __future__ import annotations

import argparse
import time

from .common import add_model_options, check_output_path, load_model_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "extract",
        help="extract misalignment directions from a probe set into a direction file",
        description=(
            "Run the probe set's aligned and misaligned answers through the model, record the residual "
            "stream at the chosen sites, and write one direction per site (difference of means: "
            "misaligned minus aligned, computed on the train split; separation measured on the test split)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(p)
    p.add_argument(
        "--probes",
        default="em-core",
        help="built-in probe set name (see `saetools probes`) or a path to a pairs JSONL file",
    )
    p.add_argument("--method", default="diffmeans", choices=["diffmeans"], help="extraction method")
    p.add_argument(
        "--sites",
        default="all",
        help="sites: 'all' (every block's hook_resid_post), 'all:hook_resid_pre', a comma list, or ranges like blocks.10-20.hook_resid_post",
    )
    p.add_argument(
        "--aggregate",
        default="response_mean",
        choices=["response_mean", "last", "prompt_mean", "all"],
        help="how each example's tokens are reduced: mean over answer tokens, last answer token, mean over prompt tokens, or every token",
    )
    p.add_argument(
        "--batch-size", type=int, default=16, help="examples per forward pass (sorted by length)"
    )
    p.add_argument("--out", required=True, help="direction file to write (.safetensors)")
    p.add_argument(
        "--report", default=None, help="optional HTML file: separation and norm by layer"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    import probes

    from ..extract.diffmeans import extract_diffmeans
    from ..plots import layer_report, write_html

    out = check_output_path(args.out, "direction file")
    report = check_output_path(args.report, "report")
    ps = probes.load(args.probes)
    lm = load_model_from_args(args)
    t0 = time.perf_counter()
    ds = extract_diffmeans(
        lm.model,
        lm.tokenizer,
        ps,
        args.sites,
        aggregate=args.aggregate,
        batch_size=args.batch_size,
        model_id=lm.model_id,
        progress=not args.quiet,
    )
    ds.save(out)
    best = ds.best_site()
    st = ds.stats(best)
    print(f"wrote {out}: {len(ds.sites)} sites from {ps.name} in {time.perf_counter() - t0:.1f}s")
    print(
        f"best site {best}: held-out AUROC {st['auroc']:.3f}, Cohen's d {st['cohens_d']:.2f}, norm {st['norm']:.3f}"
    )
    if report:
        write_html(layer_report(ds), report)
        print(f"wrote {report}")
    return 0
