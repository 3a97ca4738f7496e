"""Compare two lm-evaluation-harness ``--log_samples`` output folders of the same tasks: the
largest per-choice loglikelihood difference, agreement of the is-greedy flags and of generations,
and each run's metrics. Usage: ``python compare.py REFERENCE_DIR OTHER_DIR [OTHER_DIR ...]``."""

from __future__ import annotations

import glob
import json
import os
import sys


def load(folder: str) -> dict[str, list[dict]]:
    out = {}
    for f in glob.glob(f"{folder}/**/samples_*.jsonl", recursive=True):
        task = os.path.basename(f)[len("samples_") :].rsplit("_", 1)[0]  # drop the timestamp
        with open(f) as fh:
            out[task] = sorted((json.loads(line) for line in fh), key=lambda d: d["doc_id"])
    if not out:
        sys.exit(f"{folder}: no samples_*.jsonl (run lm_eval with --log_samples)")
    return out


def metrics(rows: list[dict]) -> dict[str, float]:
    keys = [k for k in rows[0] if k in ("acc", "acc_norm", "contains", "exact_match")]
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in keys}


def main(ref_dir: str, *others: str) -> None:
    ref = load(ref_dir)
    for other_dir in others:
        other = load(other_dir)
        print(f"== {other_dir} against {ref_dir}")
        for task, rows in sorted(ref.items()):
            if task not in other:
                print(f"{task}: missing")
                continue
            got = other[task]
            line = f"{task}: n={len(rows)} reference {metrics(rows)} other {metrics(got)}"
            if isinstance(rows[0]["resps"][0][0], list):  # loglikelihood: [[logprob, is_greedy]]
                d = [
                    abs(float(a[0][0]) - float(b[0][0]))
                    for x, y in zip(rows, got, strict=True)
                    for a, b in zip(x["resps"], y["resps"], strict=True)
                ]
                g = sum(
                    str(a[0][1]) == str(b[0][1])
                    for x, y in zip(rows, got, strict=True)
                    for a, b in zip(x["resps"], y["resps"], strict=True)
                )
                line += f"; max |Δ loglik| {max(d):.2e}; greedy flags equal {g}/{len(d)}"
            else:
                same = sum(x["resps"] == y["resps"] for x, y in zip(rows, got, strict=True))
                line += f"; generations equal {same}/{len(rows)}"
            print(line)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
