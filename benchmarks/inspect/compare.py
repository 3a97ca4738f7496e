"""Check Inspect logs of runs against ``saetools serve`` with saetools' own API on the same prompts.

For every sample of every log (``inspect eval ... --log-format json``): the prompt Inspect sent
(the sample's messages before the answer, after its solvers' templating), the greedy answer it got,
and, with ``--logprobs``, each answer token's logprob. The same prompt then goes through
``saetools.steer.generate`` (chat template, greedy, the log's ``max_tokens``) with the steering
the log's requests carried (``--extra-body '{"saetools": {"steer": [...]}}'``, read back from the
log and rebuilt with ``Intervention.from_directions`` from the direction files named here), and the
answer's tokens are scored by one forward pass under ``saetools.steer.steer``.

Prints, per log: Inspect's accuracy, the accuracy of the HF answers under the same rule
(``includes``: the target in the answer, case-folded; ``choice``: the last ``ANSWER: X``), how
many answers are identical, and the largest logprob difference; writes everything with
``--json``. Exit status 1 when an answer differs (``--allow-differences`` turns that off).

Usage (the main venv, where saetools is installed)::

    python compare.py LOG_DIR_OR_FILE [...] [--directions em=em.safetensors] [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
import time

import torch

from saetools.directions import DirectionSet
from saetools.models import load_model
from saetools.steer import Intervention, encode_prompts, generate, steer


def load_logs(paths: list[str]) -> list[tuple[str, dict]]:
    files: list[str] = []
    for p in paths:
        files += sorted(glob.glob(os.path.join(p, "*.json"))) if os.path.isdir(p) else [p]
    if not files:
        sys.exit(f"no Inspect JSON logs in {paths} (run inspect eval with --log-format json)")
    return [(f, json.load(open(f))) for f in files]


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def prompt_messages(sample: dict) -> list[dict]:
    """The conversation Inspect sent: every message before the last assistant answer."""
    msgs = sample["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return [{"role": m["role"], "content": text_of(m["content"])} for m in msgs[:last]]


def steering_of(log: dict) -> list[dict]:
    """The ``saetools.steer`` entries the run sent with every request (``--extra-body``)."""
    extra = (log["eval"].get("model_generate_config") or {}).get("extra_body") or {}
    return list((extra.get("saetools") or {}).get("steer") or [])


def interventions(spec: list[dict], directions: dict[str, DirectionSet]) -> list[Intervention]:
    out = []
    for i, entry in enumerate(spec):
        unknown = set(entry) - {"site", "op", "alpha", "value", "direction", "unit", "positions"}
        if unknown:
            sys.exit(f"steer[{i}]: this check rebuilds only direction-file steering, not {unknown}")
        name = entry.get("direction") or (next(iter(directions)) if len(directions) == 1 else None)
        if name not in directions:
            sys.exit(f"steer[{i}] uses direction {name!r}: pass --directions {name}=FILE")
        out.append(
            Intervention.from_directions(
                directions[name],
                entry["site"],
                entry.get("op", "add"),
                float(entry.get("alpha", 1.0)),
                value=entry.get("value"),
                unit=entry.get("unit", True),
                positions=entry.get("positions", "all"),
            )
        )
    return out


@torch.no_grad()
def answer_logprobs(model, prompt_ids: list[int], answer_ids: list[int], ivs) -> list[float]:
    """Logprob of each answer token given the prompt and the answer before it (one steered
    forward over prompt + answer, as the server's decode steps see it)."""
    ids = torch.tensor([prompt_ids + answer_ids])
    with steer(model, ivs, prompt_len=len(prompt_ids)):
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    lp = torch.log_softmax(logits, -1)
    return lp[torch.arange(len(answer_ids)), torch.tensor(answer_ids)].tolist()


def score(scorer: str, answer: str, target) -> bool | None:
    target = target if isinstance(target, str) else "".join(target)
    if scorer == "includes":
        return target.casefold() in answer.casefold()
    if scorer == "choice":
        found = re.findall(r"(?i)ANSWER\s*:\s*\(?([A-Z])\b", answer)
        return bool(found) and found[-1].upper() == target.upper()
    return None


def inspect_correct(sample: dict) -> bool | None:
    (s,) = sample["scores"].values()
    return {"C": True, "I": False}.get(s.get("value"))


def check_log(lm, directions, path: str, log: dict) -> dict:
    ev = log["eval"]
    samples = sorted(log["samples"], key=lambda s: str(s["id"]))
    spec = steering_of(log)
    ivs = interventions(spec, directions)
    cfg = ev.get("model_generate_config") or {}
    max_tokens = int(cfg.get("max_tokens") or 512)
    scorer = ev["scorers"][0]["name"].split("/")[-1]
    prompts = [prompt_messages(s) for s in samples]
    t0 = time.perf_counter()
    hf_tokens = generate(
        lm.model, lm.tokenizer, prompts, ivs, max_new_tokens=max_tokens, return_tokens=True
    )
    e = lm.model.generation_config.eos_token_id
    eos = ({e} if isinstance(e, int) else set(e or [])) | {lm.tokenizer.eos_token_id}
    rows = []
    prompt_ids = encode_prompts(lm.tokenizer, prompts)
    for s, toks, pids in zip(samples, hf_tokens, prompt_ids, strict=True):
        hf_text = lm.tokenizer.decode(toks, skip_special_tokens=True)
        got = s["output"]["completion"]
        row = {
            "id": s["id"],
            "inspect": got,
            "hf": hf_text,
            "equal": got == hf_text,
            "inspect_correct": inspect_correct(s),
            "hf_correct": score(scorer, hf_text, s["target"]),
        }
        lps = (s["output"]["choices"][0].get("logprobs") or {}).get("content")
        if lps:
            content = toks[:-1] if toks and toks[-1] in eos else toks  # the server lists no eos
            ref = answer_logprobs(lm.model, pids, content, ivs)
            n = min(len(ref), len(lps))
            row["max_abs_dlogprob"] = max(
                (abs(ref[k] - lps[k]["logprob"]) for k in range(n)), default=0.0
            )
            row["logprob_tokens"] = n
        rows.append(row)
    inspect_acc = [r["inspect_correct"] for r in rows if r["inspect_correct"] is not None]
    hf_acc = [r["hf_correct"] for r in rows if r["hf_correct"] is not None]
    dl = [r["max_abs_dlogprob"] for r in rows if "max_abs_dlogprob" in r]
    return {
        "log": path,
        "task": ev["task"],
        "scorer": scorer,
        "steer": spec,
        "max_tokens": max_tokens,
        "n": len(rows),
        "equal": sum(r["equal"] for r in rows),
        "inspect_accuracy": sum(inspect_acc) / len(inspect_acc) if inspect_acc else None,
        "inspect_reported_accuracy": log["results"]["scores"][0]["metrics"]["accuracy"]["value"],
        "hf_accuracy": sum(hf_acc) / len(hf_acc) if hf_acc else None,
        "max_abs_dlogprob": max(dl) if dl else None,
        "logprob_tokens": sum(r.get("logprob_tokens", 0) for r in rows),
        "hf_seconds": round(time.perf_counter() - t0, 1),
        "samples": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+", help="Inspect JSON log files or folders of them")
    p.add_argument("--model", default="default", help="the model the server ran (default)")
    p.add_argument(
        "--directions", action="append", default=[], metavar="NAME=FILE", help="as for serve"
    )
    p.add_argument("--json", default=None, help="write every row here")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    p.add_argument("--allow-differences", action="store_true", help="exit 0 even if answers differ")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    directions = {}
    for item in args.directions:
        name, _, f = item.rpartition("=")
        directions[name or os.path.splitext(os.path.basename(f))[0]] = DirectionSet.load(
            f, model=lm.model
        )
    results = [check_log(lm, directions, path, log) for path, log in load_logs(args.logs)]
    for r in results:
        steer_txt = (
            "; ".join(
                f"{e.get('op', 'add')} {e.get('alpha', '')} at {e['site']} ({e.get('direction')})"
                for e in r["steer"]
            )
            or "unsteered"
        )
        dl = r["max_abs_dlogprob"]
        print(
            f"{r['task']:12s} {steer_txt:45s} n={r['n']}  answers identical {r['equal']}/{r['n']}"
            f"  accuracy Inspect {r['inspect_accuracy']:.2f} HF {r['hf_accuracy']:.2f}"
            + (
                f"  max |Δ logprob| {dl:.1e} over {r['logprob_tokens']} tokens"
                if dl is not None and not math.isnan(dl)
                else ""
            )
        )
        for row in r["samples"]:
            if not row["equal"]:
                print(f"  differs: {row['id']}: Inspect {row['inspect']!r} HF {row['hf']!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    same = all(r["equal"] == r["n"] for r in results)
    return 0 if same or args.allow_differences else 1


if __name__ == "__main__":
    sys.exit(main())
