"""Seconds per training step and peak memory of each regularizer on the embedded model.

LoRA rank 8 (all attention and MLP projections), batch 8, 128 tokens per example (seeded random
token ids, loss on the last 64 positions), AdamW.

* Time (default ``--mode interleaved``): one process, one model, one ``RegularizedLoss`` per
  configuration; ``--rounds`` rounds, each running one step of every configuration in turn, so a
  change of machine load (other jobs on a shared machine) hits every configuration alike. The
  median over rounds is reported.
* Memory (``--mode subprocess``): one configuration per subprocess so that ``ru_maxrss`` (peak
  resident memory) belongs to that configuration alone; each child also times ``--steps`` steps,
  which is only trustworthy on a quiet machine.

Configurations: plain (no term), kl, directional-kl (all 30 blocks), directional-kl@15 (one site,
blocks.15.hook_resid_post), directional-l2 (all blocks),
ldifs (5 blocks), steer (all blocks), ablate (all blocks). Directions are random unit vectors: the
cost does not depend on their values.

Targets (issue 5): directional-l2 <= 1.5x plain; directional-kl <= 1.15x the kl step.

    python benchmarks/bench_train.py [--steps 2] [--threads 2] [--json out.json]
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

CONFIGS = (
    "plain",
    "kl",
    "directional-kl",
    "directional-kl@15",
    "directional-l2",
    "ldifs",
    "steer",
    "ablate",
)


def _setup(threads: int, batch: int, tokens: int):
    import torch

    torch.set_num_threads(threads)
    from peft import get_peft_model

    from saetools.directions import DirectionSet
    from saetools.models import load_model
    from saetools.train import lora_config

    lm = load_model("default")
    model = lm.model
    for p in model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(model, lora_config(8, None, model))
    g = torch.Generator().manual_seed(0)
    vecs = {f"blocks.{k}.hook_resid_post": torch.randn(lm.d_model, generator=g) for k in range(30)}
    ds = DirectionSet({k: v for k, v in vecs.items() if int(k.split(".")[1]) < lm.n_layers})
    ids = torch.randint(10, lm.tokenizer.vocab_size - 10, (batch, tokens), generator=g)
    labels = ids.clone()
    labels[:, : tokens // 2] = -100
    batch_ = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return model, ds, batch_


def _terms(name: str, ds):
    from saetools.regularize import KL, LDIFS, Ablate, DirectionalKL, DirectionalL2, Steer

    return {
        "plain": [],
        "kl": [KL(weight=1.0)],
        "directional-kl": [DirectionalKL(ds, "all", weight=1.0)],
        # one site, as in the CLI example
        "directional-kl@15": [DirectionalKL(ds, "blocks.15.hook_resid_post", weight=1.0)],
        "directional-l2": [DirectionalL2(ds, "all", weight=1.0)],
        "ldifs": [LDIFS(weight=1.0)],
        "steer": [Steer(ds, "all", alpha=1.0)],
        "ablate": [Ablate(ds, "all")],
    }[name]


def interleaved(names, rounds: int, threads: int, batch: int, tokens: int) -> dict:
    import torch

    from saetools.regularize import RegularizedLoss

    model, ds, batch_ = _setup(threads, batch, tokens)
    regs = {n: RegularizedLoss(model, _terms(n, ds)) for n in names}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 1):  # round 0 is a warm-up: one plain step
        for n in names if r > 0 else names[:1]:
            t0 = time.perf_counter()
            out = regs[n](batch_)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r > 0:
                times[n].append(time.perf_counter() - t0)
        if r > 0:
            print(
                f"  round {r}: " + ", ".join(f"{n} {times[n][-1]:.1f}s" for n in names), flush=True
            )
    return {n: {"config": n, "seconds": statistics.median(v), "all": v} for n, v in times.items()}


def child(name: str, steps: int, warmup: int, threads: int, batch: int, tokens: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from peft import get_peft_model

    from saetools.directions import DirectionSet
    from saetools.models import load_model
    from saetools.regularize import (
        RegularizedLoss,
    )
    from saetools.train import lora_config

    lm = load_model("default")
    model = lm.model
    for p in model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(model, lora_config(8, None, model))
    n_layers, d = lm.n_layers, lm.d_model
    g = torch.Generator().manual_seed(0)
    ds = DirectionSet(
        {f"blocks.{k}.hook_resid_post": torch.randn(d, generator=g) for k in range(n_layers)}
    )
    reg = RegularizedLoss(model, _terms(name, ds))
    vocab = lm.tokenizer.vocab_size
    ids = torch.randint(10, vocab - 10, (batch, tokens), generator=g)
    labels = ids.clone()
    labels[:, : tokens // 2] = -100
    batch_ = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = reg(batch_)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "config": name,
        "seconds": statistics.median(times),
        "all": times,
        "rss_mb": rss_kb / 1024,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="training step cost per regularizer")
    ap.add_argument("--mode", choices=["interleaved", "subprocess"], default="interleaved")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved: timed rounds")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = child(args.child, args.steps, args.warmup, args.threads, args.batch_size, args.tokens)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    results = {}
    names = args.configs.split(",")
    if args.mode == "interleaved":
        results = interleaved(names, args.rounds, args.threads, args.batch_size, args.tokens)
        names = []
    for name in names:
        cmd = [
            sys.executable, __file__, "--child", name, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--threads", str(args.threads),
            "--batch-size", str(args.batch_size), "--tokens", str(args.tokens),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(line[0][7:])
        r = results[name]
        print(f"  {name}: {r['seconds']:.2f} s/step, peak RSS {r['rss_mb']:.0f} MB", flush=True)
    plain = results.get("plain")
    kl = results.get("kl")
    print(
        f"\nembedded model, LoRA r8, batch {args.batch_size} x {args.tokens} tokens, "
        f"{args.threads} threads, median of "
        f"{args.rounds if args.mode == 'interleaved' else args.steps} steps ({args.mode})"
    )
    print("| config | s/step | x plain | x kl | peak RSS MB | x plain RSS |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        xp = r["seconds"] / plain["seconds"] if plain else float("nan")
        xk = r["seconds"] / kl["seconds"] if kl else float("nan")
        rss = r.get("rss_mb")
        xm = rss / plain["rss_mb"] if plain and rss else float("nan")
        rss_txt = f"{rss:.0f}" if rss else "-"
        print(f"| {name} | {r['seconds']:.2f} | {xp:.2f} | {xk:.2f} | {rss_txt} | {xm:.2f} |")
    if plain and "directional-l2" in results:
        x = results["directional-l2"]["seconds"] / plain["seconds"]
        print(f"target directional-l2 <= 1.5x plain: {x:.2f}x {'met' if x <= 1.5 else 'MISSED'}")
    if kl and "directional-kl" in results:
        x = results["directional-kl"]["seconds"] / kl["seconds"]
        print(f"target directional-kl <= 1.15x kl: {x:.2f}x {'met' if x <= 1.15 else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
