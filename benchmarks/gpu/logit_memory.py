"""Peak memory and time of one LoRA training step per regularizer, full logits against chunked.

A random-weight Qwen2-shaped model (``--d-model``, ``--layers``, ``--vocab``) takes one LoRA
(rank 8, attention and MLP projections) step on a batch of ``--batch`` x ``--tokens`` random tokens
with the loss on every position after the first ``--prompt`` ones. Each (configuration,
``logit_chunk``) runs in a fresh subprocess so that its peak belongs to it alone:

* CPU: peak resident memory (``ru_maxrss``) minus the resident memory just before the step (model,
  batch and regularizer built, nothing run), so the figure is what the step itself added;
* CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated memory before the step.

Time: the median of ``--steps`` steps after one warm-up step (trust it on a quiet machine only).

``--chunk-time``: the chunked logit terms alone (task cross-entropy and one KL target, forward and
backward, from random hidden states ``[batch x tokens, d]`` and a random head), every chunk size
in turn in one process, ``--steps`` rounds interleaved so that machine load hits every size alike;
the median per size. The rest of a training step does not depend on the chunk size.

    python benchmarks/gpu/logit_memory.py --vocab 151936 --batch 4 --tokens 512 \\
        --configs plain,kl,directional-kl --chunks none,1024
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

ROOT = Path(__file__).resolve().parents[2]


def _rss_now_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def build(args, device: str):
    """(peft model, direction set, batch) for the step."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    from saetools.directions import DirectionSet
    from saetools.train import lora_config

    torch.manual_seed(0)
    heads = max(1, args.d_model // 64)
    cfg = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        intermediate_size=args.d_model * 4,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max(2048, args.tokens),
        tie_word_embeddings=args.tie,
    )
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(model, lora_config(8, None, model))
    g = torch.Generator().manual_seed(1)
    ds = DirectionSet(
        {
            f"blocks.{k}.hook_resid_post": torch.randn(args.d_model, generator=g)
            for k in range(args.layers)
        }
    )
    ids = torch.randint(10, args.vocab - 10, (args.batch, args.tokens), generator=g)
    labels = ids.clone()
    labels[:, : args.prompt] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return model, ds, {k: v.to(device) for k, v in batch.items()}


def terms_for(name: str, ds):
    from saetools.regularize import KL, LDIFS, Ablate, DirectionalKL, DirectionalL2, Steer

    return {
        "plain": [],
        "kl": [KL(weight=1.0)],
        "directional-kl": [DirectionalKL(ds, "all", weight=1.0)],
        "directional-l2": [DirectionalL2(ds, "all", weight=1.0)],
        "ldifs": [LDIFS(weight=1.0)],
        "steer": [Steer(ds, "all", alpha=1.0)],
        "ablate": [Ablate(ds, "all")],
    }[name]


def child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from saetools.regularize import RegularizedLoss

    device = args.device
    model, ds, batch = build(args, device)
    chunk = None if args.chunk == "none" else int(args.chunk)
    reg = RegularizedLoss(model, terms_for(args.child, ds), logit_chunk=chunk)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_now_kb() * 1024
    times = []
    for _ in range(1 + args.steps):
        t0 = time.perf_counter()
        out = reg(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        del out
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "config": args.child,
        "chunk": args.chunk,
        "peak_mb": peak / 2**20,
        "seconds": statistics.median(times[1:]) if len(times) > 1 else times[0],
        "all": times,
    }


def chunk_time(args) -> dict[str, float]:
    """Median seconds of :func:`chunked_logit_sums` forward + backward per chunk size."""
    import torch

    from saetools.regularize.penalties import HeadRows, chunked_logit_sums

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n = args.batch * (args.tokens - args.prompt)
    head = torch.nn.Linear(args.d_model, args.vocab, bias=False).to(args.device)
    for p in head.parameters():
        p.requires_grad_(False)
    h = torch.randn(n, args.d_model, generator=g).to(args.device)
    h0 = torch.randn(n, args.d_model, generator=g).to(args.device)
    labels = torch.randint(0, args.vocab, (n,), generator=g).to(args.device)
    chunks = [int(c) for c in args.chunks.split(",") if c != "none"]
    times: dict[int, list[float]] = {c: [] for c in chunks}
    for r in range(args.steps + 1):
        for c in chunks:
            x = h.clone().requires_grad_(True)
            t0 = time.perf_counter()
            sums = chunked_logit_sums(HeadRows(x, head), [HeadRows(h0, head, True)], labels, c)
            sums.sum().backward()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if r > 0:
                times[c].append(time.perf_counter() - t0)
        if r > 0:
            print(f"  round {r}: " + ", ".join(f"{c}: {times[c][-1]:.2f}s" for c in chunks))
    return {str(c): statistics.median(v) for c, v in times.items()}


def run_one(args, config: str, chunk: str) -> dict | None:
    cmd = [sys.executable, __file__, "--child", config, "--chunk", chunk]
    for k in ("vocab", "d_model", "layers", "batch", "tokens", "prompt", "steps", "threads"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    cmd += ["--device", args.device, "--dtype", args.dtype] + (["--tie"] if args.tie else [])
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(f"{config} chunk {chunk}: failed (rc {proc.returncode})\n{proc.stderr[-1500:]}")
        return None
    return json.loads(line[0][7:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=1, help="positions without loss at the start")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tie", action="store_true", help="tie the LM head to the embeddings")
    ap.add_argument("--configs", default="plain,kl,directional-kl")
    ap.add_argument("--chunks", default="none,1024", help="logit_chunk values ('none': full)")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--json", default=None)
    ap.add_argument("--chunk-time", action="store_true", help="time the chunk sizes only")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--chunk", default="none", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    if args.chunk_time:
        med = chunk_time(args)
        best = min(med.values())
        print(f"\nvocab {args.vocab}, d {args.d_model}, {args.batch} x {args.tokens} tokens")
        print("| logit_chunk | s (fwd + bwd) | x fastest |\n|---:|---:|---:|")
        for c, v in med.items():
            print(f"| {c} | {v:.3f} | {v / best:.2f} |")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "median_s": med}, indent=2))
        return 0
    rows = []
    for config in args.configs.split(","):
        for chunk in args.chunks.split(","):
            r = run_one(args, config, chunk)
            if r is not None:
                rows.append(r)
                print(
                    f"  {config:16s} chunk {chunk:>5s}: peak +{r['peak_mb']:8.0f} MB, "
                    f"{r['seconds']:.2f} s/step",
                    flush=True,
                )
    print(
        f"\nvocab {args.vocab}, d_model {args.d_model}, {args.layers} layers, batch {args.batch} x "
        f"{args.tokens} tokens, {args.dtype} on {args.device}"
    )
    print("| config | logit_chunk | peak MB (step) | s/step |")
    print("|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['chunk']} | {r['peak_mb']:.0f} | {r['seconds']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
