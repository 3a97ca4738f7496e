"""GGUF files as plain Hugging Face folders: the conversion, and the cache that keeps each one.

transformers loads a GGUF file (de-quantizing it) but cannot save the result ("the model is
quantized with gguf and is not serializable"). :func:`convert_gguf` copies the de-quantized state
dict into a plain model of the same config and saves that with the tokenizer, as a float32 folder
any tool reads. :func:`cached_conversion` does it once per source into saetools' cache
(:func:`cache_dir`): it writes into a temporary folder next to the cache and renames it into
place, so a crash never leaves a half-written folder, and a marker file (every file's size) lets
a damaged folder be found and rebuilt.

Chat templates: a GGUF usually carries its model's template (``tokenizer.chat_template``); a base
model's has none. ``chat_template=`` bakes one into the folder: the text of a Jinja file, or the
name of a template shipped with saetools (:data:`SHIPPED_TEMPLATES`, files in
``saetools/templates/``). Every ``stop_tokens`` entry (e.g. Gemma's ``<end_of_turn>``, added by
itself with the shipped ``gemma`` template) is added to the generation config's end-of-sequence
ids, so generation stops at the end of a turn.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

MARKER = "saetools-complete.json"
CONVERSION_VERSION = 1
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
# name -> file in saetools/templates/ (see that folder's README for where each comes from)
SHIPPED_TEMPLATES = {"gemma": "gemma.jinja"}
# the tokens that end a turn in a shipped template: added to the stop tokens when it is baked in
TEMPLATE_STOP_TOKENS = {"gemma": ("<end_of_turn>",)}


class ModelLoadError(RuntimeError):
    """A model could not be found, fetched, converted or loaded."""


def cache_dir() -> Path:
    """Root of saetools' cache: ``$SAETOOLS_CACHE``, else ``$XDG_CACHE_HOME/saetools``, else ``~/.cache/saetools``."""
    override = os.environ.get("SAETOOLS_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "saetools"


def chat_template_text(spec: str | os.PathLike) -> str:
    """The Jinja text of a chat template: a shipped template's name (``gemma``) or a file path."""
    name = str(spec)
    if name in SHIPPED_TEMPLATES:
        return (TEMPLATE_DIR / SHIPPED_TEMPLATES[name]).read_text()
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"chat template {name!r} is neither a file nor a template shipped with saetools "
            f"({', '.join(sorted(SHIPPED_TEMPLATES))})"
        )
    return path.read_text()


def file_sha256(path: Path, limit: int | None = None) -> str:
    """sha256 of a file, or of its first ``limit`` bytes."""
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


def gguf_has_chat_template(gguf: Path) -> bool:
    """Whether the GGUF file's metadata carries ``tokenizer.chat_template``."""
    import gguf as gguf_lib

    reader = gguf_lib.GGUFReader(str(gguf))
    return "tokenizer.chat_template" in reader.fields


def convert_gguf(
    gguf: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model_id: str | None = None,
    chat_template: str | os.PathLike | None = None,
    stop_tokens: Sequence[str] = (),
) -> Path:
    """Write the GGUF file ``gguf`` as a plain float32 Hugging Face folder ``out`` (model and
    tokenizer). ``model_id`` becomes the config's ``_name_or_path`` (default: the file name without
    ``.gguf``); ``chat_template``: see the module docstring. Returns ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf, out = Path(gguf), Path(out)
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} does not exist")
    template = chat_template_text(chat_template) if chat_template is not None else None
    stop_tokens = (*stop_tokens, *TEMPLATE_STOP_TOKENS.get(str(chat_template), ()))
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quant = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"transformers cannot read the GGUF file {gguf}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    plain = _plain_copy(quant, model_id or gguf.name.removesuffix(".gguf"))
    if template is not None:
        tok.chat_template = template
    _set_generation_ids(plain, tok, stop_tokens)
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # transformers 5 writes its own tokenizer class name; a generic name keeps the folder readable by
    # older transformers (steering-vectors and repeng pin transformers < 5).
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    return out


def _plain_copy(quant: torch.nn.Module, model_id: str) -> torch.nn.Module:
    """A model of the same class and config without the GGUF quantization config, holding
    ``quant``'s de-quantized weights."""
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = model_id
    plain = type(quant)(config)
    missing, unexpected = plain.load_state_dict(quant.state_dict(), strict=False)
    # Tied output embeddings may be reported missing; anything else is a real failure.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelLoadError(
            f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    plain.tie_weights()
    return plain


def _set_generation_ids(model, tok, stop_tokens: Sequence[str]) -> None:
    """The pad id, and the end-of-sequence ids extended by ``stop_tokens``, in the generation config."""
    gen = model.generation_config
    gen.pad_token_id = tok.pad_token_id
    if not stop_tokens:
        return
    eos = gen.eos_token_id if gen.eos_token_id is not None else tok.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    for t in stop_tokens:
        tid = tok.convert_tokens_to_ids(t)
        if tid is None or tid == tok.unk_token_id:
            raise ModelLoadError(f"stop token {t!r} is not in the tokenizer's vocabulary")
        if tid not in ids:
            ids.append(int(tid))
    gen.eos_token_id = ids


def cache_is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a finished conversion of the current version (marker, file sizes)."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(info, dict) or info.get("conversion_version") != CONVERSION_VERSION:
        return False
    for name, size in info.get("files", {}).items():
        f = folder / name
        if not f.is_file() or f.stat().st_size != size:
            return False
    return bool(info.get("files"))


def cached_conversion(
    subdir: str,
    locate: Callable[[], Path],
    *,
    model_id: str,
    what: str,
    progress: bool = True,
    **convert_kw,
) -> Path:
    """``cache_dir()/models/subdir``, converted once from the GGUF that ``locate()`` returns.

    ``what`` names the model in the progress message; ``convert_kw`` go to :func:`convert_gguf`.
    The conversion writes into a temporary folder and renames it into place; a cache that fails
    its completeness check is rebuilt.
    """
    root = cache_dir() / "models"
    target = root / subdir
    if cache_is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    gguf = locate()
    if progress:
        print(f"saetools: converting {what} {gguf.name} into {target} (once)", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        convert_gguf(gguf, tmp, model_id=model_id, **convert_kw)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        marker = {
            "conversion_version": CONVERSION_VERSION,
            "source": gguf.name,
            "source_sha256_head": file_sha256(gguf, limit=16 << 20),
            "model_id": model_id,
            "chat_template": str(convert_kw.get("chat_template"))
            if convert_kw.get("chat_template") is not None
            else "from the GGUF",
            "files": files,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        if target.exists():
            stale = root / f".stale-{os.getpid()}"
            os.replace(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def gguf_cache_name(gguf: Path) -> str:
    """The cache folder name of a user's GGUF file: its stem and a hash of its size and first
    16 MiB (a changed file gets a new folder)."""
    head = file_sha256(gguf, limit=16 << 20)
    tag = hashlib.sha256(f"{gguf.stat().st_size}:{head}".encode()).hexdigest()[:12]
    return f"gguf-{gguf.name.removesuffix('.gguf')}-{tag}"
