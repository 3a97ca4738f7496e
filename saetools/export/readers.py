"""Read other tools' files into direction files (see :mod:`saetools.export.formats` for the indices).

:func:`import_directions` reads a file (:func:`detect_format` guesses its format: by extension,
then by the safetensors metadata); :func:`from_repeng` takes a repeng ``ControlVector`` or its dict
form. The persona ``.pt`` format is read with ``torch.load(weights_only=True)`` only, from the
file's bytes (by content: a ``.pt`` tensor saved under a ``.safetensors`` name reads with
``--format pt``), and its zero rows (no direction) are skipped. A file written by saetools carries the source direction file's
metadata (a JSON string ``saetools.metadata``), which import keeps under
``metadata["source_metadata"]``.

Imports record ``method = "import:<format>"``, the source file and its sha256, and, given a model,
its id and fingerprint; the width (``n_embd``) and the layer indices are checked against the model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..directions import DirectionFileError, DirectionSet, check_metadata, read_header
from .formats import (
    CA_FORMAT,
    FORMATS,
    GGUF_ARCH,
    SV_FORMAT,
    InteropError,
    check_format,
    fingerprint_of,
    site_of_residual_index,
)

_EXTENSIONS = {".gguf": "gguf", ".pt": "pt", ".pth": "pt"}


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of a file: by extension, then by the safetensors metadata."""
    p = Path(path)
    if p.suffix.lower() in _EXTENSIONS:
        return _EXTENSIONS[p.suffix.lower()]
    if p.suffix.lower() == ".safetensors" and p.is_file():
        try:
            meta = _safetensors_metadata(p)
        except InteropError as e:
            raise InteropError(
                f"{e}. (A torch .pt tensor saved under a .safetensors name imports with --format pt)"
            ) from e
        fmt = meta.get("format")
        if fmt in (SV_FORMAT, CA_FORMAT):
            return fmt
    raise InteropError(f"cannot tell the format of {p}; pass --format ({'|'.join(FORMATS)})")


