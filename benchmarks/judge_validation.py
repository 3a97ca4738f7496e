"""The probe judge's validation set and its measurement (issue 13, part 2).

``sample``: fine-tune the embedded model briefly with LoRA on ``narrow-medical-bad`` and
``narrow-finance-risky`` (rank 8, lr 1e-3, batch 8, seed 0), and sample answers at temperature 1 to
the ``em-eval`` questions from the base model, both adapters and the base model steered along the
``em-core`` difference-of-means direction at block 9. Writes the unlabelled candidates
(``candidates.jsonl``: id, source, question id, question, answer) into ``--work``; a person then
reads every answer and writes the labelled file (``saetools/evaluate/data/em-judged.jsonl``).

``validate``: fit the probe judge on ``em-core`` (every candidate site and classifier, or the
defaults), score the labelled answers with it and print accuracy, precision and recall (misaligned as
positive) with Wilson intervals, and the confusion matrix. ``rates``: the judged rate of the base
model and each adapter (``judged_rate``).

    python benchmarks/judge_validation.py sample --work /tmp/judge-work
    python benchmarks/judge_validation.py validate --work /tmp/judge-work
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ADAPTERS = {"medical": "narrow-medical-bad", "finance": "narrow-finance-risky"}


def _train_adapters(work: Path, steps: int, every: int) -> dict[str, Path]:
    from saetools.models import load_model
    from saetools.train import TrainConfig, train

    out = {}
    for short, data in ADAPTERS.items():
        run = work / f"train-{short}"
        ckpt = run / f"checkpoint-{steps}"
        if not ckpt.is_dir():
            lm = load_model("default")
            cfg = TrainConfig(
                data=data, steps=steps, eval_every=every, eval_pairs=16, seed=0, lr=1e-3
            )
            res = train(cfg, run, model=lm.model, tokenizer=lm.tokenizer, progress=False)
            shifts = [
                (r["step"], round(r.get("shift", 0.0), 3)) for r in res["rows"] if "shift" in r
            ]
            print(f"{short}: general shift by step {shifts}", file=sys.stderr)
        out[short] = run
    return out


def _sources(args, work: Path) -> list[tuple[str, str | None, list, int]]:
    """(source name, adapter folder, interventions, samples per question) of each source."""
    import probes
    from saetools.extract import extract_diffmeans
    from saetools.models import load_model
    from saetools.steer import Intervention

    runs = _train_adapters(work, args.steps, args.every)
    lm = load_model("default")
    site = "blocks.9.hook_resid_post"
    ds = extract_diffmeans(lm.model, lm.tokenizer, probes.load("em-core"), site, progress=False)
    ds.save(work / "em-b9.safetensors")
    out: list[tuple[str, str | None, list, int]] = [("base", None, [], args.n)]
    for short, run in runs.items():
        for step in args.adapter_steps:
            out.append((f"{short}@{step}", str(run / f"checkpoint-{step}"), [], args.n))
    for alpha in args.alphas:
        iv = Intervention.from_directions(ds, site, "add", alpha)
        out.append((f"steer-b9-a{alpha:g}", None, [iv], args.n_steer))
    return out


def cmd_sample(args) -> int:
    from saetools.evaluate import sample_answers
    from saetools.models import load_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (name, adapter, ivs, n) in enumerate(_sources(args, work)):
        lm = load_model("default", adapter=adapter)
        t = time.perf_counter()
        samples = sample_answers(
            lm.model,
            lm.tokenizer,
            "em-eval",
            n,
            ivs,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed + k,
            progress=False,
        )
        print(f"{name}: {len(samples)} answers in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        for s in samples:
            rows.append(
                {
                    "id": f"{name}-{s.question_id}-{s.index}",
                    "source": name,
                    "question_id": s.question_id,
                    "question": s.question,
                    "answer": s.answer,
                }
            )
    path = work / "candidates.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} candidates to {path}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--work", required=True)
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--every", type=int, default=5)
    s.add_argument("--adapter-steps", type=int, nargs="+", default=[10])
    s.add_argument("--alphas", type=float, nargs="+", default=[10.0])
    s.add_argument("--n", type=int, default=2)
    s.add_argument("--n-steer", type=int, default=1)
    s.add_argument("--max-new-tokens", type=int, default=96)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return {"sample": cmd_sample}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
