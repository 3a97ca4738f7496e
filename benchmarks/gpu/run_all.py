"""Every benchmark row of issue 12 in one process: random-weight Qwen2.5-shaped models, each row a
ratio against its baseline measured in the same run.

Rows (per model shape unless noted):

* ``capture``: saetools ``capture`` of one mid site (early stop after it, response-mean reduction)
  over em-core chats, tokens/s against a bare forward of the base model truncated after that block
  (goal >= 0.95) and against the whole forward with the LM head;
* ``generate``: steered (``add`` at the mid site) against unsteered ``saetools.steer.generate``,
  ``--new-tokens`` greedy tokens at batch 1 and 32 (goal >= 0.97); then HF's static KV cache with
  the steering hook on (does it run, same tokens, speed against the dynamic cache) and, with
  ``--compile``, ``torch.compile`` of the forward with the hook;
* ``train``: one LoRA step (rank 8, attention and MLP projections, AdamW) on ``--batch`` x
  ``--tokens`` random tokens per regularizer: seconds and peak memory against a plain step and
  against ``kl`` (goal: directional KL <= 1.15x ``kl`` in both); a full fine-tune step (plain and
  ``kl``) at the smallest shape;
* ``kl-memory``: at vocabulary 151,936 (Qwen2.5's), ``plain``/``kl``/``directional-kl`` steps with
  full logits (``logit_chunk=None``) against chunked (``--chunk``);
* ``serve``: the serve engine (saetools' continuous batching, what ``saetools serve`` runs) at 1,
  16 and 64 concurrent clients against HF batched ``generate`` of the same prompts.

Time: the best of ``--repeat`` runs (generation, capture) or the median of ``--steps`` steps after
a warm-up (training). Peak memory (CUDA): ``max_memory_allocated`` during the step minus what was
allocated before it; on the CPU peak memory is not measured here (see logit_memory.py).

On the H200 (see docs/performance.md, "GPU"): ``python benchmarks/gpu/run_all.py --json
$OUT/gpu.json`` with ``--tokenizer`` a folder holding the embedded model's tokenizer files (the
weights are not needed). ``--tiny``: the same code on tiny shapes, float32 on the CPU, in a few
minutes: ``python benchmarks/gpu/run_all.py --tiny``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import probes  # noqa: E402
from saetools.capture import capture, collate, encode_chat, pad_token_id, pair_examples  # noqa: E402
from saetools.directions import DirectionSet  # noqa: E402
from saetools.regularize import (  # noqa: E402
    KL,
    LDIFS,
    Ablate,
    DirectionalKL,
    DirectionalL2,
    RegularizedLoss,
    Steer,
)
from saetools.steer import Intervention, encode_prompts, generate, steer  # noqa: E402

# Qwen2.5 shapes (hidden, layers, heads, kv heads, intermediate), from their config.json
SHAPES = {
    "0.5B": (896, 24, 14, 2, 4864),
    "1.5B": (1536, 28, 12, 2, 8960),
    "7B": (3584, 28, 28, 4, 18944),
    "tiny": (64, 4, 4, 2, 128),
    "tiny2": (96, 4, 4, 2, 192),
}
QWEN_VOCAB = 151936
REGULARIZERS = ("plain", "kl", "directional-kl", "directional-l2", "ldifs", "steer", "ablate")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_model(shape: str, vocab: int, device: str, dtype: torch.dtype):
    """A random-weight Qwen2 causal LM of ``shape``, built on ``device`` (no weights travel)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    d, n, h, kv, inter = SHAPES[shape]
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=n,
        num_attention_heads=h,
        num_key_value_heads=kv,
        intermediate_size=inter,
        max_position_embeddings=4096,
        tie_word_embeddings=shape in ("0.5B", "1.5B"),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def mid_site(model) -> tuple[int, str]:
    k = model.config.num_hidden_layers // 2
    return k, f"blocks.{k}.hook_resid_post"


# ---------------------------------------------------------------- capture


