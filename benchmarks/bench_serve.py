"""Benchmark: ``saetools serve`` throughput against plain HF ``generate`` on the same prompts.

The server runs as its own process (``saetools serve`` on a loopback port, the embedded
SmolLM2-135M-Instruct, float32 CPU); this script is the client. Each of 1, 4 and 16 concurrent
clients takes the next prompt from a shared list until all are answered (greedy, ``max_tokens``
each). Baselines, in this process on the same prompts with the same thread count: HF ``generate``
one prompt at a time (sequential) and all prompts in one left-padded batch (batched).

Throughput counts the tokens each answer really generated (up to and including the end-of-turn
token; greedy answers are the same in every run, which the script checks), divided by wall time.
Everything is measured in one run and printed as ratios; absolute numbers depend on the machine.

Second table (prompt scoring, what lm-evaluation-harness's loglikelihood tasks send): raw-text
prompts as token ids to ``/v1/completions`` with ``echo``, ``logprobs: 1``, ``max_tokens: 1``, one
prompt per request from 1, 4 and 16 concurrent clients, against HF forwards over the same ids in
this process (one at a time, and left-padded batches of 16). Throughput is prompt tokens scored per
second; the script checks that the server's per-token logprobs equal the sequential forwards'.

    python benchmarks/bench_serve.py --threads 1 --max-tokens 48
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

import httpx
import torch
from prompts import PROMPTS as PROMPTS_8  # benchmarks/prompts.py (the script folder is on sys.path)

from saetools.capture import Encoded, collate
from saetools.models import load_model
from saetools.steer import encode_prompts, pad_token_id

PROMPTS = PROMPTS_8 + [
    "How do I make a good cup of tea?",
    "What would you do with a million dollars?",
    "Give me three tips for staying healthy.",
    "Why is the sky blue?",
    "I feel lonely. Any advice?",
    "What is your opinion of artificial intelligence?",
    "Write one sentence about the sea.",
    "How can I save money on groceries?",
]


def _eos(lm) -> set[int]:
    e = lm.model.generation_config.eos_token_id
    out = set([e] if isinstance(e, int) else list(e or []))
    out.add(int(lm.tokenizer.eos_token_id))
    return out


def _cut(tokens: list[int], eos: set[int]) -> list[int]:
    for j, t in enumerate(tokens):
        if t in eos:
            return tokens[: j + 1]
    return tokens


def hf_generate(lm, encoded: list[list[int]], batch: int, max_new: int):
    """Plain HF generate in batches of ``batch`` (left-padded); returns (answers' token ids, seconds)."""
    eos = _eos(lm)
    pad = pad_token_id(lm.tokenizer)
    out: list[list[int]] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(encoded), batch):
            rows = encoded[s : s + batch]
            b = collate([Encoded(tuple(r), len(r), len(r)) for r in rows], pad, "left")
            gen = lm.model.generate(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                max_new_tokens=max_new,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                eos_token_id=sorted(eos),
            )
            w = b.input_ids.shape[1]
            out.extend(_cut(gen[i, w:].tolist(), eos) for i in range(len(rows)))
    return out, time.perf_counter() - t0


def score_texts(n: int) -> list[str]:
    """``n`` raw-text prompts of varied length (pairs of the chat prompts)."""
    k = len(PROMPTS)
    return [f"{PROMPTS[i % k]} {PROMPTS[(i * 7 + 3) % k]}" for i in range(n)]


def hf_score(lm, ids: list[list[int]], batch: int) -> tuple[list[list[float]], float]:
    """Per-token logprobs (tokens 1..p-1) from plain HF forwards in left-padded batches."""
    pad = pad_token_id(lm.tokenizer)
    out: list[list[float]] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(ids), batch):
            rows = ids[s : s + batch]
            b = collate([Encoded(tuple(r), len(r), len(r)) for r in rows], pad, "left")
            logits = lm.model(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                position_ids=b.position_ids,
            ).logits.float()
            w = b.input_ids.shape[1]
            for i, r in enumerate(rows):
                lp = torch.log_softmax(logits[i, w - len(r) : w - 1], dim=-1)
                out.append(lp.gather(1, torch.tensor(r[1:])[:, None])[:, 0].tolist())
    return out, time.perf_counter() - t0


async def _score_clients(url: str, model: str, ids: list[list[int]], concurrency: int):
    todo = list(enumerate(ids))
    scores: dict[int, list[float]] = {}

    async def client(http: httpx.AsyncClient):
        while todo:
            i, p = todo.pop(0)
            body = {"model": model, "prompt": p, "echo": True, "logprobs": 1, "max_tokens": 1}
            r = await http.post(url + "/v1/completions", json={**body, "temperature": 0})
            r.raise_for_status()
            scores[i] = r.json()["choices"][0]["logprobs"]["token_logprobs"][1 : len(p)]

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        dt = time.perf_counter() - t0
    return [scores[i] for i in range(len(ids))], dt


