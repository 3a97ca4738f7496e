"""``saetools sae train`` (train an SAE with sae-lens on local text) and ``saetools sae latents``
(rank SAE latents on a pairs probe set, with an HTML report and JSON)."""

from __future__ import annotations

import argparse
import json
import time
import warnings

from .common import (
    add_figure_options,
    add_model_options,
    check_output_path,
    load_model_from_args,
    positive_float32,
    seed,
)


def register(sub) -> None:
    p = sub.add_parser(
        "sae",
        help="sparse autoencoders (sae-lens): train one, rank its latents on a probe set",
        description="Sparse autoencoders through sae-lens: `sae train` and `sae latents`.",
    )
    ss = p.add_subparsers(dest="sae_command", metavar="SUBCOMMAND")

    t = ss.add_parser(
        "train",
        help="train an SAE at one site on local text with sae-lens's trainer",
        description=(
            "Capture the site's activations of every distinct token of local text (the built-in probe sets' "
            "train splits by default, optionally the model's own answers) and train an SAE with sae-lens's "
            "SAETrainer. Writes a sae-lens SAE folder (cfg.json, sae_weights.safetensors) plus "
            "saetools_training.json with the quality figures."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(t)
    t.add_argument("--site", required=True, help="one site, e.g. blocks.15.hook_resid_post")
    t.add_argument("--out", required=True, help="SAE folder to write")
    t.add_argument("--overwrite", action="store_true", help="replace an SAE already in --out")
    t.add_argument("--tokens", type=int, default=200_000, help="distinct activations to capture")
    t.add_argument(
        "--strict-tokens",
        action="store_true",
        help="stop if the text has fewer tokens than --tokens (default: warn and train on what exists)",
    )
    t.add_argument("--epochs", type=int, default=1, help="passes over the captured activations")
    t.add_argument(
        "--architecture", default="topk", choices=["topk", "jumprelu", "standard"], help="SAE type"
    )
    t.add_argument("--d-sae", type=int, default=None, help="latents (default: 4 x d_model)")
    t.add_argument("--k", type=int, default=32, help="topk: latents active per token")
    t.add_argument("--l1", type=float, default=5.0, help="standard: L1 coefficient")
    t.add_argument("--l0", type=float, default=1.0, help="jumprelu: L0 coefficient")
    t.add_argument("--batch-size", type=int, default=1024, help="activations per training step")
    t.add_argument("--lr", type=positive_float32, default=3e-4, help="Adam learning rate")
    t.add_argument("--seed", type=seed, default=0, help="random seed (text order, init, batches)")
    t.add_argument(
        "--text",
        default=None,
        help="comma list of probe sets (names or JSONL paths) for the training text (default: every "
        "built-in set)",
    )
    t.add_argument(
        "--text-split",
        default="train",
        help="split of sets that have one ('train' keeps held-out answers out; 'all' uses everything)",
    )
    t.add_argument(
        "--samples",
        type=int,
        default=0,
        metavar="N",
        help="also sample N answers from the model to the em-eval and neutral prompts",
    )
    t.add_argument("--capture-batch-size", type=int, default=16, help="examples per forward pass")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=run_train)

    lat = ss.add_parser(
        "latents",
        help="rank SAE latents by how much more they fire on misaligned than aligned answers",
        description=(
            "Encode the answer tokens of a pairs probe set with the SAE; per latent report the mean "
            "activation on misaligned and aligned answers, their difference, firing rates and AUROC "
            "(ranking on the train split, held-out figures on the test split). With --model-b/--adapter-b "
            "the same texts go through a base and a fine-tuned model and latents are ranked by the increase."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(lat)
    add_sae_option(lat)
    lat.add_argument("--probes", default="em-core", help="probe set (name or JSONL path)")
    lat.add_argument(
        "--by", default="diff", choices=["diff", "auroc", "cohens_d"], help="ranking statistic"
    )
    lat.add_argument("--top", type=int, default=20, help="latents to print and report")
    lat.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    lat.add_argument("--model-b", default=None, help="model-diff mode: fine-tuned model B")
    lat.add_argument(
        "--adapter-b", default=None, help="model-diff mode: PEFT adapter applied to model B"
    )
    lat.add_argument("--out", default=None, help="HTML report of the top latents")
    lat.add_argument("--json", default=None, metavar="FILE", help="JSON of the top latents")
    lat.add_argument("--quiet", action="store_true", help="no progress bars")
    add_figure_options(lat)
    lat.set_defaults(func=run_latents)


def add_sae_option(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--sae",
        required=required,
        help="SAE: a sae-lens folder (cfg.json + sae_weights.safetensors) or release:sae_id",
    )
    p.add_argument(
        "--sae-site",
        default=None,
        help="the SAE's site, for SAEs whose cfg.json does not record it (metadata.hook_name)",
    )


def load_sae_from_args(args, model):
    from ..sae import load_sae

    return load_sae(args.sae, model=model, site=args.sae_site, device=args.device)


def run_train(args) -> int:
    from pathlib import Path

    from ..sae import SAEError, SAETrainConfig, local_text, model_samples, train_sae

    out = Path(args.out)
    if not out.parent.exists():
        raise SAEError(
            f"cannot write SAE folder {out}: {out.parent} does not exist (create it first)"
        )
    if out.exists() and not out.is_dir():
        raise SAEError(f"cannot write SAE folder {out}: it is a file")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise SAEError(f"{out} is not empty; choose another folder or pass --overwrite")
    cfg = SAETrainConfig(
        site=args.site,
        architecture=args.architecture,
        d_sae=args.d_sae,
        k=args.k,
        l1_coefficient=args.l1,
        l0_coefficient=args.l0,
        tokens=args.tokens,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        capture_batch_size=args.capture_batch_size,
        strict_tokens=args.strict_tokens,
    )
    cfg.validate()
    split = None if args.text_split == "all" else args.text_split
    text = local_text(args.text, split=split)  # bad probe names fail before the model loads
    lm = load_model_from_args(args)
    if args.samples:
        import probes

        prompts = [it.question for it in probes.load("em-eval").items]
        from ..scoring import NEUTRAL_PROMPT

        prompts.append(NEUTRAL_PROMPT)
        text = text + model_samples(lm.model, lm.tokenizer, prompts, n=args.samples, seed=args.seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        res = train_sae(
            lm.model, lm.tokenizer, cfg, text, model_id=lm.model_id, progress=not args.quiet
        )
    for w in caught:
        if "training tokens" in str(w.message):
            print(f"saetools sae train: warning: {w.message}")
    res.save(out, overwrite=args.overwrite)
    q, info = res.quality, res.info
    print(
        f"wrote {out}: {info['architecture']} SAE, {info['d_sae']} latents at {info['site']}, trained on "
        f"{info['train_tokens']} tokens x {info['epochs']} epochs ({info['steps']} steps) in "
        f"{time.perf_counter() - t0:.0f}s"
    )
    print(
        f"quality ({q.on}, {q.n_tokens} tokens): explained variance {q.explained_variance:.3f}, "
        f"L0 {q.l0:.1f}, dead latents {q.dead_latents} ({100 * q.dead_fraction:.1f}%)"
    )
    print(f"text: {info['text']}")
    return 0


def run_latents(args) -> int:
    import probes

    from ..extract.latent_report import latent_report
    from ..extract.latents import rank_latents, rank_latents_modeldiff
    from ..plots import write_html

    html = check_output_path(args.out, "report")
    jpath = check_output_path(args.json, "JSON")
    if args.top < 1:
        raise ValueError("--top must be >= 1")
    ps = probes.load(args.probes)
    lm = load_model_from_args(args)
    sae = load_sae_from_args(args, lm.model)
    if args.model_b or args.adapter_b:
        from ..models import load_model

        lm_b = load_model(
            args.model_b or args.model, device=args.device, dtype=args.dtype, adapter=args.adapter_b
        )
        r = rank_latents_modeldiff(
            lm.model,
            lm_b.model,
            lm.tokenizer,
            sae,
            ps,
            by=args.by,
            batch_size=args.batch_size,
            model_id_a=lm.model_id,
            model_id_b=lm_b.model_id,
            progress=not args.quiet,
        )
    else:
        r = rank_latents(
            lm.model,
            lm.tokenizer,
            sae,
            ps,
            by=args.by,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
    pos, neg = r.labels
    print(
        f"# {sae.d_sae} latents of {sae.source} at {sae.site}, {pos} vs {neg} on {ps.name}, ranked by {args.by}"
    )
    head = f"{'latent':>7} {'diff':>8} {'mean ' + pos:>16} {'mean ' + neg:>14} {'freq ' + pos:>16} {'freq ' + neg:>14} {'AUROC':>6}"
    if r.test is not None:
        head += f" {'test AUROC':>10}"
    print(head)
    for j in r.top(args.top):
        line = (
            f"{j:>7} {float(r.diff[j]):>8.3f} {float(r.mean_pos[j]):>16.3f} {float(r.mean_neg[j]):>14.3f} "
            f"{float(r.freq_pos[j]):>16.3f} {float(r.freq_neg[j]):>14.3f} {float(r.auroc[j]):>6.3f}"
        )
        if r.test is not None:
            line += f" {float(r.test['auroc'][j]):>10.3f}"
        print(line)
    if jpath:
        jpath.write_text(json.dumps({"model_id": lm.model_id, **r.to_json(args.top)}, indent=1))
        print(f"wrote {jpath}")
    if html:
        write_html(latent_report(r, top=args.top), html)
        print(f"wrote {html}")
    return 0
