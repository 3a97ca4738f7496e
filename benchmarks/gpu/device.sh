#!/usr/bin/env bash
# The one prepared GPU run of issue 12, for the lent H200 (see ../../../shared/GPU.md when it is
# there): the benchmark rows (run_all.py, under 8 minutes) and, when the embedded model was
# brought along, the `cuda` tests. Run from the repository root on the device:
#
#   bash benchmarks/gpu/device.sh            # results under $OUT (or ./gpu-out)
#
# Prepared on the machine that starts the run (nothing can be downloaded on the device):
#   .dev/gpu/whl/  wheels the device lacks: fastapi, starlette, uvicorn (saetools.serve imports
#                  fastapi), e.g. `python3 -m pip download --no-deps --only-binary=:all:
#                  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64
#                  -d .dev/gpu/whl fastapi starlette uvicorn sae-lens`
#   .dev/gpu/tok/  the embedded tokenizer: tokenizer.json, tokenizer_config.json,
#                  chat_template.jinja from $SAETOOLS_CACHE/models/SmolLM2-135M-Instruct
#                  (a few MB; the weights are not needed for the benchmark rows)
# and carried with `carry: [".dev/gpu"]`. For the `cuda` tests the embedded model's GGUF must be
# in $SAETOOLS_CACHE/wheels/ (two calls, GPU.md "The embedded model in two calls"); without it
# they are left out and the run says so.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
if compgen -G ".dev/gpu/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .dev/gpu/whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD:${PYTHONPATH:-}"
export SAETOOLS_SKIP_LLAMACPP=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
tok=".dev/gpu/tok"
[ -d "$tok" ] || tok=""
timeout 480 python3 benchmarks/gpu/run_all.py ${tok:+--tokenizer "$tok"} \
    --json "$OUT/gpu.json" 2>&1 | tee "$OUT/run_all.log"
echo "run_all exit: ${PIPESTATUS[0]}" | tee -a "$OUT/run_all.log"
# torch.compile with the steering hook, 0.5B only (compilation takes minutes at larger shapes)
timeout 120 python3 benchmarks/gpu/run_all.py ${tok:+--tokenizer "$tok"} --shapes 0.5B \
    --rows generate --compile --json "$OUT/gpu_compile.json" > "$OUT/compile.log" 2>&1
echo "compile check exit: $?" | tee -a "$OUT/compile.log"
if compgen -G "${SAETOOLS_CACHE:-$HOME/.cache/saetools}/wheels/*.gguf" > /dev/null; then
    timeout 240 python3 -m pytest -m cuda -ra -q -s -p no:cacheprovider tests/test_cuda.py \
        2>&1 | tee "$OUT/pytest_cuda.log"
else
    echo "no embedded model on the device: pytest -m cuda not run" | tee "$OUT/pytest_cuda.log"
fi