def bench_capture(model, tok, examples, args) -> dict:
    """Capture of the mid site against a truncated and a whole forward over the same batches."""
    k, site = mid_site(model)
    enc = [encode_chat(tok, ex) for ex in examples]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i].input_ids))
    pad = pad_token_id(tok)
    batches = [
        collate([enc[i] for i in order[s : s + args.capture_batch]], pad, "right", args.device)
        for s in range(0, len(order), args.capture_batch)
    ]
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)
    inner = model.model
    layers = inner.layers

    def truncated():
        inner.layers = layers[: k + 1]
        try:
            with torch.no_grad():
                for b in batches:
                    inner(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
        finally:
            inner.layers = layers

    def whole():
        with torch.no_grad():
            for b in batches:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def ours():
        capture(model, tok, examples, [site], batch_size=args.capture_batch, progress=False)

    t = {name: best_time(fn, args) for name, fn in (("truncated", truncated), ("whole", whole),
                                                    ("capture", ours))}  # fmt: skip
    return {
        "site": site,
        "tokens": n_tokens,
        "tokens_per_s": {n: n_tokens / v for n, v in t.items()},
        "capture_vs_truncated": t["truncated"] / t["capture"],
        "capture_vs_whole": t["whole"] / t["capture"],
    }


def best_time(fn, args) -> float:
    fn()  # warm-up
    sync(args.device)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fn()
        sync(args.device)
        times.append(time.perf_counter() - t0)
    return min(times)


# ---------------------------------------------------------------- generation


def bench_generate(model, tok, questions, args) -> dict:
    """Steered against unsteered greedy generation at batch 1 and 32; static cache and compile."""
    _, site = mid_site(model)
    g = torch.Generator().manual_seed(3)
    iv = Intervention(site, torch.randn(model.config.hidden_size, generator=g), "add", alpha=4.0)
    out: dict = {}
    for bs in args.gen_batches:
        qs = (questions * bs)[:bs]

        def run(ivs, qs=qs, bs=bs):
            return generate(model, tok, qs, ivs, max_new_tokens=args.new_tokens,
                            min_new_tokens=args.new_tokens, batch_size=bs)  # fmt: skip

        plain = best_time(lambda run=run: run(()), args)
        steered = best_time(lambda run=run: run([iv]), args)
        out[f"batch{bs}"] = {
            "tokens_per_s_unsteered": bs * args.new_tokens / plain,
            "tokens_per_s_steered": bs * args.new_tokens / steered,
            "steered_vs_unsteered": plain / steered,
        }
    out["static_cache"] = static_cache(model, tok, questions[0], iv, args)
    return out


def _hf_generate(model, ids, args, **kw):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                              do_sample=False, pad_token_id=model.config.pad_token_id, **kw)  # fmt: skip


def static_cache(model, tok, question, iv, args) -> dict:
    """HF ``generate`` with ``cache_implementation="static"`` (and, with ``--compile``,
    ``torch.compile`` of the forward) with the steering hook on: does it run, does it give the
    dynamic cache's tokens, how fast against the dynamic cache."""
    ids = torch.tensor([encode_prompts(tok, [question])[0]], device=args.device)
    kw = {"cache_implementation": "static"}
    res: dict = {}
    with steer(model, [iv]):
        ref = _hf_generate(model, ids, args)
        dyn = best_time(lambda: _hf_generate(model, ids, args), args)
        res["dynamic_s"] = dyn
        for name in ("static", "static+compile") if args.compile else ("static",):
            try:
                if name == "static+compile":
                    model.forward = torch.compile(model.forward, mode="reduce-overhead")
                toks = _hf_generate(model, ids, args, **kw)
                s = best_time(lambda: _hf_generate(model, ids, args, **kw), args)
                res[name] = {"runs": True, "same_tokens": bool(torch.equal(toks, ref)),
                             "speedup_vs_dynamic": dyn / s}  # fmt: skip
            except Exception as e:  # report what fails, keep benchmarking
                res[name] = {"runs": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            finally:
                if "forward" in model.__dict__:
                    del model.forward
    return res


# ---------------------------------------------------------------- training


def make_batch(vocab: int, args) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, vocab - 10, (args.batch, args.tokens), generator=g)
    labels = ids.clone()
    labels[:, : args.tokens // 4] = -100
    return {k: v.to(args.device) for k, v in
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}.items()}  # fmt: skip


