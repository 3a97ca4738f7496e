"""Measure the peer steering tools (steering-vectors, repeng) on the embedded model.

Run with the peers venv made by ``benchmarks/peers/setup_venv.sh`` (transformers < 5)::

    .bench/peers-venv/bin/python benchmarks/peers/peer_bench.py train \
        --tool steering-vectors --layer 9 --pairs 88 --json .bench/sv-train.json
    .bench/peers-venv/bin/python benchmarks/peers/peer_bench.py generate \
        --tool repeng --layer 9 --alpha 8 --batch 1,8 --new-tokens 128 --json .bench/rp-gen.json

Layer convention (the same as saetools'): ``--layer K`` means the *output of decoder block K*
(0-based), which is HF ``output_hidden_states`` entry ``hidden_states[K + 1]`` (entry 0 is the
embeddings). Each tool is mapped onto that:

- steering-vectors: ``layers=[K], layer_type="decoder_block"`` hooks the K-th matched decoder
  block (``model.model.layers[K]``) and reads/patches its output. No shift.
- repeng 0.4.0: ``ControlModel(model, [K])`` wraps ``model.model.layers[K]`` and adds the control
  to that block's output; ``ControlVector.train(..., hidden_layers=[K])`` reads
  ``hidden_states[K + 1]`` (``hidden_idx = layer + 1`` in ``repeng.extract.batched_get_hiddens``),
  i.e. also the output of block K. So repeng's layer id K == block K, no shift either, for
  K in 0..n_blocks-2. (Caveat: for the last block, HF's last hidden_states entry has the final
  norm applied, so repeng would read post-norm activations there while steering the pre-norm
  block output; avoid K = n_blocks - 1.) Older repeng releases indexed hidden_states directly
  with negative ids; this mapping holds for 0.4.0, which setup_venv.sh pins.

Training text: each em-core train pair becomes two chat-formatted strings, the tokenizer's chat
template applied to [user: question] with the generation prompt, followed by the answer (no
end-of-turn marker, so the last token is the answer's last token; both tools read the last token
by default). Positive = misaligned answer, negative = aligned answer, so +alpha steers toward the
misaligned side (saetools' sign).

Vector scale: steering-vectors' vector is a raw difference of means; repeng's is a unit PCA
component. ``generate`` rescales both to unit norm by default so that ``--alpha`` means the same as
in saetools (unit direction times alpha); ``--raw`` keeps each tool's own scale.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # repeng's progress bars

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # for ``probes`` (pure Python)

import probes  # noqa: E402

TOOLS = ("steering-vectors", "repeng")
DEFAULT_MODEL = ROOT / ".bench" / "smollm2-tf4"


# ----------------------------------------------------------------------------- helpers


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for p in ("torch", "transformers", "tokenizers", "steering-vectors", "repeng", "numpy"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    out["torch_threads"] = torch.get_num_threads()
    return out


def load_model(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").exists():
        sys.exit(f"peer_bench: no model at {model_dir}; run benchmarks/peers/setup_venv.sh first")
    tok = AutoTokenizer.from_pretrained(model_dir)
    # The converted folder's PreTrainedTokenizerFast also returns token_type_ids, which Llama does not
    # take (forward ignores them, generate refuses them): ask for what the model uses only.
    tok.model_input_names = ["input_ids", "attention_mask"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    n_blocks = model.config.num_hidden_layers
    return tok, model, n_blocks


def prompt_text(tok, question: str) -> str:
    return tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def training_strings(tok, n_pairs: int):
    """[(positive=misaligned, negative=aligned, prompt)] for the first n_pairs em-core train pairs."""
    items = probes.load("em-core").split("train").items
    if n_pairs > len(items):
        sys.exit(f"peer_bench: --pairs {n_pairs} > {len(items)} em-core train pairs")
    out = []
    for it in items[:n_pairs]:
        p = prompt_text(tok, it.question)
        out.append((p + it.misaligned, p + it.aligned, p))
    return out


def count_tokens(tok, texts: list[str]) -> int:
    return sum(len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"])


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def best_of(n: int, fn, what: str = "run"):
    """Run fn() n times; return (best seconds, result of the best run)."""
    best, res = math.inf, None
    for i in range(n):
        t0 = time.perf_counter()
        r = fn()
        dt = time.perf_counter() - t0
        log(f"{what} {i + 1}/{n}: {dt:.2f} s")
        if dt < best:
            best, res = dt, r
    return best, res


# ----------------------------------------------------------------------------- training


def train_vector(tool: str, model, tok, samples, layer: int, batch_size: int) -> torch.Tensor:
    """One training run of the tool; returns its vector for block `layer` (float32, CPU)."""
    if tool == "steering-vectors":
        from steering_vectors import train_steering_vector

        sv = train_steering_vector(
            model,
            tok,
            [(pos, neg) for pos, neg, _ in samples],
            layers=[layer],
            layer_type="decoder_block",
            batch_size=batch_size,
            show_progress=False,
        )
        return sv.layer_activations[layer].detach().float().cpu()
    if tool == "repeng":
        from repeng import ControlModel, ControlVector, DatasetEntry

        # repeng layer id K == output of block K (see module docstring).
        cm = model if isinstance(model, ControlModel) else ControlModel(model, [layer])
        try:
            cv = ControlVector.train(
                cm,
                tok,
                [DatasetEntry(positive=pos, negative=neg) for pos, neg, _ in samples],
                hidden_layers=[layer],
                batch_size=batch_size,
                method="pca_diff",
            )
        finally:
            if cm is not model:
                cm.unwrap()
        return torch.tensor(cv.directions[layer], dtype=torch.float32)
    raise ValueError(tool)


@torch.no_grad()
def reference_directions(
    model, tok, samples, n_blocks: int, sv_layer: int | None = None, batch_size: int = 8
):
    """Plain differences of means from HF hidden_states, for every hidden_states index.

    'last': the last token of each string (what both tools read by default).
    'answer_mean': the mean over the answer's tokens (saetools' default pooling).
    With sv_layer, also 'sv_answer_mean': the answer-mean difference of means read in the same
    forwards through steering-vectors' own hooks (record_activations) at decoder block sv_layer.
    """
    tok.padding_side = "right"
    rows = []  # (text, side, n_prompt)
    for pos, neg, prompt in samples:
        p_ids = tok(prompt)["input_ids"]
        for side, text in (("pos", pos), ("neg", neg)):
            assert tok(text)["input_ids"][: len(p_ids)] == p_ids, "prompt is not a token prefix"
            rows.append((text, side, len(p_ids)))
    sums = {k: {"pos": 0, "neg": 0} for k in ("last", "answer_mean", "sv_answer_mean")}
    for b0 in range(0, len(rows), batch_size):
        batch = rows[b0 : b0 + batch_size]
        enc = tok([r[0] for r in batch], return_tensors="pt", padding=True)
        if sv_layer is not None:
            from steering_vectors import record_activations

            with record_activations(model, "decoder_block", layer_nums=[sv_layer]) as rec:
                hs = model(**enc, output_hidden_states=True).hidden_states
            sv_h = rec[sv_layer][-1]
        else:
            hs = model(**enc, output_hidden_states=True).hidden_states
        h = torch.stack(hs, dim=1)  # (batch, n_blocks+1, seq, d)
        lengths = enc["attention_mask"].sum(1)
        for i, (_, side, n_prompt) in enumerate(batch):
            n = int(lengths[i])
            sums["last"][side] = sums["last"][side] + h[i, :, n - 1]
            sums["answer_mean"][side] = sums["answer_mean"][side] + h[i, :, n_prompt:n].mean(1)
            if sv_layer is not None:
                sums["sv_answer_mean"][side] = sums["sv_answer_mean"][side] + sv_h[
                    i, n_prompt:n
                ].mean(0)
    n = len(samples)
    out = {
        k: {i: (sums[k]["pos"][i] - sums[k]["neg"][i]) / n for i in range(n_blocks + 1)}
        for k in ("last", "answer_mean")
    }
    if sv_layer is not None:
        out["sv_answer_mean"] = (sums["sv_answer_mean"]["pos"] - sums["sv_answer_mean"]["neg"]) / n
    return out


@torch.no_grad()
def steer_mapping_check(
    tool: str, model, tok, text: str, layer: int, vec: torch.Tensor, alpha: float = 8.0
):
    """Max |logit difference| between the tool's steering at `layer` and a plain forward hook adding
    the same vector to the output of model.model.layers[j], for j = layer - 1, layer, layer + 1.
    Zero at j = layer (and only there) shows the tool steers the output of block `layer`."""
    enc = tok(text, return_tensors="pt")
    v = vec / vec.norm()
    model_, on = make_steerer(tool, model, layer, v, alpha)
    with on():
        steered = model_(**enc).logits
    if tool == "repeng":
        model_.unwrap()
    out = {}
    for j in (layer - 1, layer, layer + 1):

        def hook(_m, _i, o, v=v):
            if isinstance(o, tuple):
                return (o[0] + alpha * v,) + o[1:]
            return o + alpha * v

        h = model.model.layers[j].register_forward_hook(hook)
        try:
            ref = model(**enc).logits
        finally:
            h.remove()
        out[f"plain hook on block {j}"] = float((steered - ref).abs().max())
    return out


@torch.no_grad()
def repeng_read_check(model, tok, texts: list[str], layer: int) -> float:
    """Max |difference| between what repeng reads for layer id K and HF hidden_states[K + 1]."""
    from repeng.extract import batched_get_hiddens

    tok.padding_side = "right"
    got = batched_get_hiddens(model, tok, texts, [layer], batch_size=4)[layer]
    want = torch.stack(
        [
            model(**tok(t, return_tensors="pt"), output_hidden_states=True).hidden_states[
                layer + 1
            ][0, -1]
            for t in texts
        ]
    )
    return float((torch.tensor(got) - want).abs().max())


def cmd_train(args) -> dict:
    tok, model, n_blocks = load_model(args.model)
    if not 0 <= args.layer < n_blocks - 1:
        sys.exit(f"peer_bench: --layer must be in 0..{n_blocks - 2}")
    samples = training_strings(tok, args.pairs)
    texts = [s for pos, neg, _ in samples for s in (pos, neg)]
    tokens = count_tokens(tok, texts)
    K = args.layer

    seconds, vec = best_of(
        args.repeats,
        lambda: train_vector(args.tool, model, tok, samples, K, args.train_batch),
        f"{args.tool} training",
    )

    if args.skip_checks:
        return train_result(args, K, seconds, tokens, vec, None)
    t0 = time.perf_counter()
    ref = reference_directions(
        model, tok, samples, n_blocks, sv_layer=K if args.tool == "steering-vectors" else None
    )
    ref_seconds = time.perf_counter() - t0
    log(f"reference differences of means: {ref_seconds:.2f} s")
    checks = {
        "hidden_states_index_of_block_output": K + 1,
        "cos_vs_last_token_dom": {
            f"hidden_states[{i}]": round(cos(vec, ref["last"][i]), 6) for i in (K, K + 1, K + 2)
        },
        "cos_vs_answer_mean_dom": {
            f"hidden_states[{i}]": round(cos(vec, ref["answer_mean"][i]), 6)
            for i in (K, K + 1, K + 2)
        },
        "best_hidden_states_index_last_token": max(
            range(n_blocks + 1), key=lambda i: abs(cos(vec, ref["last"][i]))
        ),
        "vector_norm": float(vec.norm()),
        "dom_last_token_norm": float(ref["last"][K + 1].norm()),
        "reference_seconds": round(ref_seconds, 2),
    }
    if args.tool == "steering-vectors":
        # The tool's own reader (its hooks at decoder block K), pooled over the answer tokens like
        # saetools: must equal the answer-mean difference of means at hidden_states[K + 1].
        sv_dom = ref["sv_answer_mean"]
        checks["cos_answer_mean_dom_via_steering_vectors_hooks_vs_hf"] = {
            f"hidden_states[{i}]": round(cos(sv_dom, ref["answer_mean"][i]), 6)
            for i in (K, K + 1, K + 2)
        }
    checks["steer_logits_max_abs_diff"] = steer_mapping_check(
        args.tool, model, tok, samples[0][0], K, vec
    )
    if args.tool == "repeng":
        checks["repeng_read_vs_hf_hidden_states_K_plus_1_max_abs_diff"] = repeng_read_check(
            model, tok, [s for pos, neg, _ in samples[:4] for s in (pos, neg)], K
        )
    return train_result(args, K, seconds, tokens, vec, checks)


def train_result(args, K: int, seconds: float, tokens: int, vec: torch.Tensor, checks) -> dict:
    notes = [
        f"layer {K} = output of decoder block {K} = HF hidden_states[{K + 1}]",
        "positive = chat(question) + misaligned answer, negative = chat(question) + aligned answer; "
        "no end-of-turn marker, so the last token is the answer's last token",
        f"seconds = best of {args.repeats} training runs (model load and reference check excluded)",
        "tokens = non-padding tokens of all positive and negative strings, counted once per run",
    ]
    if args.tool == "steering-vectors":
        notes.append(
            "steering-vectors: train_steering_vector, mean_aggregator (mean of pos-neg), last token, "
            f"batch_size={args.train_batch}; pos and neg strings go through separate forwards"
        )
    else:
        notes.append(
            "repeng: ControlVector.train(method='pca_diff'), last token, unit-norm first PCA component "
            f"of pos-neg differences, sign set toward positive; batch_size={args.train_batch}; "
            "runs output_hidden_states=True over the whole model"
        )
    return {
        "tool": args.tool,
        "layer": K,
        "seconds": round(seconds, 3),
        "n_pairs": args.pairs,
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "vector": [float(x) for x in vec],
        "checks": checks,
        "notes": notes,
        "versions": versions(),
    }


# ----------------------------------------------------------------------------- generation


def eval_prompts(tok, n: int) -> list[str]:
    items = probes.load("em-eval").split("all").items
    return [prompt_text(tok, it.question) for it in items[:n]]


@torch.no_grad()
def timed_generate(gen_model, tok, prompts: list[str], new_tokens: int):
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = gen_model.generate(
        **enc,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    assert new.shape[1] == new_tokens, f"generated {new.shape[1]} tokens, want {new_tokens}"
    return new


def make_steerer(tool: str, model, layer: int, vec: torch.Tensor, alpha: float):
    """Return (generate-capable object, context manager factory for 'steering on')."""
    import contextlib

    if tool == "none":
        return model, contextlib.nullcontext
    if tool == "steering-vectors":
        from steering_vectors import SteeringVector

        sv = SteeringVector({layer: vec}, layer_type="decoder_block")
        return model, lambda: sv.apply(model, multiplier=alpha)
    if tool == "repeng":
        from repeng import ControlModel, ControlVector

        cm = ControlModel(model, [layer])  # wraps model.model.layers[layer]: block `layer` output
        cv = ControlVector(model_type=model.config.model_type, directions={layer: vec.numpy()})

        @contextlib.contextmanager
        def on():
            cm.set_control(cv, coeff=alpha)
            try:
                yield
            finally:
                cm.reset()

        return cm, on
    raise ValueError(tool)


def cmd_generate(args) -> dict:
    import contextlib

    tok, model, n_blocks = load_model(args.model)
    tok.padding_side = "left"
    K = args.layer
    batches = [int(b) for b in str(args.batch).split(",")]

    vec_source = "none"
    vec = None
    if args.tool != "none":
        if args.vector:
            data = json.loads(Path(args.vector).read_text())
            if data.get("layer", K) != K:
                sys.exit(
                    f"peer_bench: {args.vector} holds a layer-{data['layer']} vector, not layer {K}"
                )
            vec = torch.tensor(data["vector"], dtype=torch.float32)
            vec_source = f"{args.vector} ({data.get('tool')})"
        else:
            samples = training_strings(tok, args.pairs)
            vec = train_vector(args.tool, model, tok, samples, K, 8)
            vec_source = f"trained here by {args.tool} on {args.pairs} em-core train pairs"
        native_norm = float(vec.norm())
        if not args.raw:
            vec = vec / vec.norm()

    gen_model, steer = make_steerer(args.tool, model, K, vec, args.alpha)
    rows = []
    samples_text = {}
    for b in batches:
        prompts = eval_prompts(tok, b)
        # warm-up (one short run each way), untimed
        timed_generate(gen_model, tok, prompts, 4)
        with steer():
            timed_generate(gen_model, tok, prompts, 4)
        best = {"unsteered": math.inf, "steered": math.inf}
        outs = {}
        for _ in range(args.repeats):  # interleaved, best of each
            for mode in ("unsteered", "steered"):
                ctx = steer() if mode == "steered" else contextlib.nullcontext()
                with ctx:
                    t0 = time.perf_counter()
                    new = timed_generate(gen_model, tok, prompts, args.new_tokens)
                    dt = time.perf_counter() - t0
                log(f"batch {b} {mode}: {dt:.2f} s")
                best[mode] = min(best[mode], dt)
                outs[mode] = new
        n_tok = b * args.new_tokens
        row = {
            "batch": b,
            "new_tokens": args.new_tokens,
            "unsteered_s": round(best["unsteered"], 3),
            "steered_s": round(best["steered"], 3),
            "unsteered_tokens_per_s": round(n_tok / best["unsteered"], 2),
            "steered_tokens_per_s": round(n_tok / best["steered"], 2),
            "ratio_steered_over_unsteered": round(best["unsteered"] / best["steered"], 4),
            "rows_changed_by_steering": int(
                (outs["steered"] != outs["unsteered"]).any(dim=1).sum()
            ),
        }
        rows.append(row)
        samples_text[b] = {
            m: tok.decode(outs[m][0], skip_special_tokens=True)[:300]
            for m in ("unsteered", "steered")
        }
    if args.tool == "repeng":
        gen_model.unwrap()
    notes = [
        f"layer {K} = output of decoder block {K} = HF hidden_states[{K + 1}]",
        f"greedy, exactly {args.new_tokens} new tokens (min_new_tokens = max_new_tokens); "
        "prompts = the first B em-eval questions, chat template with generation prompt, left-padded",
        f"times = best of {args.repeats} interleaved runs each way after a short warm-up; "
        "tokens_per_s = batch * new_tokens / seconds; ratio = steered tokens/s over unsteered tokens/s",
    ]
    if args.tool == "none":
        notes.append("tool none: both columns are unsteered runs; the ratio shows the timing noise")
    else:
        notes.append(
            f"vector: {vec_source}; native norm {native_norm:.3f}; "
            + (
                "used as-is (--raw)"
                if args.raw
                else "rescaled to unit norm, so alpha = saetools' alpha"
            )
        )
    if args.tool == "steering-vectors":
        notes.append(
            "steering: SteeringVector({K: v}, 'decoder_block').apply(model, multiplier=alpha), all tokens"
        )
    if args.tool == "repeng":
        notes.append(
            "steering: ControlModel(model, [K]).set_control(ControlVector, coeff=alpha); reset() when off"
        )
    return {
        "tool": args.tool,
        "layer": K,
        "alpha": args.alpha,
        "results": rows,
        "sample_completions": samples_text,
        "notes": notes,
        "versions": versions(),
    }


# ----------------------------------------------------------------------------- CLI


def summary(res: dict, cmd: str) -> str:
    v = res["versions"]
    head = f"{res['tool']} (transformers {v['transformers']}, torch {v['torch']}, {v['torch_threads']} threads)"
    if cmd == "train":
        c = res["checks"]
        K = res["layer"]
        if c is None:
            return (
                f"train {head}, block {K} output\n  {res['n_pairs']} pairs, {res['tokens']} tokens in "
                f"{res['seconds']:.2f} s = {res['tokens_per_s']:.0f} tokens/s (checks skipped)"
            )
        return "\n".join(
            [
                f"train {head}, block {K} output",
                f"  {res['n_pairs']} pairs, {res['tokens']} tokens in {res['seconds']:.2f} s = {res['tokens_per_s']:.0f} tokens/s",
                "  cosine with last-token difference of means: "
                + ", ".join(f"{k} {x:+.4f}" for k, x in c["cos_vs_last_token_dom"].items()),
                "  cosine with answer-mean difference of means: "
                + ", ".join(f"{k} {x:+.4f}" for k, x in c["cos_vs_answer_mean_dom"].items()),
                f"  best-matching hidden_states index (last token): {c['best_hidden_states_index_last_token']} (expected {K + 1})",
            ]
            + (
                [
                    "  steering-vectors hooks at block K, answer-mean pooled, vs HF answer-mean: "
                    + ", ".join(
                        f"{k} {x:+.4f}"
                        for k, x in c[
                            "cos_answer_mean_dom_via_steering_vectors_hooks_vs_hf"
                        ].items()
                    )
                ]
                if "cos_answer_mean_dom_via_steering_vectors_hooks_vs_hf" in c
                else []
            )
            + [
                "  steering at block K vs a plain hook (max |logit diff|): "
                + ", ".join(f"{k} {x:.2e}" for k, x in c["steer_logits_max_abs_diff"].items())
            ]
            + (
                [
                    f"  repeng read vs HF hidden_states[{K + 1}] (max |diff|): "
                    f"{c['repeng_read_vs_hf_hidden_states_K_plus_1_max_abs_diff']:.2e}"
                ]
                if "repeng_read_vs_hf_hidden_states_K_plus_1_max_abs_diff" in c
                else []
            )
        )
    lines = [f"generate {head}, block {res['layer']} output, alpha {res['alpha']}"]
    for r in res["results"]:
        lines.append(
            f"  batch {r['batch']}: unsteered {r['unsteered_tokens_per_s']:.1f} tok/s, steered "
            f"{r['steered_tokens_per_s']:.1f} tok/s, ratio {r['ratio_steered_over_unsteered']:.3f}, "
            f"rows changed by steering {r['rows_changed_by_steering']}/{r['batch']}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--layer", type=int, default=9, help="block K: steer/read the output of decoder block K"
    )
    common.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="transformers-4 model folder"
    )
    common.add_argument("--repeats", type=int, default=2, help="timed runs; the best is kept")
    common.add_argument("--json", type=Path, help="write the result here")
    common.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")

    t = sub.add_parser("train", parents=[common], help="train the tool's vector and time it")
    t.add_argument("--tool", choices=TOOLS, required=True)
    t.add_argument("--pairs", type=int, default=88, help="em-core train pairs to use (max 88)")
    t.add_argument(
        "--skip-checks", action="store_true", help="skip the (untimed) layer-mapping checks"
    )
    t.add_argument("--train-batch", type=int, default=8, help="batch size passed to the tool")

    g = sub.add_parser(
        "generate", parents=[common], help="time greedy generation with and without steering"
    )
    g.add_argument("--tool", choices=TOOLS + ("none",), required=True)
    g.add_argument("--alpha", type=float, default=8.0)
    g.add_argument("--batch", default="1,8", help="batch size(s), comma-separated")
    g.add_argument("--new-tokens", type=int, default=128)
    g.add_argument(
        "--vector", help="train JSON to take the vector from (default: train it here, untimed)"
    )
    g.add_argument(
        "--pairs", type=int, default=88, help="pairs for the untimed training when no --vector"
    )
    g.add_argument(
        "--raw", action="store_true", help="keep the tool's own vector scale (default: unit norm)"
    )

    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = cmd_train(args) if args.cmd == "train" else cmd_generate(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    print(summary(res, args.cmd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
