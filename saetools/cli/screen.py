"""``saetools screen``: rank training examples by how far they push along a direction, and select
safe interleaving data by the perplexity gap between an aligned and a misaligned model."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .common import add_figure_options, add_model_options, load_model_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "screen",
        help="screen training data: projection difference on a direction, or perplexity gap",
        description="Screen training data. See docs/evaluation.md ('Data screening').",
    )
    ss = p.add_subparsers(dest="screen_command", metavar="MODE", required=True)

    a = ss.add_parser(
        "projection",
        help="per example: projection of the data's answer minus the model's own greedy answer",
        description=(
            "For each example of a chat set, the mean projection of its answer tokens on the unit "
            "direction at --site minus the same for the model's own greedy answer. Writes "
            "screen.jsonl (ranked, largest difference first), histogram.html and summary.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(a)
    a.add_argument("--data", required=True, help="chat probe set name or JSONL file")
    a.add_argument("--split", default="train", help="train, test or all")
    a.add_argument("--directions", required=True, metavar="FILE")
    a.add_argument("--site", default=None, help="site (default: the file's best site)")
    a.add_argument("--force", action="store_true", help="use a direction file of another model")
    a.add_argument("--limit", type=int, default=None, help="screen only the first N examples")
    a.add_argument("--max-new-tokens", type=int, default=64, help="length of the own answers")
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--out", required=True, metavar="DIR")
    a.add_argument("--threads", type=int, default=None, help="torch threads")
    a.add_argument("--quiet", action="store_true")
    add_figure_options(a)
    a.set_defaults(func=run_projection)

    b = ss.add_parser(
        "interleave",
        help="select interleaving data by the perplexity gap between aligned and misaligned models",
        description=(
            "For each candidate example, per-token NLL of its answer under the aligned model "
            "(--model/--adapter) and the misaligned model (--misaligned-model/--misaligned-adapter); "
            "gap = NLL(misaligned) - NLL(aligned). Writes screen.jsonl ranked by gap (largest "
            "first, the --top first marked selected), selected.jsonl (the selected examples as "
            "chat records, ready for training), histogram.html and summary.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(b)
    b.add_argument(
        "--misaligned-model",
        default=None,
        help="the misaligned model (default: --model, with --misaligned-adapter on top)",
    )
    b.add_argument("--misaligned-adapter", default=None, metavar="DIR")
    b.add_argument("--data", required=True, help="candidate data: chat, pairs or texts set")
    b.add_argument("--split", default="all", help="train, test or all")
    b.add_argument(
        "--top", type=int, default=None, help="select the N largest gaps (default: gap > 0)"
    )
    b.add_argument("--limit", type=int, default=None, help="screen only the first N examples")
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--out", required=True, metavar="DIR")
    b.add_argument("--threads", type=int, default=None, help="torch threads")
    add_figure_options(b)
    b.set_defaults(func=run_interleave)


def _threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _out(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _summary(rows, key: str) -> dict:
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return {"n": len(rows)}
    vals_sorted = sorted(vals)
    return {
        "n": len(rows),
        "mean": sum(vals) / len(vals),
        "median": vals_sorted[len(vals) // 2],
        "min": vals_sorted[0],
        "max": vals_sorted[-1],
    }


def run_projection(args) -> int:
    from ..directions import DirectionSet
    from ..plots import write_html
    from ..screen import histogram_figure, screen_projection, write_jsonl

    if not os.path.isfile(args.directions):
        raise FileNotFoundError(f"direction file {args.directions} does not exist")
    out = _out(args.out)
    _threads(args)
    lm = load_model_from_args(args)
    ds = DirectionSet.load(args.directions, model=lm.model, force=args.force)
    site = args.site or ds.best_site()
    rows = screen_projection(
        lm.model,
        lm.tokenizer,
        args.data,
        ds,
        site,
        split=None if args.split == "all" else args.split,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    write_jsonl(rows, out / "screen.jsonl")
    write_html(histogram_figure(rows, "diff"), out / "histogram.html")
    summary = {"mode": "projection", "model": lm.model_id, "data": args.data, "site": site}
    summary |= _summary(rows, "diff")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{'rank':>4} {'diff':>8}  id / prompt")
    for r in rows[:10]:
        d = "-" if r["diff"] is None else f"{r['diff']:+8.3f}"
        print(f"{r['rank']:>4} {d:>8}  {r['id']}: {r['prompt'][:70]}")
    print(f"wrote {out / 'screen.jsonl'}, {out / 'histogram.html'}", file=sys.stderr)
    return 0


def run_interleave(args) -> int:
    from ..models import load_model
    from ..plots import write_html
    from ..screen import candidate_examples, histogram_figure, screen_perplexity_gap, write_jsonl

    if args.misaligned_model is None and args.misaligned_adapter is None:
        raise ValueError(
            "give the misaligned model: --misaligned-adapter and/or --misaligned-model"
        )
    out = _out(args.out)
    _threads(args)
    aligned = load_model_from_args(args)
    mis = load_model(
        args.misaligned_model or args.model,
        device=args.device,
        dtype=args.dtype,
        adapter=args.misaligned_adapter,
    )
    rows = screen_perplexity_gap(
        aligned.model,
        mis.model,
        aligned.tokenizer,
        args.data,
        split=None if args.split == "all" else args.split,
        limit=args.limit,
        top=args.top,
        batch_size=args.batch_size,
    )
    write_jsonl(rows, out / "screen.jsonl")
    # selected examples as chat records (prompt + the scored answer), ready for `saetools train`
    ids, exs = candidate_examples(args.data, None if args.split == "all" else args.split)
    by_id = dict(zip(ids, exs, strict=True))
    selected = [r["id"] for r in rows if r["selected"]]
    lines = []
    for i in selected:
        e = by_id[i]
        msgs = [dict(m) for m in e.messages] + [{"role": "assistant", "content": e.response}]
        lines.append(json.dumps({"id": i, "split": "train", "messages": msgs}) + "\n")
    (out / "selected.jsonl").write_text("".join(lines))
    write_html(histogram_figure(rows, "gap"), out / "histogram.html")
    summary = {
        "mode": "interleave",
        "aligned": aligned.model_id,
        "misaligned": mis.model_id,
        "data": args.data,
        "n_selected": len(selected),
    } | _summary(rows, "gap")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{'rank':>4} {'gap':>8}  id / prompt")
    for r in rows[:10]:
        print(f"{r['rank']:>4} {r['gap']:+8.3f}  {r['id']}: {r['prompt'][:70]}")
    print(
        f"selected {len(selected)} of {len(rows)}; wrote {out / 'screen.jsonl'}, "
        f"{out / 'selected.jsonl'}, {out / 'histogram.html'}",
        file=sys.stderr,
    )
    return 0