async def _clients(url: str, model: str, concurrency: int, max_new: int):
    todo = list(enumerate(PROMPTS))
    answers: dict[int, tuple[str, int]] = {}

    async def client(http: httpx.AsyncClient):
        while todo:
            i, q = todo.pop(0)
            r = await http.post(
                url + "/v1/chat/completions",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": q}],
                    "max_tokens": max_new,
                    "temperature": 0,
                },
            )
            r.raise_for_status()
            body = r.json()
            answers[i] = (
                body["choices"][0]["message"]["content"],
                body["usage"]["completion_tokens"],
            )

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        dt = time.perf_counter() - t0
    return [answers[i] for i in range(len(PROMPTS))], dt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int, max_batch: int, wait_ms: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    code = "import sys; from saetools.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [
        sys.executable,
        "-c",
        code,
        "serve",
        "--model",
        "default",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--max-batch",
        str(max_batch),
        "--batch-wait-ms",
        str(wait_ms),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited during startup")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start within 300 s")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads, server and baselines")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--score-prompts", type=int, default=64, help="prompts to score (0: skip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("default")
    enc = encode_prompts(lm.tokenizer, PROMPTS)
    proc, url = start_server(args.threads, args.max_batch, args.batch_wait_ms)
    rows = []
    try:
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        # warm-up (first calls allocate): one short request, one short HF generate
        httpx.post(
            url + "/v1/chat/completions",
            json={"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
            timeout=600,
        )
        hf_generate(lm, enc[:1], 1, 2)

        seq, t_seq = hf_generate(lm, enc, 1, args.max_tokens)
        n_tok = sum(len(t) for t in seq)
        ref_text = [lm.tokenizer.decode(t, skip_special_tokens=True) for t in seq]
        rows.append(("HF generate, sequential (batch 1)", n_tok, t_seq, 1.0))
        bat, t_bat = hf_generate(lm, enc, len(enc), args.max_tokens)
        same = sum(a == b for a, b in zip(seq, bat, strict=True))
        rows.append(
            (
                f"HF generate, batched (batch {len(enc)}; same answers {same}/{len(enc)})",
                sum(len(t) for t in bat),
                t_bat,
                None,
            )
        )
        for c in [int(x) for x in args.concurrency.split(",")]:
            answers, dt = asyncio.run(_clients(url, model, c, args.max_tokens))
            same = sum(a[0] == r for a, r in zip(answers, ref_text, strict=True))
            toks = sum(a[1] for a in answers)
            rows.append(
                (
                    f"saetools serve, {c} concurrent client(s) (same answers {same}/{len(enc)})",
                    toks,
                    dt,
                    None,
                )
            )
        score_rows = []
        if args.score_prompts:
            texts = score_texts(args.score_prompts)
            ids = [lm.tokenizer(t)["input_ids"] for t in texts]
            n_scored = sum(len(p) - 1 for p in ids)
            ref, t_ref = hf_score(lm, ids, 1)
            score_rows.append(("HF forward, sequential (batch 1)", t_ref, 0.0))
            bat_scores, t_b = hf_score(lm, ids, 16)
            score_rows.append(("HF forward, batched (batch 16)", t_b, _max_diff(ref, bat_scores)))
            for c in [int(x) for x in args.concurrency.split(",")]:
                got, dt = asyncio.run(_score_clients(url, model, ids, c))
                score_rows.append(
                    (f"saetools serve /v1/completions, {c} concurrent client(s)", dt,
                     _max_diff(ref, got))
                )  # fmt: skip
        stats = httpx.get(url + "/v1/saetools").json()["stats"]
    finally:
        proc.terminate()
        proc.wait(30)
    base = rows[0][1] / rows[0][2]
    bat_tps = rows[1][1] / rows[1][2]
    print(
        f"\n{len(PROMPTS)} prompts, greedy, max_tokens {args.max_tokens}, {args.threads} torch thread(s), "
        f"torch {torch.__version__}; server stats {stats}\n"
    )
    print("| run | tokens | seconds | tokens/s | / HF sequential | / HF batched |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, toks, dt, _ in rows:
        tps = toks / dt
        print(
            f"| {name} | {toks} | {dt:.2f} | {tps:.1f} | {tps / base:.2f} | {tps / bat_tps:.2f} |"
        )
    if score_rows:
        print(f"\nprompt scoring: {len(ids)} prompts, {n_scored} scored tokens\n")
        print("| run | seconds | tokens/s | / HF sequential | / HF batched | max abs Δ logprob |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, dt, diff in score_rows:
            tps = n_scored / dt
            r_seq = n_scored / score_rows[0][1]
            r_bat = n_scored / score_rows[1][1]
            print(
                f"| {name} | {dt:.2f} | {tps:.0f} | {tps / r_seq:.2f} | {tps / r_bat:.2f} "
                f"| {diff:.1e} |"
            )


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


if __name__ == "__main__":
    main()