def terms_for(name: str, ds) -> list:
    return {
        "plain": [],
        "kl": [KL()],
        "directional-kl": [DirectionalKL(ds, "all")],
        "directional-l2": [DirectionalL2(ds, "all")],
        "ldifs": [LDIFS()],
        "steer": [Steer(ds, "all", alpha=1.0)],
        "ablate": [Ablate(ds, "all")],
    }[name]


def time_step(model, terms, batch, args, chunk="default", reference=None) -> dict:
    """Median seconds of a training step and its peak memory above what was allocated before
    (``chunk``: ``logit_chunk``, None for full logits, "default" for RegularizedLoss's own)."""
    kw = {} if chunk == "default" else {"logit_chunk": chunk}
    reg = RegularizedLoss(model, terms, reference=reference, **kw)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    cuda = args.device.startswith("cuda")
    free(args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(1 + args.steps):
        t0 = time.perf_counter()
        out = reg(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(args.device)
        times.append(time.perf_counter() - t0)
        del out
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    del opt, reg
    free(args.device)
    return {"seconds": statistics.median(times[1:]), "peak_mb": peak}


def bench_train(model, args, configs=REGULARIZERS, chunks=("default",)) -> dict:
    """One LoRA step per (regularizer, logit_chunk), ratios against plain and kl."""
    from peft import get_peft_model

    from saetools.train import lora_config

    for p in model.parameters():
        p.requires_grad_(False)
    pm = get_peft_model(model, lora_config(8, None, model))
    pm.train()
    d, n = model.config.hidden_size, model.config.num_hidden_layers
    g = torch.Generator().manual_seed(2)
    ds = DirectionSet(
        {f"blocks.{k}.hook_resid_post": torch.randn(d, generator=g) for k in range(n)}
    )
    batch = make_batch(model.config.vocab_size, args)
    rows = {}
    try:
        for chunk in chunks:
            for name in configs:
                label = "full-logits" if chunk is None else f"chunk{chunk}"
                key = name if len(chunks) == 1 else f"{name}@{label}"
                try:
                    rows[key] = time_step(pm, terms_for(name, ds), batch, args, chunk)
                except torch.OutOfMemoryError as e:
                    rows[key] = {"error": f"OutOfMemoryError: {str(e)[:200]}"}
                    free(args.device)
                print(f"    {key}: {rows[key]}", flush=True)
    finally:
        pm.unload()  # the base model again, without LoRA layers
    add_ratios(rows)
    return rows


def add_ratios(rows: dict) -> None:
    for key, r in rows.items():
        suffix = key[key.index("@") :] if "@" in key else ""
        for base in ("plain", "kl"):
            b = rows.get(base + suffix, {})
            if "seconds" in r and "seconds" in b:
                r[f"time_x_{base}"] = r["seconds"] / b["seconds"]
                if r["peak_mb"] and b["peak_mb"]:
                    r[f"memory_x_{base}"] = r["peak_mb"] / b["peak_mb"]


def bench_full_finetune(model, args) -> dict:
    """A full fine-tune step (every weight trained, θ0 a frozen copy for kl) at this shape."""
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    batch = make_batch(model.config.vocab_size, args)
    rows = {"plain": time_step(model, [], batch, args)}
    ref = copy.deepcopy(model).requires_grad_(False).eval()
    rows["kl"] = time_step(model, [KL()], batch, args, reference=ref)
    del ref
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    add_ratios(rows)
    return rows


# ---------------------------------------------------------------- serving


def serve_once(engine, prompts: list[list[int]], args) -> tuple[int, float]:
    """All ``prompts`` submitted at once, as concurrent clients: (completion tokens, seconds)."""
    from saetools.serve.protocol import SamplingParams

    n = len(prompts)
    counts, errors, done, lock = [0] * n, [], threading.Event(), threading.Lock()
    finished = [0]

    def sink(ev, i):  # called from the engine's worker thread: record, never block
        if ev[0] not in ("finish", "error"):
            return
        with lock:
            if ev[0] == "finish":
                counts[i] = ev[3]
            else:
                errors.append(str(ev[2]))
            finished[0] += 1
            if finished[0] == n:
                done.set()

    params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0)
    t0 = time.perf_counter()
    for i, ids in enumerate(prompts):
        engine.submit(ids, params, sink=lambda ev, i=i: sink(ev, i))
    if not done.wait(timeout=600) or errors:
        raise RuntimeError(f"serve engine: {len(errors)} errors {errors[:2]}")
    return sum(counts), time.perf_counter() - t0


def bench_serve(model, tok, questions, args) -> dict:
    """The serve engine at N concurrent clients against HF batched generate of the same prompts."""
    from saetools.serve import Engine

    out = {}
    engine = Engine(model, tok, max_batch=max(args.clients), batch_wait_ms=5).start()
    try:
        for n in args.clients:
            prompts = [encode_prompts(tok, [questions[i % len(questions)]])[0] for i in range(n)]
            runs = [serve_once(engine, prompts, args) for _ in range(1 + args.repeat)][1:]
            tokens, served = min(runs, key=lambda r: r[1])
            hf = best_time(lambda qs=questions, n=n: hf_batched(model, tok, qs, n, args), args)
            row = {
                "engine_tokens_per_s": tokens / served,
                "hf_tokens_per_s": n * args.new_tokens / hf,
                "completion_tokens": tokens,
            }
            row["engine_vs_hf"] = row["engine_tokens_per_s"] / row["hf_tokens_per_s"]
            out[f"clients{n}"] = row
            print(f"    serve {n} clients: {row}", flush=True)
    finally:
        engine.close()
    return out


def hf_batched(model, tok, questions, n, args):
    ids = [encode_prompts(tok, [questions[i % len(questions)]])[0] for i in range(n)]
    width = max(map(len, ids))
    pad = model.config.pad_token_id
    x = torch.tensor([[pad] * (width - len(r)) + r for r in ids], device=args.device)
    attn = (torch.arange(width, device=args.device)[None] >= torch.tensor(
        [width - len(r) for r in ids], device=args.device)[:, None]).long()  # fmt: skip
    return _hf_generate(model, x, args, attention_mask=attn)


# ---------------------------------------------------------------- driver


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, float32 on the CPU")
    ap.add_argument("--shapes", default="0.5B,1.5B,7B")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 (float32 with --tiny)")
    ap.add_argument("--tokenizer", default=None, help="a folder with the embedded tokenizer")
    ap.add_argument("--rows", default="capture,generate,train,kl-memory,serve,full")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=1024, help="logit_chunk of the chunked rows")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--capture-batch", type=int, default=32)
    ap.add_argument("--compile", action="store_true", help="also torch.compile with the hook")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.tiny:
        args.shapes = "tiny" if args.shapes == "0.5B,1.5B,7B" else args.shapes
        args.batch, args.tokens, args.steps, args.repeat = 2, 64, 1, 1
        args.new_tokens, args.capture_batch = 8, 16
        args.gen_batches, args.clients = (1, 4), (1, 4, 8)
    else:
        args.gen_batches, args.clients = (1, 32), (1, 16, 64)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    return args


