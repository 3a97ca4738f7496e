"""The SAE run reported in docs/sae.md: train SAEs on the embedded model with sae-lens's trainer,
rank their latents on em-core, and compare with the difference-of-means direction.

The text is every built-in probe set (train splits only; ``saetools.sae.local_text()``); its
distinct tokens are captured once at ``--site`` and each architecture in ``--architectures`` is
trained on them (the same as ``saetools sae train``). Each SAE is saved under ``--out`` in
sae-lens's folder format, its latents are ranked on em-core (``rank_latents``: train split, with the
44 held-out test pairs), and the decoder row of the top latents is compared (cosine) with
``extract_diffmeans`` at the same site. Prints markdown; writes an HTML report per SAE.

    python benchmarks/sae_docs_run.py --out /tmp/sae-docs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import probes
from saetools.extract.diffmeans import extract_diffmeans
from saetools.extract.latent_directions import directions_from_latents
from saetools.extract.latent_report import latent_report
from saetools.extract.latents import rank_latents
from saetools.models import load_model
from saetools.plots import write_html
from saetools.sae import TrainConfig, collect_activations, local_text, train_sae_on_activations

CONFIGS = {
    "topk": dict(architecture="topk", k=32, lr=3e-4),
    "standard": dict(architecture="standard", l1_coefficient=1.0, lr=1e-3),
    "jumprelu": dict(architecture="jumprelu", l0_coefficient=1.0, lr=3e-4),
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, help="folder for the SAEs and reports")
    ap.add_argument("--site", default="blocks.15.hook_resid_post")
    ap.add_argument("--architectures", default="topk,standard")
    ap.add_argument("--d-sae", type=int, default=2304)
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    lm = load_model("default")
    text = local_text()
    t0 = time.perf_counter()
    got = collect_activations(
        lm.model, lm.tokenizer, text.examples, args.site, max_tokens=args.tokens
    )
    cap_s = time.perf_counter() - t0
    print(
        f"text: {text.description}\ncaptured {len(got.acts)} distinct tokens at {args.site} "
        f"({got.tokens_seen} forwarded) in {cap_s:.0f}s; torch threads {torch.get_num_threads()}"
    )
    em = probes.load("em-core")
    t0 = time.perf_counter()
    dm = extract_diffmeans(lm.model, lm.tokenizer, em, args.site, model_id=lm.model_id)
    dm_st = dm.stats(args.site)
    print(
        f"difference of means at {args.site}: held-out AUROC {dm_st['auroc']:.3f}, Cohen's d "
        f"{dm_st['cohens_d']:.2f} ({time.perf_counter() - t0:.0f}s)"
    )
    summary = {
        "text": text.description,
        "site": args.site,
        "tokens": len(got.acts),
        "diffmeans": dm_st,
        "saes": {},
    }
    for arch in args.architectures.split(","):
        cfg = TrainConfig(
            site=args.site,
            d_sae=args.d_sae,
            tokens=args.tokens,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=0,
            **CONFIGS[arch],
        )
        res = train_sae_on_activations(
            got.acts,
            cfg,
            metadata={
                "model_name": lm.model_id,
                "dataset_path": f"saetools local text: {text.description}",
            },
        )
        folder = res.save(out / f"sae-l{args.site.split('.')[1]}-{arch}", overwrite=True)
        q = res.quality
        print(
            f"\n## {arch}: {res.info['d_sae']} latents, {res.info['train_tokens']} tokens x {res.info['epochs']} "
            f"epochs, {res.info['steps']} steps of {res.info['batch_size']}, {res.info['seconds']:.0f}s\n"
            f"{q.on} ({q.n_tokens} tokens): explained variance {q.explained_variance:.3f}, L0 {q.l0:.1f}, "
            f"dead latents {q.dead_latents} ({100 * q.dead_fraction:.1f}%); saved {folder}"
        )
        entry = {"quality": q.__dict__, "info": res.info, "rankings": {}}
        r = rank_latents(lm.model, lm.tokenizer, res.sae, em, progress=False)
        for by in ("diff", "auroc"):
            r.by = by
            print(
                f"\ntop {args.top} by {by} (train split), with held-out AUROC and the cosine of the decoder row "
                "with the difference of means\n"
            )
            print(
                "| latent | diff | freq mis / al | train AUROC | held-out AUROC | cosine |\n|---|---|---|---|---|---|"
            )
            rows = []
            for j in r.top(args.top):
                cos = directions_from_latents(res.sae, [j], ranking=r).cosine(dm)[args.site]
                row = {**r.row(j), "cosine": cos}
                rows.append(row)
                print(
                    f"| {j} | {row['diff']:.3f} | {row['freq_misaligned']:.3f} / {row['freq_aligned']:.3f} | "
                    f"{row['auroc']:.3f} | {row['test_auroc']:.3f} | {cos:.3f} |"
                )
            comb = directions_from_latents(res.sae, r.top(5), combine="sum", ranking=r)
            print(
                f"\nsum of the top-5 decoder rows (by {by}): held-out AUROC {comb.stats(args.site)['auroc']:.3f}, "
                f"cosine with the difference of means {comb.cosine(dm)[args.site]:.3f}"
            )
            entry["rankings"][by] = {
                "top": rows,
                "top5_sum": {
                    "auroc": comb.stats(args.site)["auroc"],
                    "cosine": comb.cosine(dm)[args.site],
                },
            }
            write_html(
                latent_report(r, top=args.top),
                out / f"latents-{arch}-{by}.html",
                include_plotlyjs="cdn",
            )
        summary["saes"][arch] = entry
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nwrote {out}/summary.json")


if __name__ == "__main__":
    main()
