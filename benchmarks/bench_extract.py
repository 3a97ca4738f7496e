"""Benchmark: extraction of one mid-depth site (block 15 of 30) on the embedded model.

Everything runs in one process on the same length-sorted batches of em-core chat examples, so the
ratios compare like with like:

* saetools ``capture`` (early stop after block 15, streaming response-mean reducer)
* a bare HF forward over the whole model (the work a naive tool does)
* a bare HF forward truncated to blocks 0..15 (the physical limit)
* transformer-lens ``run_with_cache`` with a names filter on a TransformerBridge (full forward and
  with ``stop_at_layer``)
* steering-vectors and repeng training on the same pairs, if their venv exists
  (``bash benchmarks/peers/setup_venv.sh``): they need transformers < 5, so they run in a subprocess.

Peak memory: extraction over the em-core train split and over 10 copies of it, each in a fresh
subprocess (peak RSS), to show that capture streams rather than caches.

Usage: python benchmarks/bench_extract.py [--repeat 2] [--json out.json] [--skip-peers] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SITE = "blocks.15.hook_resid_post"
LAYER = 15
MEMORY_SITE = "blocks.3.hook_resid_post"


def examples():
    import probes
    from saetools.extract.diffmeans import pair_examples

    al, mis = pair_examples(probes.load("em-core").items)
    return al + mis


def batches(tok, exs, batch_size=16):
    from saetools.capture import collate, encode_all

    enc = encode_all(tok, exs)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i].input_ids))
    out = []
    for s in range(0, len(order), batch_size):
        b = collate([enc[i] for i in order[s : s + batch_size]], tok.pad_token_id)
        out.append(
            dict(
                input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids
            )
        )
    return out


def best_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run_peer(tool: str, threads: int) -> dict | None:
    py = ROOT / ".bench" / "peers-venv" / "bin" / "python"
    if not py.exists():
        return None
    out = ROOT / ".bench" / f"peer-train-{tool}.json"
    cmd = [
        str(py),
        str(ROOT / "benchmarks" / "peers" / "peer_bench.py"),
        "train",
        "--tool",
        tool,
        "--layer",
        str(LAYER),
        "--json",
        str(out),
        "--threads",
        str(threads),
        "--skip-checks",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {tool} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(out.read_text())


def memory_child(copies: int, threads: int | None) -> None:
    """Run in a subprocess: extract at one site over `copies` x the train split; print peak RSS (MB)."""
    import probes
    from saetools.extract.diffmeans import extract_diffmeans
    from saetools.models import load_model

    if threads:
        torch.set_num_threads(threads)
    lm = load_model("default")
    ps = probes.load("em-core")
    items = tuple(it for _ in range(copies) for it in ps.items)
    big = probes.ProbeSet(name="em-core-x", kind="pairs", items=items, sha256="-", path="-")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Memory, not speed, is measured here: an early site keeps the 10x run short.
    extract_diffmeans(lm.model, lm.tokenizer, big, MEMORY_SITE, progress=False)
    print(
        json.dumps(
            {
                "copies": copies,
                "pairs": len(items),
                "rss_after_load_mb": rss0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def speed(args):
    from saetools.capture import capture
    from saetools.models import default_model_dir, load_model

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model("default")
    model, tok = lm.model, lm.tokenizer
    exs = examples()
    bs = batches(tok, exs)
    n_tok = sum(int(b["attention_mask"].sum()) for b in bs)
    print(
        f"{len(exs)} examples, {n_tok} tokens, {len(bs)} batches of <= 16, site {SITE}, torch threads {torch.get_num_threads()}"
    )

    results: dict[str, float] = {}

    def hf_full():
        for b in bs:
            model(**b, use_cache=False)

    layers = model.model.layers

    def hf_truncated():
        model.model.layers = layers[: LAYER + 1]
        try:
            for b in bs:
                model.model(**b, use_cache=False)
        finally:
            model.model.layers = layers

    def saetools_capture():
        capture(model, tok, exs, SITE, batch_size=16, progress=False)

    def measure(name, fn):
        results[name] = best_time(fn, args.repeat)
        print(f"  {name}: {results[name]:.2f}s", flush=True)

    hf_full()  # warm-up
    measure("HF forward, whole model", hf_full)
    measure("HF forward, blocks 0-15 only", hf_truncated)
    measure("saetools capture (early stop)", saetools_capture)

    # transformer-lens on its own copy of the model (booting a bridge wraps the HF modules).
    from transformer_lens.model_bridge import TransformerBridge

    lm_tl = load_model("default")
    bridge = TransformerBridge.boot_transformers(
        str(default_model_dir()), hf_model=lm_tl.model, tokenizer=tok, device="cpu"
    )

    def tl_cache(stop=None):
        def f():
            for b in bs:
                bridge.run_with_cache(
                    b["input_ids"],
                    names_filter=[SITE],
                    attention_mask=b["attention_mask"],
                    stop_at_layer=stop,
                )

        return f

    try:
        measure("TL run_with_cache, names filter", tl_cache())
        measure("TL run_with_cache, stop_at_layer=16", tl_cache(LAYER + 1))
    except Exception as e:  # report, do not hide: the table says the peer failed
        print(f"  transformer-lens failed: {type(e).__name__}: {e}")

    base = results["HF forward, whole model"]
    mine = results["saetools capture (early stop)"]
    print(f"\n{'method':<40} {'seconds':>8} {'tokens/s':>9} {'saetools time / this':>21}")
    for name, sec in results.items():
        print(f"{name:<40} {sec:8.2f} {n_tok / sec:9.0f} {mine / sec:21.2f}")
    print(f"\nratio saetools / whole-model forward: {mine / base:.3f}  (target <= 0.55)")
    print(
        f"ratio saetools / truncated forward:   {mine / results['HF forward, blocks 0-15 only']:.3f}  (target <= 1.10)"
    )

    peers = {}
    if not args.skip_peers:
        for tool in ("steering-vectors", "repeng"):
            r = run_peer(tool, torch.get_num_threads())
            if r is None:
                print(f"{tool}: not measured (run `bash benchmarks/peers/setup_venv.sh` first)")
                continue
            peers[tool] = r
            print(
                f"{tool:<17} trains on {r['n_pairs']} pairs in {r['seconds']:.2f}s ({r['tokens_per_s']:.0f} tokens/s); "
                f"saetools tokens/s / {tool} tokens/s = {(n_tok / mine) / r['tokens_per_s']:.2f}"
            )

    return results, peers, n_tok


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-speed", action="store_true", help="only the memory measurement")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for every measured tool (default: torch's); on a busy machine use 1",
    )
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.threads)
        return

    results: dict[str, float] = {}
    peers: dict = {}
    n_tok = 0
    if not args.skip_speed:
        results, peers, n_tok = speed(args)

    memory = []
    if not args.skip_memory:
        for copies in (1, 10):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    str(copies),
                    "--threads",
                    str(torch.get_num_threads()),
                ],
                capture_output=True,
                text=True,
                env=dict(os.environ),
            )
            if proc.returncode != 0:
                print(proc.stderr[-2000:])
                continue
            memory.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if len(memory) == 2:
            r = memory[1]["peak_rss_mb"] / memory[0]["peak_rss_mb"]
            print(
                f"peak RSS: {memory[0]['pairs']} pairs {memory[0]['peak_rss_mb']:.0f} MB, {memory[1]['pairs']} pairs "
                f"{memory[1]['peak_rss_mb']:.0f} MB, ratio {r:.3f} (target <= 1.2)"
            )

    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"tokens": n_tok, "seconds": results, "peers": peers, "memory": memory}, indent=2
            )
        )


if __name__ == "__main__":
    main()
