"""Benchmark: data-parallel capture (2 processes, gloo) vs one process, on the embedded model.

Three configurations, each in a fresh subprocess, on the same em-core answers and the same site
(``blocks.15.hook_resid_post``, response mean, length-sorted batches of 16):

* 1 process x 1 torch thread (the baseline)
* 2 processes x 1 torch thread each (``capture(..., distributed=True)``, shard "batches")
* 1 process x 2 torch threads (the other way to use two cores)

Times exclude loading the model and include tokenization, the forwards, the reduction and, for
2 processes, the all-reduce and all-gather (rank 0's wall time between two barriers). Each timing is
the best of ``--repeat`` runs after a warm-up. "CPU s" is the CPU time of every process of a
configuration in that run: on a machine shared with other jobs, wall-time ratios mostly measure the
other jobs, while the CPU time shows what data parallelism costs in extra work. The script also
checks that the 2-process sums equal the 1-process sums.

Usage: python benchmarks/bench_capture_ddp.py [--pairs 132] [--repeat 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SITE = "blocks.15.hook_resid_post"


def examples(pairs: int):
    import probes
    from saetools.extract.diffmeans import pair_examples

    al, mis = pair_examples(probes.load("em-core").items[:pairs])
    return al + mis


def measure(distributed: bool, pairs: int, repeat: int) -> dict:
    """Best wall time of ``capture`` (after a warm-up), this process's CPU time in that run,
    tokens, and the float64 sum at SITE."""
    import torch.distributed as dist

    from saetools.capture import capture
    from saetools.models import load_model

    lm = load_model("default")
    exs = examples(pairs)
    kw = dict(batch_size=16, progress=False, distributed=distributed)
    capture(lm.model, lm.tokenizer, exs[:16], SITE, **kw)  # warm-up
    best, cpu = float("inf"), 0.0
    res = None
    for _ in range(repeat):
        if distributed:
            dist.barrier()
        t, c = time.perf_counter(), time.process_time()
        res = capture(lm.model, lm.tokenizer, exs, SITE, **kw)
        if distributed:
            dist.barrier()
        if time.perf_counter() - t < best:
            best, cpu = time.perf_counter() - t, time.process_time() - c
    assert res is not None
    return {
        "seconds": best,
        "cpu": cpu,
        "tokens": res.n_tokens,
        "sum": next(iter(res.sums.values())),
    }


def _worker(rank: int, world: int, init_file: str, out: str, pairs: int, repeat: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        r = measure(True, pairs, repeat)
        torch.save(r, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def child(procs: int, threads: int, pairs: int, repeat: int, out: str) -> None:
    if procs == 1:
        torch.set_num_threads(threads)
        torch.save(measure(False, pairs, repeat), out)
        return
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            _worker,
            args=(procs, os.path.join(tmp, "init"), out, pairs, repeat),
            nprocs=procs,
            join=True,
        )
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(procs)]
    torch.save({**ranks[0], "cpu": sum(r["cpu"] for r in ranks)}, out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pairs", type=int, default=132, help="em-core pairs (2 answers each)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.pairs, args.repeat, args.out)
        return

    configs = [(1, 1), (2, 1), (1, 2)]
    names = {
        (1, 1): "1 process x 1 thread",
        (2, 1): "2 processes x 1 thread",
        (1, 2): "1 process x 2 threads",
    }
    results = {}
    print(
        f"em-core: {args.pairs} pairs ({2 * args.pairs} answers), site {SITE}, best of "
        f"{args.repeat}, {os.cpu_count()} CPUs, load average before: {os.getloadavg()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for procs, threads in configs:
            out = os.path.join(tmp, f"{procs}x{threads}.pt")
            cmd = [sys.executable, __file__, "--child", str(procs), str(threads)]
            cmd += ["--pairs", str(args.pairs), "--repeat", str(args.repeat), "--out", out]
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{names[procs, threads]} failed:\n{proc.stderr[-2000:]}")
                continue
            results[procs, threads] = torch.load(out, weights_only=True)
            r = results[procs, threads]
            print(
                f"  {names[procs, threads]}: {r['seconds']:.2f}s ({r['tokens'] / r['seconds']:.0f} tokens/s)",
                flush=True,
            )
    if (1, 1) not in results:
        return
    base = results[1, 1]
    print(
        f"\n{'configuration':<26} {'seconds':>8} {'tokens/s':>9} {'speed-up vs 1x1':>16} "
        f"{'CPU s (all procs)':>18}"
    )
    for key, r in results.items():
        print(
            f"{names[key]:<26} {r['seconds']:8.2f} {r['tokens'] / r['seconds']:9.0f} "
            f"{base['seconds'] / r['seconds']:16.2f} {r['cpu']:18.2f}"
        )
    summary = {}
    if (2, 1) in results:
        ddp = results[2, 1]
        dev = float((ddp["sum"] - base["sum"]).abs().max() / base["sum"].abs().max())
        summary["ddp_speedup"] = base["seconds"] / ddp["seconds"]
        print(
            f"\nthroughput ratio 2 processes / 1 process (1 thread each): {summary['ddp_speedup']:.2f}"
            f"  (ideal 2.00); sums equal to {dev:.1e} (relative)"
        )
        if (1, 2) in results:
            summary["ddp_vs_threads"] = results[1, 2]["seconds"] / ddp["seconds"]
            print(
                f"throughput ratio 2 processes x 1 thread / 1 process x 2 threads: "
                f"{summary['ddp_vs_threads']:.2f}"
            )
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "pairs": args.pairs,
                    "site": SITE,
                    "seconds": {names[k]: r["seconds"] for k, r in results.items()},
                    "cpu_seconds": {names[k]: r["cpu"] for k, r in results.items()},
                    "tokens": base["tokens"],
                    **summary,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