def load_tokenizer(path: str | None):
    from transformers import AutoTokenizer

    from saetools.models import default_model_dir

    tok = AutoTokenizer.from_pretrained(path or str(default_model_dir()))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def environment(args) -> dict:
    import transformers

    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
           "transformers": transformers.__version__, "python": platform.python_version(),
           "device": args.device, "dtype": args.dtype}  # fmt: skip
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env


def run_shape(shape: str, tok, pairs, questions, rows: set, args) -> dict:
    dtype = getattr(torch, args.dtype)
    res: dict = {}
    t0 = time.perf_counter()
    model = build_model(shape, 49152, args.device, dtype)
    steps = [
        ("capture", lambda: bench_capture(model, tok, pairs, args)),
        ("generate", lambda: bench_generate(model, tok, questions, args)),
        ("serve", lambda: bench_serve(model, tok, questions, args)),
        ("train", lambda: bench_train(model, args)),
        ("full", lambda: bench_full_finetune(model, args)),
    ]
    for name, fn in steps:
        if name not in rows or (name == "full" and shape not in ("0.5B", "tiny")):
            continue
        t = time.perf_counter()
        res[name] = fn()
        print(f"  {shape} {name}: {time.perf_counter() - t:.1f}s", flush=True)
    del model
    free(args.device)
    if "kl-memory" in rows:
        model = build_model(shape, QWEN_VOCAB, args.device, dtype)
        res["kl-memory"] = bench_train(model, args, ("plain", "kl", "directional-kl"),
                                       (None, args.chunk))  # fmt: skip
        del model
        free(args.device)
    res["seconds"] = time.perf_counter() - t0
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    tok = load_tokenizer(args.tokenizer)
    em = probes.load("em-core")
    al, mis = pair_examples(em.items)
    pairs = al + mis if not args.tiny else al[:16] + mis[:16]
    questions = [it.question for it in em.items[:64]]
    rows = set(args.rows.split(","))
    result = {"environment": environment(args), "args": {k: v for k, v in vars(args).items()
              if isinstance(v, (int, float, str, bool, tuple, type(None)))}, "shapes": {}}  # fmt: skip
    print(json.dumps(result["environment"]), flush=True)
    for shape in args.shapes.split(","):
        print(f"{shape}:", flush=True)
        result["shapes"][shape] = run_shape(shape, tok, pairs, questions, rows, args)
        if args.json:  # written after every shape, so a timeout keeps what finished
            Path(args.json).write_text(json.dumps(result, indent=2))
    result["seconds"] = time.perf_counter() - t0
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def report(result: dict) -> str:
    """Markdown tables of the ratios."""
    lines = [f"\n{json.dumps(result['environment'])}, {result['seconds']:.0f}s in all"]
    for shape, r in result["shapes"].items():
        lines.append(f"\n### {shape}")
        if "capture" in r:
            c = r["capture"]
            lines.append(f"capture {c['site']}: {c['capture_vs_truncated']:.3f}x truncated "
                         f"forward (goal >= 0.95), {c['capture_vs_whole']:.2f}x whole forward")  # fmt: skip
        for k, v in r.get("generate", {}).items():
            if k.startswith("batch"):
                lines.append(f"generate {k}: steered/unsteered {v['steered_vs_unsteered']:.3f} "
                             "(goal >= 0.97)")  # fmt: skip
        if "static_cache" in r.get("generate", {}):
            lines.append(f"static cache with hook: {json.dumps(r['generate']['static_cache'])}")
        for k, v in r.get("serve", {}).items():
            lines.append(f"serve {k}: engine/HF batched {v['engine_vs_hf']:.2f}")
        for table in ("train", "kl-memory", "full"):
            if table not in r:
                continue
            lines += [f"\n{table} | s/step | peak MB | time x plain | time x kl | mem x plain | "
                      "mem x kl", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
            for k, v in r[table].items():
                if "error" in v:
                    lines.append(f"| {k} | {v['error'][:60]} |||||")
                    continue
                cells = [f"{v.get(c, float('nan')):.2f}" for c in
                         ("time_x_plain", "time_x_kl", "memory_x_plain", "memory_x_kl")]  # fmt: skip
                peak = f"{v['peak_mb']:.0f}" if v["peak_mb"] is not None else "-"
                lines.append(f"| {k} | {v['seconds']:.3f} | {peak} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
