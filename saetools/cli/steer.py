"""``saetools steer`` (generate with a direction added, ablated or clamped) and ``saetools sweep``
(dose-response of the logprob contrast and perplexity over a list of alphas)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import (
    add_figure_options,
    add_model_options,
    check_output_path,
    load_model_from_args,
    nonnegative_float32,
    probability,
    seed,
)
from .data_options import add_format_options, load_set

# Alphas like "-8,-4,0,4,8" start with "-": the parser (cli.common.ArgumentParser) reads an argument
# that starts with a negative number (lists and ranges included) as a value, not as an option.


def _add_direction_options(
    p: argparse.ArgumentParser, *, multi: bool, required: bool = True
) -> None:
    p.add_argument(
        "--directions",
        required=required,
        metavar="FILE",
        help="direction file (.safetensors) from `saetools extract`",
    )
    if multi:
        g = p.add_mutually_exclusive_group(required=required)
        g.add_argument("--site", help="one site, e.g. blocks.15.hook_resid_post")
        g.add_argument(
            "--sites",
            help="several sites: 'all' (every block's hook_resid_post), a comma list, or ranges "
            "like blocks.5-20.hook_resid_post; the file must have each",
        )
    else:
        p.add_argument(
            "--site",
            required=True,
            help="the site to steer (a comma list steers several sites with the same alpha)",
        )
    v = p.add_mutually_exclusive_group()
    v.add_argument(
        "--unit",
        dest="unit",
        action="store_true",
        default=True,
        help="add uses the unit direction: alpha is in activation units (default)",
    )
    v.add_argument(
        "--raw",
        dest="unit",
        action="store_false",
        help="add uses the raw stored vector (difference of means): alpha 1 adds the whole difference",
    )
    p.add_argument(
        "--alpha-scale",
        default="abs",
        choices=["abs", "norm"],
        help="abs: alpha in activation units; norm: alpha as a fraction of the site's mean "
        "residual norm recorded in the direction file (strengths that carry across models)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="use a direction file made for another model (same width)",
    )


def register(sub) -> None:
    _register_steer(sub)
    _register_sweep(sub)


def _register_steer(sub) -> None:
    p = sub.add_parser(
        "steer",
        help="generate answers while adding, ablating or clamping a direction",
        description=(
            "Generate answers to chat prompts (through the chat template, greedy by default) while steering "
            "the residual stream: 'add' adds alpha times the direction, 'ablate' projects it out, 'clamp' pins "
            "the projection on the unit direction to --value. Prints the unsteered answer too with --compare."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(p)
    _add_direction_options(p, multi=True, required=False)
    sg = p.add_argument_group("SAE latent clamping (instead of, or with, --directions)")
    sg.add_argument("--sae", default=None, help="SAE folder (sae-lens format) or release:sae_id")
    sg.add_argument("--sae-site", default=None, help="the SAE's site if its cfg.json lacks it")
    sg.add_argument(
        "--clamp-latent",
        action="append",
        default=None,
        metavar="ID=VALUE",
        help="set SAE latent ID to VALUE at the SAE's site, keeping the SAE's error term (repeat, or "
        "give a comma list: 123=0,456=5)",
    )
    p.add_argument("--op", default="add", choices=["add", "ablate", "clamp"], help="the operator")
    p.add_argument(
        "--alpha",
        default="1",
        help="strength of 'add': a number, or per-site values 'blocks.9.hook_resid_post=6,blocks.15.hook_resid_post=4' "
        "(finite, within float32's range)",
    )
    p.add_argument(
        "--value",
        default=None,
        help="'clamp' target projection: a number, or 'aligned' / 'misaligned' (mean projection of the "
        "probe set's aligned / misaligned answers recorded in the file)",
    )
    p.add_argument(
        "--positions",
        default="all",
        choices=["all", "prompt", "generated"],
        help="which tokens to steer: every token, the prompt only, or the generated tokens only",
    )
    p.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="a user message (repeat the option for several prompts)",
    )
    p.add_argument("--system", default=None, help="optional system message for every prompt")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per answer")
    p.add_argument(
        "--temperature", type=nonnegative_float32, default=0.0, help="0 is greedy; > 0 samples"
    )
    p.add_argument(
        "--top-p",
        type=probability,
        default=None,
        help="nucleus sampling threshold in (0, 1] (with --temperature > 0)",
    )
    p.add_argument(
        "--seed", type=seed, default=0, help="random seed for sampling (-2**63 .. 2**64-1)"
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="prompts per generate call (left-padded)"
    )
    p.add_argument("--compare", action="store_true", help="also print the unsteered answer")
    p.add_argument(
        "--json", default=None, metavar="FILE", help="also write prompts and answers as JSON"
    )
    p.set_defaults(func=run_steer)


def _register_sweep(sub) -> None:
    s = sub.add_parser(
        "sweep",
        help="dose-response: logprob contrast and perplexity for a list of alphas",
        description=(
            "For each alpha, add alpha times the direction at the site (at every token), and measure on a "
            "pairs probe split the logprob contrast log p(misaligned answer) - log p(aligned answer) (summed "
            "over answer tokens, mean over pairs; also per token), the mean projection of the answer tokens "
            "on the unit direction at the site, and the perplexity of the neutral text set (scored as "
            "assistant answers). Writes a plotly HTML figure and JSON."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(s)
    _add_direction_options(s, multi=False)
    s.add_argument(
        "--alphas", default="-8,-4,0,4,8", help="comma-separated alphas, or start:stop:step"
    )
    s.add_argument(
        "--probes", default="em-core", help="pairs probe set (name, or a file: see --columns)"
    )
    add_format_options(s, "--probes")
    s.add_argument("--split", default="test", help="probe split: train, test or all")
    s.add_argument(
        "--neutral", default="neutral", help="texts probe set for perplexity ('none' to skip)"
    )
    s.add_argument(
        "--ablate-sites",
        default=None,
        help="also measure 'ablate' at these sites (e.g. 'all'); the file must have each",
    )
    s.add_argument(
        "--sample",
        type=int,
        default=0,
        metavar="N",
        help="also generate greedy answers to the first N questions of --eval-probes at each alpha",
    )
    s.add_argument("--eval-probes", default="em-eval", help="questions probe set for --sample")
    s.add_argument("--max-new-tokens", type=int, default=48, help="tokens per sampled answer")
    s.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    s.add_argument("--out", default=None, help="HTML dose-response figure to write")
    s.add_argument("--json", default=None, metavar="FILE", help="JSON results to write")
    s.add_argument(
        "--plotlyjs",
        default="inline",
        choices=["inline", "cdn"],
        help="embed plotly.js in the HTML (works offline) or load it from a CDN (small file)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress messages")
    add_figure_options(s)
    s.set_defaults(func=run_sweep)


def _load(args):
    from ..directions import DirectionSet

    ds = DirectionSet.load(args.directions)  # a bad file fails before the model loads
    lm = load_model_from_args(args)
    ds.check_model(lm.model, force=args.force)
    return lm, ds


def run_steer(args) -> int:
    from ..steer import generate

    out = check_output_path(args.json, "JSON")
    alpha, clamps = _check_steer_args(args)
    if args.directions is not None:
        lm, ds = _load(args)
    else:
        lm, ds = load_model_from_args(args), None
    ivs = _interventions(args, lm, ds, alpha, clamps)
    _warn_weak(args, ds, ivs)
    prompts = [
        ([{"role": "system", "content": args.system}] if args.system else [])
        + [{"role": "user", "content": q}]
        for q in args.prompt
    ]
    kw = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    answers = generate(lm.model, lm.tokenizer, prompts, ivs, **kw)
    base = generate(lm.model, lm.tokenizer, prompts, [], **kw) if args.compare else None
    rows = _print_answers(args, ivs, ds, answers, base)
    if out:
        out.write_text(
            json.dumps(
                {
                    "model_id": lm.model_id,
                    "directions": args.directions,
                    "sae": args.sae,
                    "interventions": [_as_json(iv) for iv in ivs],
                    "positions": args.positions,
                    "vector": "unit" if args.unit else "raw",
                    "generation": kw,
                    "answers": rows,
                },
                indent=1,
            )
        )
        print(f"\nwrote {out}")
    return 0


def _warn_weak(args, ds, ivs) -> None:
    """Say so when an absolute alpha is far too small for the model's residual norm."""
    from ..steer import weak_alpha_note

    if ds is None or args.alpha_scale != "abs" or not args.unit:
        return
    for iv in ivs:
        note = weak_alpha_note(ds, iv.site, iv.alpha) if iv.op == "add" else None
        if note:
            print(f"saetools steer: note: {note}", file=sys.stderr)
            return


