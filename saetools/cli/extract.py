"""``saetools extract``: probe set -> DirectionSet file (+ optional HTML layer report)."""

from __future__ import annotations

import argparse
import time

from .common import (
    add_figure_options,
    add_model_options,
    check_output_path,
    load_model_from_args,
)
from .data_options import add_format_options, load_set


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
        help="built-in probe set name (see `saetools probes`) or a path to a pairs file "
        "(JSONL, CSV/TSV, parquet or a datasets folder; see --columns)",
    )
    add_format_options(p, "--probes")
    p.add_argument(
        "--method",
        default="diffmeans",
        choices=["diffmeans", "modeldiff", "sae"],
        help="extraction method",
    )
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
    g = p.add_argument_group("modeldiff (--method modeldiff)")
    g.add_argument(
        "--model-b", default=None, help="model B (default: --model); the direction is B minus A"
    )
    g.add_argument(
        "--adapter-b",
        default=None,
        help="PEFT adapter folder applied to model B (e.g. a fine-tune of --model)",
    )
    g.add_argument(
        "--pca",
        type=int,
        default=None,
        metavar="K",
        help="keep the top-K principal components of the per-example differences as a basis",
    )
    g.add_argument("--split", default=None, help="probe split to run (default: all items)")
    s = p.add_argument_group("sae (--method sae): decoder rows of SAE latents")
    s.add_argument("--sae", default=None, help="SAE folder (sae-lens format) or release:sae_id")
    s.add_argument("--sae-site", default=None, help="the SAE's site if its cfg.json lacks it")
    s.add_argument(
        "--latents",
        default=None,
        help="comma list of latent ids (default: the top --top-latents of the ranking on --probes)",
    )
    s.add_argument(
        "--top-latents", type=int, default=1, help="latents to take when --latents is not given"
    )
    s.add_argument(
        "--by", default="diff", choices=["diff", "auroc", "cohens_d"], help="ranking statistic"
    )
    s.add_argument(
        "--combine",
        default=None,
        choices=["sum", "mean"],
        help="store one combined vector instead of one row per latent",
    )
    p.add_argument("--out", required=True, help="direction file to write (.safetensors)")
    p.add_argument(
        "--report", default=None, help="optional HTML file: separation and norm by layer"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_figure_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..distributed import init_from_env
    from ..extract.diffmeans import extract_diffmeans
    from ..plots import layer_report, write_html

    out = check_output_path(args.out, "direction file")
    report = check_output_path(args.report, "report")
    # Option errors are reported before any model is loaded.
    if args.method == "modeldiff" and args.model_b is None and args.adapter_b is None:
        raise ValueError("--method modeldiff needs a second model: --model-b and/or --adapter-b")
    if args.method != "modeldiff" and (args.model_b or args.adapter_b or args.pca):
        raise ValueError("--model-b, --adapter-b and --pca belong to --method modeldiff")
    if args.method == "sae" and not args.sae:
        raise ValueError("--method sae needs --sae (an SAE folder or release:sae_id)")
    if args.method != "sae" and (args.sae or args.latents or args.combine):
        raise ValueError("--sae, --latents and --combine belong to --method sae")
    if args.method == "sae" and args.latents is not None:
        from ..sae import parse_latents

        parse_latents(args.latents)
    ps = load_set(args.probes, args)
    # Under torchrun / accelerate launch: join the process group, one device per rank; each rank
    # captures a share of the examples, rank 0 writes (see docs/scaling.md).
    launch = init_from_env(args.device)
    args.device = launch.device
    lm = load_model_from_args(args)
    t0 = time.perf_counter()
    if args.method == "modeldiff":
        return _run_modeldiff(args, ps, lm, out, report, t0, launch.active)
    if args.method == "sae":
        if launch.active:
            raise ValueError("--method sae runs in one process; launch it without torchrun")
        return _run_sae(args, ps, lm, out, report, t0)
    ds = extract_diffmeans(
        lm.model,
        lm.tokenizer,
        ps,
        args.sites,
        aggregate=args.aggregate,
        batch_size=args.batch_size,
        model_id=lm.model_id,
        progress=not args.quiet,
        distributed=launch.active,
    )
    if not launch.is_main:
        return 0
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


def _run_modeldiff(args, ps, lm, out, report, t0, distributed: bool = False) -> int:
    from ..distributed import is_main_process
    from ..extract.modeldiff import extract_modeldiff
    from ..models import load_model
    from ..plots import layer_report, write_html

    b_name = args.model_b or args.model
    lm_b = load_model(b_name, device=args.device, dtype=args.dtype, adapter=args.adapter_b)
    if lm_b.d_model != lm.d_model:
        raise ValueError(
            f"--model ({lm.d_model} wide) and --model-b ({lm_b.d_model} wide) differ in width"
        )
    ds = extract_modeldiff(
        lm.model,
        lm_b.model,
        lm.tokenizer,
        ps,
        args.sites,
        aggregate=args.aggregate,
        pca=args.pca,
        split=args.split,
        batch_size=args.batch_size,
        model_id_a=lm.model_id,
        model_id_b=lm_b.model_id,
        progress=not args.quiet,
        distributed=distributed,
    )
    if not is_main_process():
        return 0
    ds.save(out)
    print(
        f"wrote {out}: {len(ds.sites)} sites, B minus A = {lm_b.model_id} minus {lm.model_id}, "
        f"on {ps.name} in {time.perf_counter() - t0:.1f}s"
    )
    top = max(ds.sites, key=lambda s: ds.stats(s).get("norm", 0.0))
    print(f"largest shift at {top}: norm {ds.stats(top)['norm']:.3f}")
    if report:
        write_html(layer_report(ds), report)
        print(f"wrote {report}")
    return 0


def _run_sae(args, ps, lm, out, report, t0) -> int:
    from ..extract.latent_directions import directions_from_latents
    from ..extract.latent_report import latent_report
    from ..extract.latents import rank_latents
    from ..plots import write_html
    from ..sae import load_sae, parse_latents

    sae = load_sae(args.sae, model=lm.model, site=args.sae_site, device=args.device)
    if args.sites not in ("all", sae.site):
        raise ValueError(
            f"--method sae uses the SAE's site {sae.site}; drop --sites or give that site"
        )
    ids = sae.check_latents(parse_latents(args.latents)) if args.latents else None
    r = rank_latents(
        lm.model,
        lm.tokenizer,
        sae,
        ps,
        by=args.by,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    if ids is None:
        ids = r.top(args.top_latents)
    ds = directions_from_latents(
        sae, ids, combine=args.combine, ranking=r, model=lm.model, model_id=lm.model_id
    )
    ds.save(out)
    st = ds.stats(sae.site)
    print(
        f"wrote {out}: decoder rows of latent(s) {', '.join(map(str, ids))} of {sae.source} at {sae.site} "
        f"({'combined: ' + args.combine if args.combine else 'one row per latent'}) in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    for j in ids:
        row = r.row(j)
        extra = f", held-out AUROC {row['test_auroc']:.3f}" if "test_auroc" in row else ""
        print(f"latent {j}: diff {row['diff']:.3f}, AUROC {row['auroc']:.3f}{extra}")
    if "auroc" in st:
        print(
            f"direction: held-out AUROC {st['auroc']:.3f}, Cohen's d {st['cohens_d']:.2f}, norm {st['norm']:.3f}"
        )
    if report:
        write_html(latent_report(r), report)
        print(f"wrote {report}")
    return 0
