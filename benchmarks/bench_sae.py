"""Benchmark: SAE encode throughput on captured activations, and the cost of SAE latent clamping
during generation on the embedded model.

1. **Encode**: activations of the em-core answers at the SAE's site are captured once; the SAE
   (sae-lens ``encode``) then runs over them in batches of 4096 tokens. Prints tokens/s, and the
   model's own forward throughput up to the site on the same text for scale.
2. **Clamp**: greedy generation of ``--new`` tokens (forced with ``min_new_tokens``), KV cache on,
   unsteered vs with a :class:`saetools.sae.LatentClamp` (one latent set to 0 at every position,
   which encodes every token with the whole SAE). Runs are interleaved and repeated; tokens/s is
   the median; the ratio steered / unsteered should be >= 0.9.

The SAE is ``--sae FOLDER`` (e.g. the one docs/sae.md trains) or, by default, a random TopK SAE
of 4 x d_model latents at ``--site`` (speed does not depend on the weights).

    python benchmarks/bench_sae.py --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from prompts import PROMPTS  # benchmarks/prompts.py (the script folder is on sys.path)

import probes
from saetools.capture import Encoded, capture, collate
from saetools.extract.diffmeans import pair_examples
from saetools.models import load_model
from saetools.sae import LatentClamp, load_sae
from saetools.steer import encode_prompts, pad_token_id, steer


def random_sae(site: str, d_in: int, d_sae: int):
    from sae_lens import TopKSAE, TopKSAEConfig

    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=32)
    cfg.metadata.hook_name = site
    torch.manual_seed(0)
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    return sae


def gen(lm, b, new, ivs):
    with steer(lm.model, ivs), torch.no_grad():
        t = time.perf_counter()
        lm.model.generate(
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
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sae", default=None, help="SAE folder (default: random TopK SAE)")
    ap.add_argument("--site", default="blocks.15.hook_resid_post")
    ap.add_argument("--d-sae", type=int, default=None, help="latents of the random SAE (4 x d)")
    ap.add_argument("--new", type=int, default=64, help="new tokens per row")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()

    lm = load_model("default")
    sae = (
        load_sae(args.sae, model=lm.model)
        if args.sae
        else load_sae(
            random_sae(args.site, lm.d_model, args.d_sae or 4 * lm.d_model), model=lm.model
        )
    )
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; SAE {sae.source} "
        f"({sae.architecture}, {sae.d_sae} latents) at {sae.site}"
    )

    # 1. encode throughput on captured activations
    al, mis = pair_examples(probes.load("em-core").items)
    t = time.perf_counter()
    cap = capture(
        lm.model,
        lm.tokenizer,
        al + mis,
        sae.site,
        aggregate="all",
        keep_per_example=True,
        progress=False,
    )
    cap_s = time.perf_counter() - t
    acts = cap.per_example[cap.sites[0]]
    sae.encode(acts[:256])  # warm-up
    times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        for i in range(0, len(acts), 4096):
            sae.encode(acts[i : i + 4096])
        times.append(time.perf_counter() - t)
    enc_tps = len(acts) / statistics.median(times)
    print("\n| what | tokens | tokens/s |\n|---|---|---|")
    print(f"| model forward up to {sae.site} (capture) | {len(acts)} | {len(acts) / cap_s:,.0f} |")
    print(f"| SAE encode ({sae.d_sae} latents), batches of 4096 | {len(acts)} | {enc_tps:,.0f} |")

    # 2. generation with a latent clamp
    clamp = LatentClamp(sae, [0], 0.0)
    rows = []
    for n in (int(x) for x in args.batches.split(",")):
        enc = encode_prompts(lm.tokenizer, PROMPTS[:n])
        b = collate(
            [Encoded(tuple(e), len(e), len(e)) for e in enc], pad_token_id(lm.tokenizer), "left"
        )
        gen(lm, b, 4, [])  # warm-up
        tm = {"unsteered": [], "clamp": []}
        for _ in range(args.reps):
            tm["unsteered"].append(gen(lm, b, args.new, []))
            tm["clamp"].append(gen(lm, b, args.new, [clamp]))
        tps = {k: n * args.new / statistics.median(v) for k, v in tm.items()}
        rows.append((n, tps["unsteered"], tps["clamp"], tps["clamp"] / tps["unsteered"]))
    print(
        f"\n{args.new} new tokens, greedy, KV cache, latent clamp (1 latent = 0) at every position, "
        f"median of {args.reps}\n"
    )
    print("| batch | unsteered tok/s | latent clamp tok/s | clamp / unsteered |\n|---|---|---|---|")
    for n, u, c, r in rows:
        print(f"| {n} | {u:.1f} | {c:.1f} | **{r:.3f}** (target >= 0.9) |")


if __name__ == "__main__":
    main()
