#!/usr/bin/env bash
# Inspect (UK AISI's inspect_ai) against `saetools serve` on the embedded model, the server as
# Inspect's OpenAI-compatible provider (`openai-api/saetools/...`):
#   1. the unsteered server,
#   2. the same server steered per request (Inspect's --extra-body carries `saetools.steer`),
#   3. compare.py: every answer and its token logprobs against saetools' own generate() and a
#      steered forward on the same prompts (exit status 1 when an answer differs).
# Usage: benchmarks/inspect/run.sh [DIRECTIONS_FILE [SITE [ALPHA]]]
# Without DIRECTIONS_FILE an em-core direction is extracted at SITE (default blocks.9, alpha 8).
# Inspect lives in its own virtual environment ($INSPECT_VENV, default benchmarks/inspect/.venv);
# saetools (the server, the extraction, compare.py) comes from the active environment.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${INSPECT_VENV:-$HERE/.venv}
OUT=${OUT:-$HERE/out}
PORT=${PORT:-8766}
INSPECT_VERSION=0.3.285  # the version this was checked with (docs/evaluation.md)
OPENAI_VERSION=3.57.0
SITE=${2:-blocks.9.hook_resid_post}
ALPHA=${3:-8}
MODEL=HuggingFaceTB/SmolLM2-135M-Instruct
if [ ! -x "$VENV/bin/inspect" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "inspect-ai==$INSPECT_VERSION" "openai==$OPENAI_VERSION"
fi
rm -rf "$OUT"
mkdir -p "$OUT"
DIRECTIONS=${1:-}
if [ -z "$DIRECTIONS" ]; then
  DIRECTIONS=$OUT/em.safetensors
  echo "extracting an em-core direction at $SITE into $DIRECTIONS" >&2
  saetools extract --model default --probes em-core --sites "$SITE" --out "$DIRECTIONS" \
    --quiet > "$OUT/extract.log" 2>&1
fi
# Inspect's `openai-api/saetools/...` provider reads SAETOOLS_API_KEY, and `saetools serve`
# requires that same key when it is set: one variable for both sides.
export SAETOOLS_API_KEY=${SAETOOLS_API_KEY:-saetools-inspect-check} HF_HUB_OFFLINE=1
saetools serve --model default --port "$PORT" --directions "em=$DIRECTIONS" > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/serve.log" >&2; exit 1; }
  sleep 1
done
run_inspect() {  # name, then extra inspect eval arguments
  local name=$1; shift
  "$VENV/bin/inspect" eval "$HERE/capitals.py@capitals" --model "openai-api/saetools/$MODEL" \
    --model-base-url "http://127.0.0.1:$PORT/v1" --temperature 0 --max-tokens 24 --logprobs \
    --log-format json --log-dir "$OUT/$name" --display plain "$@" > "$OUT/$name.log" 2>&1
  grep -E "^accuracy" "$OUT/$name.log" | tail -1 | sed "s/^/$name: /"
}
time run_inspect unsteered
STEER="{\"site\": \"$SITE\", \"op\": \"add\", \"alpha\": $ALPHA, \"direction\": \"em\"}"
time run_inspect steered --extra-body "{\"saetools\": {\"steer\": [$STEER]}}"
kill $SERVER; wait $SERVER 2>/dev/null || true
trap - EXIT
# One torch thread: the check's forwards are small, and on a busy machine spinning threads cost
# far more than they give (25 min with 2 threads, 2 min 20 s with 1, for one log; load 12-17).
time python "$HERE/compare.py" "$OUT/unsteered" "$OUT/steered" --directions "em=$DIRECTIONS" \
  --threads 1 --json "$OUT/compare.json"
