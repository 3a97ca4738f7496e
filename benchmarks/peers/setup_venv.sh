#!/usr/bin/env bash
# Set up the peer tools (steering-vectors, repeng) for side-by-side benchmarks with saetools.
#
#   bash benchmarks/peers/setup_venv.sh
#
# Creates, relative to the repo root (.bench/ is git-ignored):
#   .bench/peers-venv/   torch 2.13.0 (CPU) + transformers 4.57.6 + steering-vectors + repeng
#   .bench/smollm2-tf4/  a copy of the embedded model folder that transformers 4 loads
#
# Both peers pin transformers < 5, and transformers 5 writes model folders that 4.x misreads, so
# they get their own venv and their own copy of the model. Idempotent: a stamp file holds a hash of
# this script and of the source model's completeness marker; rerunning with both unchanged is a
# no-op. Env: SAETOOLS_CACHE (where saetools keeps the converted model, passed through),
# PEERS_MODEL_SRC (use this HF folder instead of asking saetools), PYTHON (interpreter for the
# venv, default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.bench/peers-venv"
MODEL_DST="$ROOT/.bench/smollm2-tf4"
PY="${PYTHON:-python3}"

TORCH_VERSION=2.13.0
TRANSFORMERS_VERSION=4.57.6     # last 4.x; on this machine's disk. Both peers require < 5.
STEERING_VECTORS_VERSION=0.12.2
REPENG_VERSION=0.4.0            # requires numpy < 2 (torch 2.13 runs with numpy 1.26)

# --- where the source model is -------------------------------------------------------------
if [ -n "${PEERS_MODEL_SRC:-}" ]; then
  MODEL_SRC="$PEERS_MODEL_SRC"
else
  MAIN_PY="${SAETOOLS_VENV:-$ROOT/.venv}/bin/python"
  if [ ! -x "$MAIN_PY" ]; then
    echo "setup_venv.sh: no saetools venv at $MAIN_PY; run 'bash run.sh setup' first or set PEERS_MODEL_SRC" >&2
    exit 1
  fi
  MODEL_SRC="$("$MAIN_PY" -c 'from saetools.models import default_model_dir; print(default_model_dir())' | tail -1)"
fi
[ -f "$MODEL_SRC/config.json" ] || { echo "setup_venv.sh: no model at $MODEL_SRC" >&2; exit 1; }

want="$( { cat "$0"; cat "$MODEL_SRC/saetools-complete.json" 2>/dev/null || echo "$MODEL_SRC"; } | sha256sum | cut -c1-16)"
stamp="$ROOT/.bench/.peers-setup-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ] \
   && [ -f "$MODEL_DST/model.safetensors" ]; then
  echo "setup_venv.sh: up to date ($VENV, $MODEL_DST)" >&2
  exit 0
fi
mkdir -p "$ROOT/.bench"

# --- the venv ------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
# pip -q still warns about each configured local index folder that lacks a package: drop those lines.
pip_install() {
  "$VPY" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
echo "setup_venv.sh: installing into $VENV (torch $TORCH_VERSION CPU first)" >&2
pip_install --upgrade pip
# A bare torch requirement would pull a multi-GB CUDA build: install the CPU build first, pinned.
pip_install "torch==$TORCH_VERSION"
pip_install \
  "torch==$TORCH_VERSION" \
  "transformers==$TRANSFORMERS_VERSION" \
  "steering-vectors==$STEERING_VECTORS_VERSION" \
  "repeng==$REPENG_VERSION" \
  "numpy<2" safetensors
"$VPY" - <<'EOF'
import importlib.metadata as md
for p in ("torch", "transformers", "tokenizers", "steering-vectors", "repeng", "numpy", "scikit-learn"):
    print(f"  {p}=={md.version(p)}")
EOF

# --- the model copy ------------------------------------------------------------------------
tmp="$(mktemp -d "$ROOT/.bench/.smollm2-tf4.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
for f in "$MODEL_SRC"/*; do
  name="$(basename "$f")"
  case "$name" in
    model.safetensors) ln "$f" "$tmp/$name" 2>/dev/null || cp "$f" "$tmp/$name" ;;  # hard link when possible
    *) cp "$f" "$tmp/$name" ;;
  esac
done
"$VPY" - "$tmp" <<'EOF'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])

# tokenizer_config.json: transformers 5 may name its own TokenizersBackend class, which 4.x lacks;
# 4.x wants the chat template inside the config (it reads chat_template.jinja only from 4.50 on;
# embedding it is harmless either way).
tc_path = d / "tokenizer_config.json"
tc = json.loads(tc_path.read_text())
if tc.get("tokenizer_class") in (None, "TokenizersBackend"):
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
tc.pop("backend", None)
tmpl = d / "chat_template.jinja"
if tmpl.exists() and "chat_template" not in tc:
    tc["chat_template"] = tmpl.read_text()
tc_path.write_text(json.dumps(tc, indent=2))

# config.json: transformers 5 keeps RoPE settings in "rope_parameters"; 4.x reads "rope_theta"
# (and "rope_scaling") and would silently fall back to theta 10000 (SmolLM2 uses 100000).
c_path = d / "config.json"
c = json.loads(c_path.read_text())
rp = c.pop("rope_parameters", None)
if rp:
    c["rope_theta"] = rp.get("rope_theta", c.get("rope_theta", 10000.0))
    extra = {k: v for k, v in rp.items() if k != "rope_theta"}
    if extra.get("rope_type", "default") != "default":
        c["rope_scaling"] = extra
    else:
        c.setdefault("rope_scaling", None)
if "dtype" in c and "torch_dtype" not in c:
    c["torch_dtype"] = c["dtype"]
c_path.write_text(json.dumps(c, indent=2))
print(f"  model copy: rope_theta={c.get('rope_theta')}, tokenizer_class={tc['tokenizer_class']}")
EOF
rm -rf "$MODEL_DST"
mv "$tmp" "$MODEL_DST"
trap - EXIT

# --- smoke test: the copy loads under transformers 4 and chats --------------------------------
"$VPY" - "$MODEL_DST" <<'EOF'
import sys, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
d = sys.argv[1]
tok = AutoTokenizer.from_pretrained(d)
model = AutoModelForCausalLM.from_pretrained(d)
assert abs(model.config.rope_theta - 100000.0) < 1, model.config.rope_theta
text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
assert text.endswith("<|im_start|>assistant\n"), text
print(f"  transformers {transformers.__version__} loads {d} ({type(tok).__name__}, {model.config.num_hidden_layers} blocks)")
EOF
echo "$want" > "$stamp"
echo "setup_venv.sh: done" >&2
