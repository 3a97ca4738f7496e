"""One regularized LoRA training step on the CPU, this tree against another saetools tree (e.g.
main before a change), in the same run: is the CPU path slower?

Each (tree, configuration) runs in its own subprocess with ``PYTHONPATH`` set to that tree; the
trees alternate within each round so that machine load hits both alike. A child builds the
embedded model with a LoRA adapter (rank 8, attention and MLP projections), a batch of
``--batch`` em-core chats (loss on the answers), and times ``--steps`` steps after one warm-up step
(forward of ``RegularizedLoss``, backward, AdamW); the median is reported, and its peak RSS.

    python benchmarks/step_compare.py --other /work/main --configs kl,directional-kl --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> dict:
    import torch
    from peft import get_peft_model

    import probes
    from saetools.capture import collate, encode_chat, pad_token_id, pair_examples
    from saetools.models import load_model
    from saetools.regularize import KL, DirectionalKL, RegularizedLoss
    from saetools.train import lora_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = load_model("default")
    model = get_peft_model(lm.model, lora_config(8, None, lm.model))
    model.train()
    em = probes.load("em-core")
    al, mis = pair_examples(em.split("train").items[: args.batch])
    enc = [encode_chat(lm.tokenizer, ex) for ex in (al + mis)[: args.batch]]
    b = collate(enc, pad_token_id(lm.tokenizer), "right")
    labels = b.input_ids.clone()
    labels[~b.response_mask.bool()] = -100
    batch = {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": labels}
    g = torch.Generator().manual_seed(1)
    d = lm.d_model
    from saetools.directions import DirectionSet

    ds = DirectionSet({f"blocks.{k}.hook_resid_post": torch.randn(d, generator=g) for k in (9, 15)})
    terms = {"plain": [], "kl": [KL()], "directional-kl": [DirectionalKL(ds)]}[args.child]
    reg = RegularizedLoss(model, terms)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times, loss = [], None
    for _ in range(1 + args.steps):
        t0 = time.perf_counter()
        out = reg(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        loss = loss if loss is not None else float(out.loss)
    return {
        "seconds": statistics.median(times[1:]),
        "first_loss": loss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tokens": int(b.attention_mask.sum()),
    }


def run(tree: Path, config: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", config, "--steps", str(args.steps)]
    cmd += ["--batch", str(args.batch), "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=str(tree), SAETOOLS_SKIP_LLAMACPP="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree, timeout=1800)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{tree} {config} failed:\n{proc.stderr[-2000:]}")
    return json.loads(line[0][7:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--other", default=None, help="the other saetools source tree (e.g. main)")
    ap.add_argument("--configs", default="plain,kl,directional-kl")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    if args.other is None:
        ap.error("--other is required: the saetools source tree to compare with")
    trees = {"this": ROOT, "other": Path(args.other).resolve()}
    res: dict = {c: {t: [] for t in trees} for c in args.configs.split(",")}
    for r in range(args.rounds):
        for c in res:
            for name in ("this", "other") if r % 2 == 0 else ("other", "this"):
                out = run(trees[name], c, args)
                res[c][name].append(out)
                print(f"round {r} {c} {name}: {out}", flush=True)
    print("\n| config | s/step this | s/step other | this / other | peak RSS MB this / other |")
    print("|---|---:|---:|---:|---:|")
    for c, by in res.items():
        s = {t: statistics.median(x["seconds"] for x in v) for t, v in by.items()}
        m = {t: max(x["peak_rss_mb"] for x in v) for t, v in by.items()}
        print(f"| {c} | {s['this']:.2f} | {s['other']:.2f} | {s['this'] / s['other']:.2f} | "
              f"{m['this']:.0f} / {m['other']:.0f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
