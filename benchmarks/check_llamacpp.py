"""Does llama.cpp steer with an exported control vector the way saetools' HF hooks do?

1. Extract the em-core difference-of-means direction at one site (default
   ``blocks.9.hook_resid_post``) from the em-core train split, on a known model (default: the
   embedded SmolLM2-135M-Instruct; ``--model gemma3-270m`` for Gemma 3 270M).
2. Export it with ``saetools.export`` as a llama.cpp control vector GGUF (unit vector times alpha,
   ``direction.9``), one file per alpha.
3. Score em-core test pairs, logprob contrast = log p(misaligned answer) - log p(aligned answer)
   summed over answer tokens, in two engines, each against its own unsteered run:
   * HF (float32 weights dequantized from the same Q4_1 GGUF): ``add`` alpha * unit at the site;
   * llama.cpp (llama-cpp-python) on the model's own GGUF (``SmolLM2-135M-Instruct.Q4_1.gguf``,
     ``gemma-3-270m-q4_k_m.gguf``), with the control vector file applied by
     :func:`saetools.export.apply_control_vector` (``llama_set_adapter_cvec``, llama.cpp's own
     adder; the file laid out exactly as llama.cpp's ``common_control_vector_load`` does).
   Both engines get the same token ids (HF chat template + HF tokenizer, fed to ``Llama.eval``), so
   tokenizer differences cannot enter.
4. Report per alpha: mean change in contrast (HF, llama.cpp), their ratio, and the per-pair Pearson
   correlation of the changes.

Alphas are absolute (default -8, -4, 4, 8) or, with ``--alpha-scale norm``, fractions of the site's
mean residual norm (the strengths that carry across models).

Run: ``python benchmarks/check_llamacpp.py [--model default] [--pairs 20] [--block 9] [--json out.json]``.
Needs ``llama-cpp-python`` (see docs/interop.md for the build).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ALPHAS = (-8.0, -4.0, 4.0, 8.0)


def model_gguf(name: str = "default") -> Path:
    """The known model's own GGUF file (from its installed package)."""
    from saetools.known_models import known_model

    return known_model(name).locate()


class LlamaCppScorer:
    """Sum of answer-token logprobs in llama.cpp for pre-tokenized examples, with a control vector."""

    def __init__(self, path: Path, n_threads: int = 2):
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(path),
            logits_all=True,
            n_ctx=512,
            n_batch=512,
            n_threads=n_threads,
            verbose=False,
        )

    def set_control_vector(self, file: Path | None) -> None:
        from saetools.export import apply_control_vector

        apply_control_vector(self.llm, file)

    def score(self, encoded) -> np.ndarray:
        out = np.zeros(len(encoded))
        for i, e in enumerate(encoded):
            ids = list(e.input_ids)
            self.llm.reset()
            self.llm.eval(ids)
            logits = np.asarray(self.llm.scores[: len(ids)], dtype=np.float64)
            rows = logits[e.response_start - 1 : e.response_end - 1]
            lse = np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1)) + rows.max(-1)
            tgt = np.asarray(ids[e.response_start : e.response_end])
            out[i] = float((rows[np.arange(len(tgt)), tgt] - lse).sum())
        return out


