#!/usr/bin/env bash
# lm-evaluation-harness against `saetools serve` on the embedded model:
#   1. lm-eval's own Hugging Face backend (the reference),
#   2. `saetools serve` through lm-eval's `local-completions` (must equal 1),
#   3. optionally the same server steered by a direction file (what steering costs on a capability).
# Usage: benchmarks/lm_eval/run.sh [DIRECTIONS_FILE [SITE [ALPHA]]]
# lm-eval lives in its own virtual environment ($LMEVAL_VENV, default benchmarks/lm_eval/.venv).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${LMEVAL_VENV:-$HERE/.venv}
OUT=${OUT:-$HERE/out}
PORT=${PORT:-8765}
if [ ! -x "$VENV/bin/lm_eval" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q "lm-eval[api]" transformers accelerate
fi
MODEL_DIR=$(python -c "from saetools.models import default_model_dir; print(default_model_dir())")
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
cd "$HERE"
rm -rf "$OUT"
run_lm_eval() {  # name, then lm_eval arguments
  local name=$1; shift
  for extra in "" "--apply_chat_template"; do
    local task=saetools_capitals_mc
    [ -n "$extra" ] && task=saetools_capitals_gen
    "$VENV/bin/lm_eval" --tasks $task $extra --include_path "$HERE" --log_samples \
      --output_path "$OUT/$name" "$@" > "$OUT/$name.$task.log" 2>&1
  done
}
serve_and_eval() {  # name, then saetools serve arguments
  local name=$1; shift
  saetools serve --model default --port "$PORT" "$@" > "$OUT/$name.serve.log" 2>&1 &
  local pid=$!
  trap "kill $pid 2>/dev/null || true" EXIT
  until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do sleep 1; done
  run_lm_eval "$name" --model local-completions --model_args \
    "model=HuggingFaceTB/SmolLM2-135M-Instruct,base_url=http://127.0.0.1:$PORT/v1/completions,tokenizer_backend=huggingface,tokenizer=$MODEL_DIR,num_concurrent=4"
  kill $pid; wait $pid 2>/dev/null || true
  trap - EXIT
}
mkdir -p "$OUT"
time run_lm_eval hf --model hf --model_args "pretrained=$MODEL_DIR,dtype=float32" --batch_size 8
time serve_and_eval serve
runs=("$OUT/serve")
if [ $# -ge 1 ]; then
  time serve_and_eval steered --directions "em=$1" --site "${2:-blocks.15.hook_resid_post}" \
    --op add --alpha "${3:-8}"
  runs+=("$OUT/steered")
fi
python "$HERE/compare.py" "$OUT/hf" "${runs[@]}"
