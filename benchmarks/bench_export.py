"""Export/import time per format for a 30-layer direction set (d_model 576, like SmolLM2-135M).

Run: ``python benchmarks/bench_export.py [--layers 30] [--d 576] [--repeats 20]``. Prints the best
of ``repeats`` timings in milliseconds (one thread; files in a temporary folder).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from saetools.directions import DirectionSet
from saetools.export import FORMATS, export_directions, import_directions


def best_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    g = torch.Generator().manual_seed(0)
    n = args.layers
    fp = {"model_type": "llama", "n_layers": n, "d_model": args.d}
    ds = DirectionSet(
        {f"blocks.{k}.hook_resid_post": torch.randn(args.d, generator=g) for k in range(n)},
        {"method": "diffmeans", "fingerprint": fp},
    )
    print(f"{n}-layer set, d_model {args.d}, best of {args.repeats}")
    print(f"{'format':<18} {'export ms':>10} {'import ms':>10} {'file KiB':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        base = ds.save(Path(tmp) / "em.safetensors")
        ms_save = best_ms(lambda: ds.save(base), args.repeats)
        ms_load = best_ms(lambda: DirectionSet.load(base), args.repeats)
        kib = base.stat().st_size / 1024
        print(f"{'saetools (own)':<18} {ms_save:>10.2f} {ms_load:>10.2f} {kib:>9.1f}")
        for fmt in FORMATS:
            out = Path(tmp) / f"em.{fmt}"
            kw = {} if fmt == "concept-ablation" else {"alpha": 6.0}
            ms_e = best_ms(
                lambda o=out, f=fmt, k=kw: export_directions(ds, o, f, **k), args.repeats
            )
            ms_i = best_ms(lambda o=out, f=fmt: import_directions(o, f, model=fp), args.repeats)
            print(f"{fmt:<18} {ms_e:>10.2f} {ms_i:>10.2f} {out.stat().st_size / 1024:>9.1f}")


if __name__ == "__main__":
    main()