def run_check(
    n_pairs: int = 20,
    block: int = 9,
    alphas=ALPHAS,
    threads: int = 2,
    n_train: int | None = None,
    model: str = "default",
    alpha_scale: str = "abs",
    batch_size: int = 32,
) -> dict:
    import probes
    from saetools.capture import capture, encode_all
    from saetools.directions import DirectionSet
    from saetools.export import export_directions
    from saetools.extract.diffmeans import pair_examples
    from saetools.models import load_model
    from saetools.scoring import score_answers
    from saetools.steer import Intervention, scale_alpha, steer

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    site = f"blocks.{block}.hook_resid_post"
    lm = load_model(model)
    em = probes.load("em-core")
    # difference of means on the train split at the one site (what extract_diffmeans computes,
    # without its held-out statistics pass)
    tr_al, tr_mis = pair_examples(em.split("train").items[:n_train])
    kw = dict(sites=[site], batch_size=batch_size, progress=False)
    ca = capture(lm.model, lm.tokenizer, tr_al, keep_per_example=True, **kw)
    cm = capture(lm.model, lm.tokenizer, tr_mis, keep_per_example=True, **kw)
    # the site's mean residual norm (norm-relative alphas): mean norm of the answers' activations
    norms = torch.cat([ca.per_example[ca.sites[0]], cm.per_example[cm.sites[0]]]).norm(dim=-1)
    ds = DirectionSet(
        {site: cm.mean(ca.sites[0]) - ca.mean(ca.sites[0])},
        {
            "method": "diffmeans",
            "model_id": lm.model_id,
            "fingerprint": lm.fingerprint,
            "stats": {site: {"resid_norm_mean": float(norms.mean())}},
        },
    )
    abs_alpha = {a: scale_alpha(ds, site, a, alpha_scale) for a in alphas}
    test = em.split("test").items[:n_pairs]
    al, mis = pair_examples(test)
    k = len(al)
    unit = ds.unit(site)

    def hf_contrast(alpha: float) -> np.ndarray:
        ivs = [Intervention(site, unit, alpha=abs_alpha[alpha])] if alpha else []
        with steer(lm.model, ivs):
            lp = score_answers(lm.model, lm.tokenizer, al + mis, batch_size=min(16, batch_size))
        return lp["logp"].numpy()[k:] - lp["logp"].numpy()[:k]

    t_extract = time.perf_counter() - t0
    hf = {a: hf_contrast(a) for a in (0.0, *alphas)}
    t_hf = time.perf_counter() - t0 - t_extract
    enc = encode_all(lm.tokenizer, al + mis)
    scorer = LlamaCppScorer(model_gguf(model), n_threads=threads)
    lc = {}
    with tempfile.TemporaryDirectory() as tmp:
        for a in (0.0, *alphas):
            if a:
                f = export_directions(
                    ds,
                    Path(tmp) / f"em_{a:+g}.gguf",
                    "gguf",
                    alpha=a,
                    sites=site,
                    alpha_scale=alpha_scale,
                )
                scorer.set_control_vector(f)
            else:
                scorer.set_control_vector(None)
            lp = scorer.score(enc)
            lc[a] = lp[k:] - lp[:k]
    scorer.set_control_vector(None)
    t_lc = time.perf_counter() - t0 - t_extract - t_hf
    rows = []
    for a in alphas:
        dh, dl = hf[a] - hf[0.0], lc[a] - lc[0.0]
        rows.append(
            {
                "alpha": a,
                "alpha_abs": abs_alpha[a],
                "hf_change": float(dh.mean()),
                "llamacpp_change": float(dl.mean()),
                "ratio": float(dl.mean() / dh.mean()),
                "pearson": float(np.corrcoef(dh, dl)[0, 1]),
            }
        )
    return {
        "model": lm.model_id,
        "alpha_scale": alpha_scale,
        "site_norm": ds.resid_norm(site),
        "site": site,
        "n_pairs": k,
        "hf_base_contrast": float(hf[0.0].mean()),
        "llamacpp_base_contrast": float(lc[0.0].mean()),
        "rows": rows,
        "seconds": {"extract": t_extract, "hf": t_hf, "llamacpp": t_lc},
        "tokenization": "HF chat template + HF tokenizer ids fed to llama.cpp Llama.eval",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="a known model: default, gemma3-270m")
    ap.add_argument("--alpha-scale", default="abs", choices=["abs", "norm"])
    ap.add_argument("--alphas", default=None, help="comma list (default -8,-4,4,8)")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--block", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-pairs", type=int, default=None, help="default: all 88")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    alphas = tuple(float(a) for a in args.alphas.split(",")) if args.alphas else ALPHAS
    res = run_check(
        args.pairs,
        args.block,
        alphas,
        threads=args.threads,
        n_train=args.train_pairs,
        model=args.model,
        alpha_scale=args.alpha_scale,
    )
    print(
        f"{res['model']}, site {res['site']} (mean residual norm {res['site_norm']:.1f}), "
        f"{res['n_pairs']} em-core test pairs; unsteered contrast "
        f"HF {res['hf_base_contrast']:+.3f}, llama.cpp {res['llamacpp_base_contrast']:+.3f}"
    )
    print(f"{'alpha':>6} {'HF change':>10} {'llama.cpp':>10} {'ratio':>6} {'Pearson':>8}")
    for r in res["rows"]:
        print(
            f"{r['alpha']:>+6g} {r['hf_change']:>+10.3f} {r['llamacpp_change']:>+10.3f} "
            f"{r['ratio']:>6.2f} {r['pearson']:>8.3f}"
        )
    s = res["seconds"]
    print(f"time: extract {s['extract']:.1f}s, HF {s['hf']:.1f}s, llama.cpp {s['llamacpp']:.1f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