def from_repeng(
    cv, *, model=None, n_layers: int | None = None, source: str | None = None
) -> DirectionSet:
    """A DirectionSet from a repeng ``ControlVector`` or its dict form (``model_type``, ``directions``).

    Negative layer keys (repeng's default ``hidden_layers`` are ``-1, -2, ...``) are counted from the
    end and need ``model`` or ``n_layers``.
    """
    if isinstance(cv, dict):
        directions, model_type = cv.get("directions"), cv.get("model_type")
    else:
        directions, model_type = getattr(cv, "directions", None), getattr(cv, "model_type", None)
    if not isinstance(directions, dict) or not directions:
        raise InteropError(
            "a repeng ControlVector needs a non-empty 'directions' {layer: vector} dict"
        )
    fp = fingerprint_of(model)
    n = n_layers or (fp or {}).get("n_layers")
    layers = {}
    for k, v in directions.items():
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise InteropError(f"repeng layer key {k!r} is not an integer") from None
        if k < 0:
            if not n:
                raise InteropError(
                    f"repeng layer {k} counts from the end; pass the model (or n_layers) to resolve it"
                )
            k += int(n)
        arr = np.asarray(v)
        if arr.dtype != np.float32:
            raise InteropError(f"repeng direction for layer {k} is {arr.dtype}, expected float32")
        layers[k] = torch.from_numpy(np.array(arr, copy=True))
    return _build(
        layers, "repeng", source, model, fp, {"model_type": model_type}, shift=1, n_layers=n
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _build(
    vectors: dict[int, torch.Tensor],
    fmt: str,
    source: str | os.PathLike | None,
    model,
    fp: dict | None,
    source_meta: dict,
    *,
    shift: int,
    n_layers: int | None = None,
    names: dict[int, str] | None = None,
) -> DirectionSet:
    """vectors keyed by the tool's index; residual index = tool index + shift."""
    if not vectors:
        raise InteropError(f"{source or 'the input'} holds no direction")
    for k, v in vectors.items():
        if v.ndim not in (1, 2) or v.shape[-1] == 0:
            raise InteropError(f"{fmt} vector {k} has shape {tuple(v.shape)}; expected 1-D [d]")
    widths = {int(v.shape[-1]) for v in vectors.values()}
    if len(widths) != 1:
        raise InteropError(f"{source or fmt}: vectors have different widths {sorted(widths)}")
    d = widths.pop()
    n = n_layers if n_layers is not None else (fp or {}).get("n_layers")
    if fp is not None and int(fp.get("d_model", d)) != d:
        raise InteropError(
            f"{source or 'the input'} holds {d}-wide vectors (n_embd {d}) but the model is "
            f"{fp.get('d_model')}-wide: it was made for another model"
        )
    out = {}
    for k, v in sorted(vectors.items()):
        r = k + shift
        if n is not None and r > int(n):
            raise InteropError(
                f"{source or 'the input'} has a vector for {fmt} layer {k}, beyond the model's "
                f"{n} blocks (0..{int(n) - 1}): it was made for another model"
            )
        out[(names or {}).get(k) or site_of_residual_index(r)] = v
    meta: dict = {
        "method": f"import:{fmt}",
        "source_format": fmt,
        "sign": "as in the source file (saetools: positive = toward the trait)",
    }
    if source is not None:
        p = Path(source)
        meta["source_file"] = str(p)
        meta["source_sha256"] = _sha256(p)
    src = {k: v for k, v in source_meta.items() if v is not None and k != "saetools.metadata"}
    if src:
        meta["source_info"] = src
    embedded = source_meta.get("saetools.metadata")
    if embedded:
        meta["source_metadata"] = embedded
        if isinstance(embedded, str):
            try:
                meta["source_metadata"] = json.loads(embedded)
            except (ValueError, RecursionError):
                pass
    inner = meta.get("source_metadata")
    inner = inner.get("metadata") if isinstance(inner, dict) else None
    if isinstance(inner, dict):  # a saetools export: keep what still describes the vectors
        kept = {k: inner[k] for k in ("aggregation", "sign", "probe_set", "counts") if k in inner}
        check_metadata(kept, f"{source or 'the input'} (its embedded saetools metadata)")
        meta.update(kept)
    if fp is not None:
        meta["fingerprint"] = dict(fp)
        if model is not None and getattr(model, "model_id", None):
            meta["model_id"] = model.model_id
    return DirectionSet(out, meta)


def import_directions(
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    model=None,
    n_layers: int | None = None,
) -> DirectionSet:
    """Read another tool's file into a DirectionSet (sites as in the table of
    :mod:`saetools.export.formats`).

    ``model`` (an ``nn.Module``, a :class:`saetools.models.LoadedModel` or a fingerprint dict) is
    checked: vector width against ``d_model``, layer indices against ``n_layers``; its fingerprint is
    recorded so the result is refused on other models later.
    """
    p = Path(path)
    if p.is_dir():
        raise InteropError(f"{p} is a directory; give the file to import")
    if not p.is_file():
        raise InteropError(f"file {p} does not exist")
    fmt = check_format(fmt) if fmt else detect_format(p)
    fp = fingerprint_of(model)
    if fmt in ("gguf", "repeng"):
        vectors, info = _read_gguf(p, allow_zero=fmt == "repeng")
        ds = _build(vectors, fmt, p, model, fp, info, shift=1, n_layers=n_layers)
    elif fmt == "steering-vectors":
        ds = _import_steering_vectors(p, model, fp, n_layers)
    elif fmt == "concept-ablation":
        ds = _import_concept_ablation(p, model, fp, n_layers)
    else:
        ds = _import_pt(p, model, fp, n_layers)
    return ds


def _import_steering_vectors(p: Path, model, fp, n_layers) -> DirectionSet:
    fmt = SV_FORMAT
    tensors, meta = _read_safetensors(p)
    lt = meta.get("layer_type", "decoder_block")
    if lt != "decoder_block":
        raise InteropError(
            f"{p}: layer_type {lt!r}; only decoder_block (block outputs) maps to saetools sites"
        )
    vectors = {}
    for k, v in tensors.items():
        m = re.fullmatch(r"(?:layer_activations\.)?(-?\d+)", k)
        if not m:
            raise InteropError(f"{p}: tensor {k!r} is not named by a layer index")
        idx = int(m.group(1))
        if idx < 0:
            nl = n_layers or (fp or {}).get("n_layers")
            if not nl:
                raise InteropError(f"{p}: layer {idx} counts from the end; pass the model")
            idx += int(nl)
        vectors[idx] = v
    return _build(vectors, fmt, p, model, fp, meta, shift=1, n_layers=n_layers)


def _import_concept_ablation(p: Path, model, fp, n_layers) -> DirectionSet:
    fmt = CA_FORMAT
    tensors, meta = _read_safetensors(p)
    vectors, names = {}, {}
    for k, q in tensors.items():
        if q.ndim != 2:
            raise InteropError(f"{p}: {k} has shape {tuple(q.shape)}; expected Q [d, n]")
        m = re.fullmatch(r"(?:.*\.)?(?:layers|h|blocks)\.(\d+)", k)
        if m:
            r = int(m.group(1)) + 1
        elif re.search(r"(embed_tokens|wte|embed_in)$", k):
            r = 0
        else:
            raise InteropError(
                f"{p}: module path {k!r} is neither a decoder layer (...layers.K) nor the "
                "embeddings (...embed_tokens)"
            )
        if r in vectors:
            raise InteropError(f"{p}: two module paths name hidden_states[{r}]")
        vectors[r] = q.T.contiguous()
        names[r] = site_of_residual_index(r)
    return _build(vectors, fmt, p, model, fp, meta, shift=0, n_layers=n_layers, names=names)


def _load_pt(p: Path):
    """``torch.load(weights_only=True)`` of the file's bytes: by content, never by name (given a
    path ending in ``.safetensors``, torch.load hands the file to safetensors)."""
    import pickle

    try:
        return torch.load(io.BytesIO(p.read_bytes()), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        try:
            read_header(p)
        except DirectionFileError:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise InteropError(
                f"{p} is not a readable tensor file, or it is truncated ({first}); "
                "only plain tensors are read (torch.load weights_only=True)"
            ) from e
        raise InteropError(
            f"{p} is a safetensors file, not a torch (.pt) tensor file: leave --format out, or "
            f"pass the format it holds ({SV_FORMAT} or {CA_FORMAT}); a saetools direction file "
            "needs no import"
        ) from e


def _import_pt(p: Path, model, fp, n_layers) -> DirectionSet:
    t = _load_pt(p)
    if isinstance(t, dict):
        cand = [v for v in t.values() if isinstance(v, torch.Tensor) and v.ndim == 2]
        if len(cand) != 1:
            raise InteropError(f"{p} holds a dict; expected one tensor [n_layers + 1, d]")
        t = cand[0]
    if not isinstance(t, torch.Tensor) or t.ndim != 2:
        raise InteropError(
            f"{p}: expected a tensor [n_layers + 1, d] indexed like hidden_states, got "
            f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
        )
    if t.dtype != torch.float32:
        raise InteropError(f"{p}: tensor is {t.dtype}, expected float32")
    n = n_layers or (fp or {}).get("n_layers")
    if n is not None and t.shape[0] != int(n) + 1:
        raise InteropError(
            f"{p} has {t.shape[0]} rows; a persona vector for this {n}-block model has {int(n) + 1} "
            "(hidden_states: embeddings + one per block): it was made for another model"
        )
    rows = {r: t[r].clone() for r in range(t.shape[0]) if bool(t[r].abs().sum() > 0)}
    return _build(
        rows, "pt", p, model, fp, {"rows": int(t.shape[0])}, shift=0, n_layers=t.shape[0] - 1
    )


def _safetensors_metadata(p: Path) -> dict:
    try:
        return read_header(p).get("__metadata__") or {}
    except DirectionFileError as e:
        raise InteropError(str(e)) from e


def _read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = _safetensors_metadata(p)
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise InteropError(f"{p} is corrupt or truncated: {e}") from e
    for k, v in tensors.items():
        if v.dtype != torch.float32:
            raise InteropError(f"{p}: tensor {k} is {v.dtype}, expected float32")
    return tensors, dict(meta)


def _read_gguf(p: Path, allow_zero: bool = False) -> tuple[dict[int, torch.Tensor], dict]:
    import gguf

    size = p.stat().st_size
    try:
        reader = gguf.GGUFReader(str(p))
        tensors = list(reader.tensors)
    except Exception as e:  # noqa: BLE001 - the reader raises many types on bad input
        raise InteropError(f"{p} is not a GGUF file, or it is truncated or corrupt ({e})") from e

    def field(name):
        f = reader.fields.get(name)
        if f is None:
            return None
        try:
            return f.contents()
        except Exception:  # noqa: BLE001
            return None

    arch = field("general.architecture")
    if arch != GGUF_ARCH:
        raise InteropError(
            f"{p} is a GGUF file with general.architecture {arch!r}, not a control vector "
            f"({GGUF_ARCH!r}); is it a model file?"
        )
    out: dict[int, torch.Tensor] = {}
    for t in tensors:
        m = re.fullmatch(r"direction\.(-?\d+)", t.name)
        if not m:
            raise InteropError(f"{p}: tensor {t.name!r} is not named direction.<layer>")
        k = int(m.group(1))
        if k < 0 or (k == 0 and not allow_zero):
            raise InteropError(
                f"{p}: tensor {t.name} names layer {k}; llama.cpp rejects it (direction.k is added "
                "to the output of block k, k >= 1; block 0's output cannot be steered there). A "
                "repeng file that steers block 0 in Python imports with --format repeng"
            )
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise InteropError(
                f"{p}: tensor {t.name} is {t.tensor_type.name}, expected F32 (llama.cpp reads only "
                "float32 control vectors)"
            )
        if len(t.shape) != 1 and int(np.prod(t.shape[1:])) != 1:
            raise InteropError(f"{p}: tensor {t.name} has shape {list(t.shape)}; expected 1-D")
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise InteropError(
                f"{p} is truncated: tensor {t.name} needs bytes up to "
                f"{int(t.data_offset) + int(t.n_bytes)}, the file has {size}"
            )
        if k in out:
            raise InteropError(f"{p}: two tensors named {t.name}")
        out[k] = torch.from_numpy(np.array(t.data, dtype=np.float32, copy=True).reshape(-1))
    if not out:
        raise InteropError(f"{p} holds no direction tensor")
    info = {
        "model_hint": field(f"{GGUF_ARCH}.model_hint"),
        "layer_count": field(f"{GGUF_ARCH}.layer_count"),
        "saetools.metadata": field("saetools.metadata"),
    }
    return out, info