def _check_steer_args(args):
    """Refuse contradictory options before loading anything; the per-site alphas and the parsed
    ``--clamp-latent`` values (or None)."""
    from ..steer import SteeringError, parse_site_alphas

    alpha = parse_site_alphas(args.alpha)
    if args.directions is None and args.sae is None:
        raise SteeringError(
            "give --directions FILE (with --site/--sites), or --sae with --clamp-latent"
        )
    if args.directions is not None and not (args.site or args.sites):
        raise SteeringError("--directions needs --site or --sites")
    if args.directions is None and (args.site or args.sites):
        raise SteeringError("--site/--sites choose sites of --directions; an SAE has its own site")
    if (args.sae is None) != (args.clamp_latent is None):
        raise SteeringError("--sae and --clamp-latent go together")
    clamps = None
    if args.clamp_latent:
        from ..sae import parse_clamps

        clamps = parse_clamps(args.clamp_latent)
    if args.op == "clamp" and args.value is None and args.directions is not None:
        raise SteeringError("--op clamp needs --value (a number, or 'aligned' / 'misaligned')")
    if args.max_new_tokens < 1:
        raise SteeringError("--max-new-tokens must be >= 1")
    return alpha, clamps


def _interventions(args, lm, ds, alpha, clamps) -> list:
    """The direction file's interventions at the chosen sites, then the SAE latent clamp."""
    from ..steer import interventions_from_directions

    value = args.value
    if value is not None:
        try:
            value = float(value)
        except ValueError:
            pass
    ivs = []
    if ds is not None:
        ivs = interventions_from_directions(
            ds,
            args.site or args.sites,
            args.op,
            alpha,
            value=value,
            unit=args.unit,
            positions=args.positions,
            n_layers=lm.n_layers,
            alpha_scale=args.alpha_scale,
        )
    if clamps is not None:
        from ..sae import LatentClamp, load_sae

        sae = load_sae(args.sae, model=lm.model, site=args.sae_site, device=args.device)
        ivs.append(LatentClamp(sae, list(clamps), list(clamps.values()), positions=args.positions))
    return ivs


