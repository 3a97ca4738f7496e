"""Benchmark: greedy generation of 128 new tokens on the embedded model, steered vs unsteered.

Compares, at batch 1 and batch 8 (left-padded chat prompts, KV cache on, every row forced to
128 new tokens):

* HF ``generate`` unsteered vs steered through saetools (``add`` of a unit vector at one site);
* steering through TransformerLens hooks on a ``TransformerBridge`` of the same weights
  (``bridge.generate`` with ``steer_tl``). With transformers 5 the bridge's own KV cache is inert
  (its attention reads ``past_key_values`` while transformers passes ``cache``), so the cached path
  sees one token per step and produces different tokens; the benchmark reports the correct
  cache-free path and, for information, the cached one with its token agreement.

Runs are interleaved and repeated (``--reps``); tokens/s is the median. Prints a markdown table.

    python benchmarks/bench_steer.py --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from prompts import PROMPTS  # benchmarks/prompts.py (the script folder is on sys.path)

from saetools.capture import Encoded, collate
from saetools.models import load_model
from saetools.steer import (
    Intervention,
    bridge_from_hf,
    encode_prompts,
    pad_token_id,
    steer,
    steer_tl,
)


def _batch(lm, n):
    enc = encode_prompts(lm.tokenizer, PROMPTS[:n])
    return collate(
        [Encoded(tuple(e), len(e), len(e)) for e in enc], pad_token_id(lm.tokenizer), "left"
    )


def hf_run(lm, b, new, ivs):
    with steer(lm.model, ivs), torch.no_grad():
        t = time.perf_counter()
        out = lm.model.generate(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad_token_id(lm.tokenizer),
        )
        dt = time.perf_counter() - t
    return out[:, b.input_ids.shape[1] :], dt


def tl_run(bridge, b, new, ivs, cache):
    with steer_tl(bridge, ivs), torch.no_grad():
        t = time.perf_counter()
        out = bridge.generate(
            b.input_ids,
            attention_mask=b.attention_mask,
            max_new_tokens=new,
            do_sample=False,
            stop_at_eos=False,
            use_past_kv_cache=cache,
            return_type="tokens",
            verbose=False,
        )
        dt = time.perf_counter() - t
    return out[:, b.input_ids.shape[1] :], dt


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--new", type=int, default=128, help="new tokens per row")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of the HF runs")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--site", default="blocks.9.hook_resid_post")
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--no-tl", action="store_true", help="skip the TransformerLens runs")
    ap.add_argument("--tl-reps", type=int, default=1)
    ap.add_argument(
        "--tl-nocache-batches",
        default="1",
        help="batch sizes for the (slow, quadratic) cache-free TransformerBridge run",
    )
    args = ap.parse_args()

    lm = load_model("default")
    g = torch.Generator().manual_seed(0)
    v = torch.randn(lm.d_model, generator=g)
    iv = [Intervention(args.site, v / v.norm(), "add", alpha=args.alpha)]
    bridge = None if args.no_tl else bridge_from_hf(lm.model, lm.tokenizer)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.new} new tokens, greedy, "
        f"add at {args.site} (alpha {args.alpha})"
    )
    rows = []
    for n in (int(x) for x in args.batches.split(",")):
        b = _batch(lm, n)
        hf_run(lm, _batch(lm, 1), 8, [])  # warm-up
        times = {"unsteered": [], "steered": []}
        outs = {}
        for _ in range(args.reps):
            for name, ivs in (("unsteered", []), ("steered", iv)):
                outs[name], dt = hf_run(lm, b, args.new, ivs)
                times[name].append(dt)
        tok = n * args.new
        tps = {k: tok / statistics.median(t) for k, t in times.items()}
        rows.append((n, "HF generate, unsteered", tps["unsteered"], 1.0, "-"))
        rows.append(
            (
                n,
                "HF generate, saetools steer (add, 1 site)",
                tps["steered"],
                tps["steered"] / tps["unsteered"],
                "-",
            )
        )
        if bridge is not None:
            for cache in (False, True):
                if not cache and str(n) not in args.tl_nocache_batches.split(","):
                    continue
                ts = []
                for _ in range(args.tl_reps):
                    out, dt = tl_run(bridge, b, args.new, iv, cache)
                    ts.append(dt)
                t_tps = tok / statistics.median(ts)
                agree = float((out == outs["steered"]).float().mean())
                label = f"TransformerBridge.generate + TL hooks, use_past_kv_cache={cache}"
                rows.append((n, label, t_tps, t_tps / tps["steered"], f"{agree:.0%}"))
        for r in rows[-4 if bridge is not None else -2 :]:
            print(
                f"  batch {r[0]}: {r[1]}: {r[2]:.1f} tok/s, ratio {r[3]:.3f}, tokens equal to HF steered: {r[4]}",
                flush=True,
            )
    print("\n| batch | run | tokens/s | ratio | same tokens as HF steered |")
    print("|---|---|---|---|---|")
    for n, name, t, ratio, agree in rows:
        ref = "vs unsteered" if "HF" in name else "vs saetools steered"
        print(f"| {n} | {name} | {t:.1f} | {ratio:.3f} ({ref}) | {agree} |")


if __name__ == "__main__":
    main()
