"""Does a misalignment direction carry over between two independently written pair sets?

Extracts the difference-of-means direction (aligned vs misaligned answers, ``response_mean``) per
block from the ``train`` split of ``em-core`` and of ``em-transfer`` (:func:`extract_diffmeans`),
then scores each direction on the other set's held-out pairs: the projection of every answer on the
unit direction, misaligned vs aligned, as AUROC (unpaired, as in the direction file's stats) and as
the paired win rate (fraction of pairs whose misaligned answer projects higher than its aligned
twin). em-transfer shares no pair with em-core, so all 60 em-transfer pairs are held out for the
em-core direction; the table shows its 40 test pairs and all 60.

    python benchmarks/transfer_check.py [--model default] [--threads 2] [--json out.json]

Prints one row per block and a summary. All 30 blocks took 10-12 minutes on the shared 2-core CPU
(one thread, load average 8-12); ``--sites blocks.15.hook_resid_post`` checks one block (the
forward pass stops after the deepest site).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import probes  # noqa: E402
from saetools.capture import capture  # noqa: E402
from saetools.extract import extract_diffmeans  # noqa: E402
from saetools.extract.diffmeans import pair_examples  # noqa: E402
from saetools.models import load_model  # noqa: E402
from saetools.sites import n_layers, parse_sites  # noqa: E402
from saetools.stats import auroc  # noqa: E402


def per_example(model, tok, items, sites):
    """Per-pair response-mean activations (aligned, misaligned) at every site."""
    al, mis = pair_examples(items)
    kw = dict(keep_per_example=True, progress=False)
    return capture(model, tok, al, sites, **kw).per_example, capture(
        model, tok, mis, sites, **kw
    ).per_example


def score(vec: torch.Tensor, al: torch.Tensor, mis: torch.Tensor) -> tuple[float, float]:
    unit = (vec / vec.norm()).to(al.dtype)
    p_al, p_mis = al @ unit, mis @ unit
    return auroc(p_mis, p_al), float((p_mis > p_al).double().mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--source", default="em-core", help="the first pair set (default em-core)")
    ap.add_argument("--target", default="em-transfer", help="the second pair set")
    ap.add_argument("--sites", default="all", help="sites (default every block's resid_post)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    model.eval()
    sites = parse_sites(args.sites, n_layers(model))
    src, tgt = probes.load(args.source), probes.load(args.target)

    with torch.no_grad():
        d_src = extract_diffmeans(model, tok, src, sites, progress=False)
        d_tgt = extract_diffmeans(model, tok, tgt, sites, progress=False)
        tgt_all = per_example(model, tok, tgt.items, sites)  # every target pair is new to src
        src_test = per_example(model, tok, src.split("test").items, sites)
    test_idx = [i for i, it in enumerate(tgt.items) if it.split == "test"]

    rows = []
    for s in sites:
        v_src, v_tgt = d_src.vectors[s.name], d_tgt.vectors[s.name]
        al, mis = tgt_all[0][s], tgt_all[1][s]
        a_test, w_test = score(v_src, al[test_idx], mis[test_idx])
        a_all, w_all = score(v_src, al, mis)
        a_back, w_back = score(v_tgt, src_test[0][s], src_test[1][s])
        rows.append(
            {
                "site": s.name,
                "block": s.layer,
                "src_on_src_test": d_src.stats(s.name)["auroc"],
                "src_on_tgt_test": a_test,
                "src_on_tgt_test_paired": w_test,
                "src_on_tgt_all": a_all,
                "src_on_tgt_all_paired": w_all,
                "tgt_on_tgt_test": d_tgt.stats(s.name)["auroc"],
                "tgt_on_src_test": a_back,
                "tgt_on_src_test_paired": w_back,
                "cosine": float(
                    torch.nn.functional.cosine_similarity(
                        v_src.double().flatten(), v_tgt.double().flatten(), dim=0
                    )
                ),
            }
        )
    seconds = time.perf_counter() - t0

    n_tr, n_te = len(tgt.split("train")), len(tgt.split("test"))
    n_src_tr, n_src_te = len(src.split("train")), len(src.split("test"))
    print(
        f"{args.source} ({n_src_tr} train / {n_src_te} test pairs) vs {args.target} "
        f"({n_tr} train / {n_te} test), model {args.model}, response_mean, {seconds:.0f} s\n"
    )
    S, T = args.source, args.target
    cols = [
        ("block", "block", "{:d}"),
        (f"{S}->{S} test", "src_on_src_test", "{:.3f}"),
        (f"{S}->{T} test AUROC", "src_on_tgt_test", "{:.3f}"),
        (f"paired {S}->{T}", "src_on_tgt_test_paired", "{:.2f}"),
        (f"{S}->{T} all", "src_on_tgt_all", "{:.3f}"),
        (f"{T}->{T} test", "tgt_on_tgt_test", "{:.3f}"),
        (f"{T}->{S} test AUROC", "tgt_on_src_test", "{:.3f}"),
        (f"paired {T}->{S}", "tgt_on_src_test_paired", "{:.2f}"),
        ("cosine", "cosine", "{:+.2f}"),
    ]
    print("| " + " | ".join(c[0] for c in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f.format(r[k]) for _, k, f in cols) + " |")

    def summary(key: str) -> dict:
        xs = [r[key] for r in rows]
        best = max(rows, key=lambda r: r[key])
        mid = [r[key] for r in rows if 9 <= r["block"] <= 24]
        return {
            "mean": statistics.fmean(xs),
            "min": min(xs),
            "max": max(xs),
            "best_block": best["block"],
            "mean_blocks_9_24": statistics.fmean(mid) if mid else None,
        }

    summ = {k: summary(k) for _, k, _ in cols[1:]}
    print("\nsummary over blocks: mean / min / max (best block) / mean of blocks 9-24")
    for name, key, _ in cols[1:]:
        m = summ[key]
        mid = f"{m['mean_blocks_9_24']:.3f}" if m["mean_blocks_9_24"] is not None else "-"
        print(
            f"  {name:<32} {m['mean']:.3f} / {m['min']:.3f} / {m['max']:.3f} "
            f"(block {m['best_block']}) / {mid}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "source": S,
                    "target": T,
                    "model": args.model,
                    "source_sha256": src.sha256,
                    "target_sha256": tgt.sha256,
                    "seconds": seconds,
                    "rows": rows,
                    "summary": summ,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
