"""llama.cpp (through llama-cpp-python) steers with an exported control vector like saetools' hooks.

Embedded-model test: the em-core direction at blocks.9.hook_resid_post is exported as a control
vector GGUF and applied in llama.cpp to the embedded model's own Q4_1 GGUF. On 20 em-core test
pairs, the change in logprob contrast caused by alpha in {-8, -4, 4, 8} (each engine against its
own unsteered run) must have the same sign as the HF change, a mean within 25% of it, and a
per-pair Pearson correlation >= 0.7. Both engines get the same token ids (HF chat template + HF
tokenizer, fed to ``Llama.eval``). The logic lives in benchmarks/check_llamacpp.py.

llama-cpp-python compiles llama.cpp (about 10 minutes on 2 cores). ``bash run.sh test`` (and so CI)
builds it once and sets SAETOOLS_REQUIRE_LLAMACPP=1, under which a missing package is a failure;
a plain ``pytest`` without the package skips this test, saying so.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.embedded


def _check_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "check_llamacpp.py"
    spec = importlib.util.spec_from_file_location("check_llamacpp", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_llamacpp", mod)
    spec.loader.exec_module(mod)
    return mod


def test_llamacpp_steers_like_hf():
    if importlib.util.find_spec("llama_cpp") is None:
        if os.environ.get("SAETOOLS_REQUIRE_LLAMACPP") == "1":
            pytest.fail("SAETOOLS_REQUIRE_LLAMACPP=1 but llama-cpp-python is not installed")
        pytest.skip(
            "llama-cpp-python is not installed (bash run.sh test builds it; or "
            'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python, see docs/interop.md)'
        )
    t0 = time.perf_counter()
    # one thread each: llama.cpp's thread pool spin-waits badly on a shared 2-core machine
    res = _check_module().run_check(n_pairs=20, block=9, threads=1)
    table = "\n".join(
        f"alpha {r['alpha']:+g}: HF {r['hf_change']:+.3f} llama.cpp {r['llamacpp_change']:+.3f} "
        f"ratio {r['ratio']:.2f} pearson {r['pearson']:.3f}"
        for r in res["rows"]
    )
    s = res["seconds"]
    print(
        f"{table}\nseconds: extract {s['extract']:.1f}, HF {s['hf']:.1f}, llama.cpp {s['llamacpp']:.1f}"
    )
    for r in res["rows"]:
        assert r["hf_change"] * r["alpha"] > 0, f"HF steering moved the wrong way\n{table}"
        assert r["llamacpp_change"] * r["hf_change"] > 0, f"signs differ\n{table}"
        assert 0.75 <= r["ratio"] <= 1.25, f"llama.cpp mean not within 25% of HF\n{table}"
        assert r["pearson"] >= 0.7, f"per-pair changes do not correlate\n{table}"
    print(f"total {time.perf_counter() - t0:.1f}s")
