"""Directional KL against emergent misalignment on the embedded model (issue 5's experiment).

1. Direction: fine-tune ``narrow-medical-bad`` and ``narrow-medical-good`` separately (LoRA rank 8,
   lr 1e-3, batch 8, seed 1) and extract a ``modeldiff`` direction (bad minus good) at all 30
   blocks on em-core train answers (aligned and misaligned).
2. With seed 0, fine-tune ``narrow-medical-bad`` with no regularizer and with ``directional-kl``
   (λ 1, all blocks), recording the general shift (paired per question on em-core test pairs,
   mean ± standard error, per-token contrast change vs the base model) at every ``--eval-every``
   steps and the held-out narrow task loss.

Prints a table and writes ``OUT/results.json`` (plus each run's metrics/curves under OUT/).
Sized for two busy CPU cores: see the flags for the step counts and eval sizes.

    python benchmarks/experiment_directional_kl.py --out runs/exp-dkl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch


def _finetune(data: str, steps: int, batch: int, lr: float, seed: int, max_length: int):
    """A plain LoRA fine-tune (no eval), returning the PEFT model."""
    from peft import get_peft_model

    from saetools.models import load_model
    from saetools.regularize import RegularizedLoss
    from saetools.train import (
        batches_for_step,
        collate_examples,
        encode_training_example,
        load_chat_data,
        lora_config,
    )

    lm = load_model("default")
    torch.manual_seed(seed)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(lm.model, lora_config(8, None, lm.model))
    exs = load_chat_data(data, "train")
    enc = [encode_training_example(lm.tokenizer, e, max_length=max_length) for e in exs]
    reg = RegularizedLoss(model, [])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(1, steps + 1):
        b = collate_examples([enc[i] for i in batches_for_step(len(enc), step, batch, seed)])
        out = reg(b)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        print(f"  {data} step {step}: task loss {out.logs['task_loss']:.3f}", flush=True)
    model.eval()
    return model, lm.tokenizer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/experiment-directional-kl")
    ap.add_argument("--dir-steps", type=int, default=8, help="steps of each direction fine-tune")
    ap.add_argument("--dir-pairs", type=int, default=20, help="em-core train pairs for modeldiff")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--eval-pairs", type=int, default=16, help="em-core test pairs (44 max)")
    ap.add_argument("--eval-examples", type=int, default=8, help="held-out narrow items")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate of every fine-tune")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    import probes
    from saetools.extract.modeldiff import extract_modeldiff
    from saetools.train import TrainConfig, train

    # 1. direction from the bad-vs-good fine-tunes (seed 1)
    dpath = out / "modeldiff-bad-minus-good.safetensors"
    if not dpath.is_file():
        t0 = time.perf_counter()
        bad, tok = _finetune("narrow-medical-bad", args.dir_steps, args.batch_size, args.lr, 1,
                             args.max_length)  # fmt: skip
        good, _ = _finetune("narrow-medical-good", args.dir_steps, args.batch_size, args.lr, 1,
                            args.max_length)  # fmt: skip
        core = probes.load("em-core").split("train")
        core = dataclasses.replace(core, items=core.items[: args.dir_pairs])
        ds = extract_modeldiff(good, bad, tok, core, "all", progress=False, stats=False)
        ds.save(dpath)
        del bad, good
        print(f"direction: {time.perf_counter() - t0:.0f}s", flush=True)

    # 2. seed 0: none vs directional-kl
    results = {}
    for name, regs in (("none", ("none",)), ("directional-kl", ("directional-kl",))):
        t0 = time.perf_counter()
        cfg = TrainConfig(
            data="narrow-medical-bad",
            regularizers=regs,
            directions=str(dpath) if regs != ("none",) else None,
            sites="all",
            lam=args.lam,
            lora_rank=8,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=0,
            eval_every=args.eval_every,
            eval_pairs=args.eval_pairs,
            eval_examples=args.eval_examples,
            max_length=args.max_length,
        )
        run_dir = out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        res = train(cfg, run_dir, progress=False)
        evs = [r for r in res["rows"] if r.get("shift") is not None]
        results[name] = {
            "evals": [
                {k: r.get(k) for k in ("step", "shift", "shift_se", "eval_task_loss")} for r in evs
            ],
            "seconds": time.perf_counter() - t0,
        }
        print(f"{name}: {results[name]['seconds']:.0f}s", flush=True)

    steps = [e["step"] for e in results["none"]["evals"]]
    print()
    print("| defense | " + " | ".join(f"shift @ {s}" for s in steps) + " | narrow held-out loss |")
    print("|---" * (len(steps) + 2) + "|")
    for name, r in results.items():
        cells = [f"{e['shift']:+.3f} ± {e['shift_se']:.3f}" for e in r["evals"]]
        losses = " → ".join(f"{e['eval_task_loss']:.2f}" for e in r["evals"])
        print(f"| {name} | " + " | ".join(cells) + f" | {losses} |")
    summary = {
        "config": vars(args),
        "results": results,
        "total_seconds": time.perf_counter() - t_start,
        "notes": "general shift: mean over em-core test pairs of the change (vs base) of the "
        "per-token mean log p(misaligned) - log p(aligned); ± is the standard error over pairs",
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {out / 'results.json'} ({summary['total_seconds']:.0f}s total)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
