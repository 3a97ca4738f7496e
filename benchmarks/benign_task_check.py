"""Can a plain LoRA fine-tune learn the defense benchmark's benign task at the benchmark's sizes?

For a chat set (default ``nonce-word``; ``--data opswap`` for the old task) it measures the
exact-match accuracy on the ``test`` split of the base model and of plain rank-8 LoRA fine-tunes
configured as ``saetools bench defenses`` configures its benign runs (``saetools.defenses.
_train_config`` with method ``none``: lr 1e-3, LoRA rank 8 on every attention and MLP projection,
batch 8, max length 96), at each ``--steps`` and ``--seeds``. Accuracy is that of
``saetools.evaluate.opswap_accuracy``: greedy decoding with the chat template, the first non-empty
line of the generation stripped and compared case-sensitively with the stripped answer. The table
also shows the accuracy on the first 16 and 32 test items (what the CPU and GPU grids of the
benchmark score, ``--benign-examples``), the held-out loss, and the wall time of each run (load,
fine-tune, evaluate).

    python benchmarks/benign_task_check.py                       # nonce-word, 12 and 40 steps, seeds 0-2
    python benchmarks/benign_task_check.py --steps 12 --seeds 0  # one quick run
    python benchmarks/benign_task_check.py --json out.json

About 3-5 minutes per 12-step run on a 2-core CPU (one thread; longer when the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saetools.evaluate import parse_opswap_answer  # noqa: E402
from saetools.models import load_model  # noqa: E402
from saetools.steer import generate  # noqa: E402
from saetools.train import (  # noqa: E402
    TrainConfig,
    eval_batches,
    load_chat_data,
    task_loss,
    train,
)


def accuracy(model, tok, test, max_new_tokens: int) -> dict:
    """opswap_accuracy's exact match (same generation call and parsing), per test item."""
    outs = generate(
        model,
        tok,
        [[dict(m) for m in e.messages] for e in test],
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        batch_size=16,
    )
    hits = [parse_opswap_answer(o) == e.response.strip() for o, e in zip(outs, test, strict=True)]
    return {
        "accuracy": sum(hits) / len(hits),
        "accuracy_first16": sum(hits[:16]) / min(16, len(hits)),
        "accuracy_first32": sum(hits[:32]) / min(32, len(hits)),
        "n": len(hits),
        "examples": [
            {"prompt": e.messages[-1]["content"], "expected": e.response, "output": o}
            for e, o in list(zip(test, outs, strict=True))[:4]
        ],
    }


def config(args, steps: int, seed: int) -> TrainConfig:
    """The benchmark's benign run with method ``none`` (see saetools.defenses._train_config)."""
    return TrainConfig(
        data=args.data,
        model=args.model,
        regularizers=("none",),
        lora_rank=args.lora_rank,
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        eval_every=steps,
        eval_pairs=1,
        eval_examples=1,
        eval_probes="em-core",
        max_length=args.max_length,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="nonce-word", help="chat set name or JSONL path")
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", default="12,40", help="comma list of step counts")
    ap.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    ap.add_argument(
        "--seeds-long", default=None, help="seeds for step counts > 12 (default --seeds)"
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--no-base", action="store_true", help="skip the base model's accuracy")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps_list = [int(x) for x in args.steps.split(",") if x.strip()]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    seeds_long = [int(x) for x in args.seeds_long.split(",")] if args.seeds_long else seeds
    test = load_chat_data(args.data, "test")
    rows: list[dict] = []

    def held_out_loss(model, tok) -> float:
        return task_loss(model, eval_batches(tok, test, max_length=args.max_length))

    if not args.no_base:
        t0 = time.perf_counter()
        lm = load_model(args.model)
        lm.model.eval()
        acc = accuracy(lm.model, lm.tokenizer, test, args.max_new_tokens)
        loss = held_out_loss(lm.model, lm.tokenizer)
        rows.append({"run": "base", "steps": 0, "seed": None, **acc, "held_out_loss": loss})
        rows[-1]["seconds"] = time.perf_counter() - t0
        _say(rows[-1])

    for steps in steps_list:
        for seed in seeds if steps <= 12 else seeds_long:
            t0 = time.perf_counter()
            lm = load_model(args.model)
            with tempfile.TemporaryDirectory() as d:
                res = train(
                    config(args, steps, seed),
                    d,
                    model=lm.model,
                    tokenizer=lm.tokenizer,
                    progress=False,
                )
            model = res["model"]
            model.eval()
            t_train = time.perf_counter() - t0
            acc = accuracy(model, lm.tokenizer, test, args.max_new_tokens)
            losses = [r["task_loss"] for r in res["rows"] if r.get("task_loss") is not None]
            rows.append(
                {
                    "run": "lora",
                    "steps": steps,
                    "seed": seed,
                    **acc,
                    "held_out_loss": held_out_loss(model, lm.tokenizer),
                    "train_loss_last": losses[-1] if losses else None,
                    "train_seconds": t_train,
                    "seconds": time.perf_counter() - t0,
                }
            )
            _say(rows[-1])

    print(
        f"\n{args.data}: {len(test)} test items, exact match (first line, stripped, "
        f"case-sensitive), greedy, max {args.max_new_tokens} new tokens; LoRA rank "
        f"{args.lora_rank}, lr {args.lr:g}, batch {args.batch_size}, max length {args.max_length}\n"
    )
    print("| run | steps | seed | accuracy | first 16 | first 32 | held-out loss | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        seed = "-" if r["seed"] is None else r["seed"]
        print(
            f"| {r['run']} | {r['steps']} | {seed} | {r['accuracy']:.3f} | "
            f"{r['accuracy_first16']:.3f} | {r['accuracy_first32']:.3f} | "
            f"{r['held_out_loss']:.3f} | {r['seconds']:.0f} |"
        )
    print()
    for steps in steps_list:
        accs = [r["accuracy"] for r in rows if r["run"] == "lora" and r["steps"] == steps]
        if accs:
            se = statistics.stdev(accs) / len(accs) ** 0.5 if len(accs) > 1 else float("nan")
            print(
                f"{steps} steps: mean accuracy {statistics.fmean(accs):.3f} +- {se:.3f} (se) "
                f"over {len(accs)} seed(s): {', '.join(f'{a:.3f}' for a in accs)}"
            )
    if args.json:
        args.json.write_text(json.dumps({"data": args.data, "rows": rows}, indent=2))
    return 0


def _say(r: dict) -> None:
    who = "base" if r["run"] == "base" else f"lora {r['steps']} steps seed {r['seed']}"
    print(
        f"{who}: accuracy {r['accuracy']:.3f} (first 16: {r['accuracy_first16']:.3f}), "
        f"held-out loss {r['held_out_loss']:.3f}, {r['seconds']:.0f} s; e.g. "
        + "; ".join(f"{e['expected']!r} -> {e['output'][:40]!r}" for e in r["examples"][:2]),
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
