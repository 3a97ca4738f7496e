"""``saetools train``: fine-tune (LoRA or full) with regularizers against emergent misalignment."""

from __future__ import annotations

import argparse
import math

from .common import (
    add_figure_options,
    add_model_options,
    finite_float32,
    positive_float32,
    seed,
)
from .data_options import add_format_options, format_options


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model on a chat data set with regularizers (directional KL, KL, ...)",
        description=(
            "Fine-tune with LoRA (or fully, with --full) on a chat data set, adding regularizer "
            "terms to the task loss. Writes OUT/metrics.jsonl, OUT/curves.html, OUT/run.json and "
            "OUT/checkpoint-N/ (adapter + optimizer state), measuring the general shift on em-core "
            "test pairs every --eval-every steps."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(p)
    p.add_argument(
        "--data",
        required=True,
        help="chat probe set name (e.g. narrow-medical-bad), or a JSONL/parquet file or a "
        "datasets folder with a 'messages' column (see --test-fraction)",
    )
    add_format_options(p, "--data")
    p.add_argument(
        "--regularizer",
        action="append",
        default=None,
        help="none|kl|ldifs|directional-kl|directional-l2|steer|ablate|sae-latents; repeat or "
        "comma list",
    )
    p.add_argument("--sae", default=None, help="sae-latents: a sae-lens SAE folder or release:id")
    p.add_argument(
        "--latents", default=None, help="sae-latents: latent ids to keep from rising, e.g. 12,40"
    )
    p.add_argument("--directions", default=None, help="direction file (.safetensors)")
    p.add_argument(
        "--site",
        "--sites",
        dest="sites",
        default="all",
        help="sites of the direction terms: 'all', a comma list, or ranges",
    )
    p.add_argument("--lambda", dest="lam", type=_float, default=1.0, help="weight of loss terms")
    p.add_argument(
        "--alpha", type=finite_float32, default=1.0, help="steer: coefficient of the unit vector"
    )
    p.add_argument(
        "--one-sided", action="store_true", help="penalise only shifts toward +direction"
    )
    p.add_argument(
        "--lam-warmup",
        type=int,
        default=0,
        metavar="N",
        help="λ warm-up: loss terms' weights rise linearly over the first N steps (0: off)",
    )
    p.add_argument(
        "--normalize",
        action="store_true",
        help="directional-kl / directional-l2 in norm-relative units, so one --lambda pulls alike on "
        "models of different scale (see docs/regularizers.md)",
    )
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (all attention + MLP)")
    p.add_argument("--full", action="store_true", help="full fine-tune (frozen copy as reference)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--lr", type=positive_float32, default=1e-3)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument(
        "--eval-pairs", type=int, default=None, help="use only the first N em-core test pairs"
    )
    p.add_argument(
        "--eval-examples",
        type=int,
        default=None,
        help="held-out task loss on the first N test items",
    )
    p.add_argument("--max-length", type=int, default=128, help="truncate examples to N tokens")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--anchor", default=None, help="compute the terms on this probe set instead")
    p.add_argument(
        "--interleave",
        type=_float,
        default=0.0,
        metavar="FRACTION",
        help="the interleave defense: make FRACTION (in [0, 1)) of the training data safe "
        "general-domain examples (default 0: off)",
    )
    p.add_argument(
        "--interleave-data",
        default="general-safe",
        metavar="SET",
        help="chat probe set or JSONL with the safe examples for --interleave (train split)",
    )
    p.add_argument("--force", action="store_true", help="accept directions of another model")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_figure_options(p)
    p.set_defaults(func=run)


def config_from_args(args):
    from ..steer import FLOAT32_MAX
    from ..train import TrainConfig, parse_regularizers

    for name in ("lam", "alpha", "lr"):
        v = getattr(args, name)
        if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
            flag = "--lambda" if name == "lam" else f"--{name}"
            raise ValueError(
                f"{flag} must be a finite number within float32's range (|x| <= "
                f"{FLOAT32_MAX:.8g}), not {v}"
            )
    if args.lam < 0:
        raise ValueError(f"--lambda must be >= 0, not {args.lam}")
    if args.adapter is not None:
        raise ValueError("--adapter is not supported by train: start from a merged model folder")
    cfg = TrainConfig(
        data=args.data,
        model=args.model,
        regularizers=parse_regularizers(args.regularizer),
        directions=args.directions,
        sites=args.sites,
        lam=args.lam,
        alpha=args.alpha,
        one_sided=args.one_sided,
        normalize=args.normalize,
        lora_rank=None if args.full else args.lora_rank,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        seed=args.seed,
        eval_every=args.eval_every,
        eval_pairs=args.eval_pairs,
        eval_examples=args.eval_examples,
        anchor=args.anchor,
        sae=args.sae,
        latents=args.latents,
        interleave=args.interleave,
        interleave_data=args.interleave_data,
        max_length=args.max_length,
        force=args.force,
        data_options=format_options(args) or None,
        lam_warmup=args.lam_warmup,
    )
    return cfg


def preflight(cfg, args) -> None:
    """Every check that needs no model: config, data, anchor, direction file header, run folder."""
    from ..train import anchor_examples, check_run_folder, load_chat_data

    cfg.validate()
    load_chat_data(cfg.data, "train", **(cfg.data_options or {}))
    if cfg.anchor:
        anchor_examples(cfg.anchor)
    if cfg.interleave:
        load_chat_data(cfg.interleave_data, "train")
    check_run_folder(args.out, cfg, args.resume)


def preflight_model(cfg, model) -> None:
    """Checks that need the model but no training: direction file fit, sites inside the model."""
    from ..directions import DirectionSet
    from ..sites import n_layers, parse_sites

    parse_sites(cfg.sites, n_layers(model))
    if cfg.sae and "sae-latents" in cfg.regularizers:
        from ..sae import load_sae, parse_latents

        load_sae(cfg.sae, model=model).check_latents(parse_latents(str(cfg.latents)))
    if cfg.directions:
        ds = DirectionSet.load(cfg.directions, model, force=cfg.force)
        for s in parse_sites(cfg.sites, n_layers(model)):
            if s.name not in ds:
                raise ValueError(
                    f"direction file {cfg.directions} has no vector for site {s.name}; it has "
                    f"{', '.join(ds.sites[:5])}{'...' if len(ds.sites) > 5 else ''}"
                )


def run(args) -> int:
    from ..distributed import init_from_env
    from ..train import train
    from .common import load_model_from_args

    cfg = config_from_args(args)
    preflight(cfg, args)
    # Under torchrun / accelerate launch: join the process group, one device per rank; the steps
    # are data parallel and rank 0 writes (see docs/scaling.md).
    launch = init_from_env(args.device)
    args.device = launch.device
    lm = load_model_from_args(args)
    preflight_model(cfg, lm.model)
    res = train(
        cfg,
        args.out,
        resume=args.resume,
        model=lm.model,
        tokenizer=lm.tokenizer,
        progress=not args.quiet,
    )
    if not launch.is_main:
        return 0
    ev = res["last_eval"]
    print(
        f"step {res['step']}: held-out task loss {ev.get('eval_task_loss', float('nan')):.3f}, "
        f"general shift {ev.get('shift', float('nan')):+.3f} ± {ev.get('shift_se', float('nan')):.3f}"
        f" nats/token; checkpoint {res['checkpoint']}; metrics {res['metrics']}"
    )
    return 0