def _print_answers(args, ivs, ds, answers, base) -> list[dict]:
    """Print what was steered and each prompt's answers; the answers as JSON rows."""
    desc = ", ".join(_describe(iv) for iv in ivs[:4])
    if len(ivs) > 4:
        desc += f", ... ({len(ivs)} sites)"
    print(
        f"# steering: {desc}; positions {args.positions}"
        + (f"; {'unit' if args.unit else 'raw'} vector" if ds is not None else "")
    )
    rows = []
    for i, q in enumerate(args.prompt):
        print(f"\n## prompt: {q}")
        if base is not None:
            print(f"### unsteered:\n{base[i]}")
        print(f"### steered:\n{answers[i]}")
        rows.append(
            {
                "prompt": q,
                "answer": answers[i],
                **({"unsteered": base[i]} if base is not None else {}),
            }
        )
    return rows


def _describe(iv) -> str:
    if iv.op == "latent_clamp":
        pairs = ", ".join(
            f"{j}={float(v):g}"
            for j, v in zip(iv.latents, iv.values.reshape(-1).tolist(), strict=False)
        )
        return f"SAE latent clamp {pairs} at {iv.site}"
    return (
        f"{iv.op} {iv.site}"
        + (f" alpha {iv.alpha:g}" if iv.op == "add" else "")
        + (f" value {iv.value:g}" if iv.op == "clamp" else "")
    )


def _as_json(iv) -> dict:
    if iv.op == "latent_clamp":
        return {
            "site": iv.site,
            "op": iv.op,
            "latents": list(iv.latents),
            "values": iv.values.reshape(-1).tolist(),
        }
    return {"site": iv.site, "op": iv.op, "alpha": iv.alpha, "value": iv.value}


def run_sweep(args) -> int:
    from ..plots import write_html
    from ..steer import parse_alphas
    from ..sweep import sweep, sweep_figure, write_json

    html = check_output_path(args.out, "figure")
    jpath = check_output_path(args.json, "JSON")
    alphas = parse_alphas(args.alphas)
    if html is None and jpath is None:
        print("saetools sweep: no --out or --json given; printing results only", file=sys.stderr)
    pairs = load_set(args.probes, args, "pairs")
    lm, ds = _load(args)
    res = sweep(
        lm.model,
        lm.tokenizer,
        ds,
        args.site,
        alphas,
        probes=pairs,
        split=args.split,
        neutral=None if args.neutral == "none" else args.neutral,
        unit=args.unit,
        ablate_sites=args.ablate_sites,
        sample=args.sample,
        eval_probes=args.eval_probes,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        model_id=lm.model_id,
        progress=not args.quiet,
        alpha_scale=args.alpha_scale,
    )
    _print_sweep(res)
    if args.alpha_scale == "abs" and args.unit:
        from ..steer import weak_alpha_note

        note = weak_alpha_note(ds, args.site.split(",")[0].strip(), max(alphas, key=abs))
        if note:
            print(f"saetools sweep: note: {note}", file=sys.stderr)
    if jpath:
        write_json(res, jpath)
        print(f"wrote {jpath}")
    if html:
        write_html(
            sweep_figure(res), html, include_plotlyjs="cdn" if args.plotlyjs == "cdn" else True
        )
        print(f"wrote {html}")
    return 0


def _ppl(r: dict) -> str:
    """The perplexity column: blank when no neutral set was scored (``--neutral none``)."""
    return f"{r['perplexity']:>8.2f}" if "perplexity" in r else " " * 8


def _print_sweep(res: dict) -> None:
    if res.get("alpha_scale") == "norm":
        norms = ", ".join(f"{s} {n:.1f}" for s, n in res["site_norms"].items())
        print(f"# alpha: fraction of the site's mean residual norm ({norms})")
    print(f"{'alpha':>7} {'contrast':>9} {'per-token':>9} {'proj':>8} {'ppl':>8}")
    for r in res["results"]:
        print(
            f"{r['alpha']:>7g} {r['contrast']:>9.3f} {r['contrast_per_token']:>9.4f} {r['projection']:>8.2f} "
            f"{_ppl(r)}"
        )
    if "ablate" in res:
        r = res["ablate"]
        print(
            f"{'ablate':>7} {r['contrast']:>9.3f} {r['contrast_per_token']:>9.4f} {r['projection']:>8.2f} "
            f"{_ppl(r)}   ({len(r['sites'])} sites)"
        )
