"""Export direction files to other tools' formats, and import theirs.

Every format names a place in the residual stream by its own index. saetools converts through one
number, the **residual index** ``r`` of a site: ``blocks.k.hook_resid_pre`` has ``r = k`` and
``blocks.k.hook_resid_post`` has ``r = k + 1`` (so ``r`` is the HF ``hidden_states`` index, and
``blocks.k.hook_resid_post`` is the same stream as ``blocks.(k+1).hook_resid_pre``).

=====================  ===============================  ======================================
format                 file                             index of ``blocks.k.hook_resid_post``
=====================  ===============================  ======================================
``gguf``               llama.cpp control vector GGUF    tensor ``direction.k`` (k >= 1 only)
``repeng``             repeng ``ControlVector``          ``directions[k]``; file = its GGUF
``steering-vectors``   safetensors ``{k: vector}``       ``layer_activations[k]``, decoder_block
``pt``                 persona-vector ``.pt`` tensor    row ``k + 1`` of ``[n_layers + 1, d]``
``concept-ablation``   safetensors ``{module: Q}``       ``model.layers.k`` -> ``Q [d, n]``
=====================  ===============================  ======================================

llama.cpp adds ``direction.k`` to the output of block k and rejects ``direction.0``, so block 0's
output (and ``blocks.0/1.hook_resid_pre``) cannot be written to a GGUF: an explicitly requested
site there is an error; with the default "every site in the file" such sites are skipped with a
warning. Attention and MLP output sites (``hook_attn_out``, ``hook_mlp_out``) have no equivalent
in these formats and are handled the same way.

**Vectors written.** By default the **unit** vector times ``alpha`` (``alpha`` defaults to 1), so a
file loaded at strength ``s`` in llama.cpp / repeng / steering-vectors steers like
``saetools steer --alpha (alpha * s)``. ``raw=True`` writes the raw stored vector times ``alpha``.
``raw=True, alpha=1`` round-trips exactly (export then import gives identical tensors). The
concept-ablation format stores an orthonormal basis ``Q [d, n]`` (``DirectionSet.basis``); it has no
scale, and ``alpha``/``raw`` are refused for it. The persona ``.pt`` format is a bare tensor
(``torch.load(weights_only=True)`` only), so rows without a direction are zeros and zero rows are
skipped on import. The other formats carry the source direction file's metadata (a JSON string
``saetools.metadata``), which import keeps under ``metadata["source_metadata"]``.

Imports record ``method = "import:<format>"``, the source file and its sha256, and, given a model,
its id and fingerprint; the width (``n_embd``) and the layer indices are checked against the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .directions import DirectionFileError, DirectionSet
from .sites import SITE_NAME_RE

FORMATS = ("gguf", "repeng", "steering-vectors", "pt", "concept-ablation")
_EXTENSIONS = {".gguf": "gguf", ".pt": "pt", ".pth": "pt"}
GGUF_ARCH = "controlvector"
SV_FORMAT = "steering-vectors"
CA_FORMAT = "concept-ablation"

__all__ = [
    "FORMATS",
    "InteropError",
    "detect_format",
    "export_directions",
    "from_repeng",
    "import_directions",
    "residual_index",
    "site_of_residual_index",
    "to_repeng",
]


class InteropError(DirectionFileError):
    """A file that cannot be exported to or imported from another tool's format."""


# --------------------------------------------------------------------------------------------
# Index conversion


def residual_index(site: str) -> int:
    """``hidden_states`` index of a residual-stream site (resid_pre k -> k, resid_post k -> k+1)."""
    m = SITE_NAME_RE.match(str(site))
    if not m or m.group(2) is not None:
        raise InteropError(f"{site!r} is not a single saetools site name")
    k, kind = int(m.group(1)), m.group(3)
    if kind == "resid_pre":
        return k
    if kind == "resid_post":
        return k + 1
    raise InteropError(
        f"site {site} ({kind}) is not on the residual stream; other tools' formats only hold "
        "residual-stream vectors (hook_resid_post / hook_resid_pre)"
    )


def site_of_residual_index(r: int) -> str:
    """The canonical saetools site of ``hidden_states[r]``: ``resid_pre 0`` for r = 0, else block r-1's output."""
    if r < 0:
        raise InteropError(f"negative residual index {r}")
    return "blocks.0.hook_resid_pre" if r == 0 else f"blocks.{r - 1}.hook_resid_post"


# Smallest residual index each format can express, and the tool's index of residual index r.
_MIN_R = {"gguf": 2, "repeng": 1, "steering-vectors": 1, "pt": 0, "concept-ablation": 0}
_WHY = {
    "gguf": "llama.cpp adds direction.k to the output of block k for k >= 1 only (direction.0 is "
    "rejected), so block 0's output and blocks.0/1.hook_resid_pre cannot be steered there",
    "repeng": "repeng and steering-vectors index block outputs; the embeddings "
    "(blocks.0.hook_resid_pre) are not one",
    "steering-vectors": "steering-vectors hooks block outputs; the embeddings "
    "(blocks.0.hook_resid_pre) are not one",
}


# --------------------------------------------------------------------------------------------
# Shared helpers


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of a file: by extension, then by the safetensors metadata."""
    p = Path(path)
    if p.suffix.lower() in _EXTENSIONS:
        return _EXTENSIONS[p.suffix.lower()]
    if p.suffix.lower() == ".safetensors" and p.is_file():
        meta = _safetensors_metadata(p)
        fmt = meta.get("format")
        if fmt in (SV_FORMAT, CA_FORMAT):
            return fmt
    raise InteropError(f"cannot tell the format of {p}; pass --format ({'|'.join(FORMATS)})")


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InteropError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def _check_out(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.parent.exists():
        raise InteropError(f"cannot write {p}: folder {p.parent} does not exist (create it first)")
    if p.is_dir():
        raise InteropError(f"cannot write {p}: it is a folder")
    return p


def _atomic_write(path: Path, write) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _select(ds: DirectionSet, sites, fmt: str) -> dict[int, tuple[str, torch.Tensor]]:
    """Map the chosen sites to residual indices, refusing or skipping what ``fmt`` cannot hold."""
    explicit = sites is not None and sites != "all"
    if explicit:
        if isinstance(sites, str):
            names = [s.strip() for s in sites.split(",") if s.strip()]
        else:
            names = [str(s) for s in sites]
        expanded = []
        for n in names:
            m = SITE_NAME_RE.match(n)
            if m and m.group(2) is not None:
                lo, hi = int(m.group(1)), int(m.group(2))
                expanded += [f"blocks.{k}.hook_{m.group(3)}" for k in range(lo, hi + 1)]
            else:
                expanded.append(n)
        for n in expanded:
            if n not in ds:
                raise InteropError(
                    f"the direction file has no vector for site {n}; it has: {', '.join(ds.sites)}"
                )
        chosen = expanded
    else:
        chosen = ds.sites
    out: dict[int, tuple[str, torch.Tensor]] = {}
    skipped = []
    for name in chosen:
        try:
            r = residual_index(name)
            if r < _MIN_R[fmt]:
                raise InteropError(f"site {name} cannot be written as {fmt}: {_WHY[fmt]}")
        except InteropError as e:
            if explicit:
                raise
            skipped.append((name, str(e)))
            continue
        if r in out:
            raise InteropError(
                f"sites {out[r][0]} and {name} are the same point of the residual stream "
                f"(hidden_states[{r}]); export one of them (--sites)"
            )
        out[r] = (name, ds.vector(name))
    if skipped:
        warnings.warn(
            f"{fmt} export skips {len(skipped)} site(s) it cannot hold: "
            + "; ".join(f"{n}" for n, _ in skipped[:6])
            + (" ..." if len(skipped) > 6 else "")
            + f" ({skipped[0][1].split(': ', 1)[-1]})",
            stacklevel=3,
        )
    if not out:
        raise InteropError(
            f"none of the sites ({', '.join(chosen)}) can be written as {fmt}"
            + (f": {skipped[0][1]}" if skipped else "")
        )
    return dict(sorted(out.items()))


def _scaled(ds: DirectionSet, name: str, v: torch.Tensor, alpha: float, raw: bool) -> torch.Tensor:
    if v.ndim == 2:
        if v.shape[0] != 1:
            raise InteropError(
                f"site {name} holds a {v.shape[0]}-dimensional basis; control-vector formats take "
                "one vector per layer (export it as concept-ablation, or pick one row)"
            )
        v = v[0]
    base = v if raw else ds.unit(name)
    out = base if float(alpha) == 1.0 else base * float(alpha)
    return out.to(torch.float32).contiguous()


def _export_meta(ds: DirectionSet, fmt: str, alpha: float, raw: bool, sites: dict) -> dict:
    return {
        "exported_from": "saetools",
        "format": fmt,
        "alpha": float(alpha),
        "vectors": "raw" if raw else "unit",
        "sites": {str(r): name for r, (name, _) in sites.items()},
        "metadata": ds.metadata,
    }


def _model_hint(ds: DirectionSet, hint: str | None) -> str:
    if hint:
        return hint
    fp = ds.metadata.get("fingerprint") or {}
    return str(fp.get("model_type") or "llama")


def _n_layers(ds: DirectionSet, n_layers: int | None) -> int | None:
    if n_layers is not None:
        return int(n_layers)
    fp = ds.metadata.get("fingerprint") or {}
    return int(fp["n_layers"]) if fp.get("n_layers") else None


# --------------------------------------------------------------------------------------------
# Export


def export_directions(
    ds: DirectionSet | str | os.PathLike,
    out: str | os.PathLike,
    fmt: str,
    *,
    alpha: float = 1.0,
    raw: bool = False,
    sites=None,
    model=None,
    force: bool = False,
    model_hint: str | None = None,
    n_layers: int | None = None,
    module_prefix: str | None = None,
) -> Path:
    """Write ``ds`` (a DirectionSet or a direction file) to ``out`` in another tool's format.

    ``sites``: None or ``"all"`` (every site of the file; sites the format cannot hold are skipped
    with a warning) or explicit names/ranges (any it cannot hold is an error). ``model``: optional
    model / fingerprint dict checked with :meth:`DirectionSet.check_model`. See the module doc for
    ``alpha``/``raw``.
    """
    fmt = _check_format(fmt)
    if not isinstance(ds, DirectionSet):
        ds = DirectionSet.load(ds)
    if model is not None:
        fp = _fingerprint(model)
        ds.check_model(fp, force=force)
        if n_layers is None and fp.get("n_layers"):
            n_layers = int(fp["n_layers"])
    out = _check_out(out)
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise InteropError(f"alpha must be a number, not {alpha!r}") from None
    if not np.isfinite(alpha):
        raise InteropError(f"alpha must be finite, not {alpha}")
    if fmt == "concept-ablation":
        if raw or alpha != 1.0:
            raise InteropError(
                "concept-ablation files hold an orthonormal basis with no scale: --alpha and --raw "
                "do not apply"
            )
        return _export_concept_ablation(ds, out, sites, module_prefix)
    chosen = _select(ds, sites, fmt)
    vecs = {r: _scaled(ds, name, v, alpha, raw) for r, (name, v) in chosen.items()}
    meta = _export_meta(ds, fmt, alpha, raw, chosen)
    if fmt == "repeng" and 0 in {r - 1 for r in vecs}:
        warnings.warn(
            "the repeng file holds layer 0 (block 0's output): repeng reads it, llama.cpp refuses "
            "the whole file (direction.0); export without block 0 for llama.cpp (--format gguf)",
            stacklevel=2,
        )
    if fmt in ("gguf", "repeng"):
        return _write_gguf(
            out, {r - 1: v for r, v in vecs.items()}, _model_hint(ds, model_hint), meta
        )
    if fmt == "steering-vectors":
        from safetensors.torch import save_file

        header = {
            "format": SV_FORMAT,
            "layer_type": "decoder_block",
            "saetools.metadata": json.dumps(meta, sort_keys=True),
        }
        tensors = {str(r - 1): v for r, v in vecs.items()}
        return _atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=header))
    # persona-vector .pt
    n = _n_layers(ds, n_layers)
    if n is None:
        raise InteropError(
            "a persona-vector .pt needs the model's number of blocks (rows = n_layers + 1): the "
            "direction file records no fingerprint; pass n_layers (--n-layers) or --model"
        )
    if max(vecs) > n:
        raise InteropError(f"site {chosen[max(vecs)][0]} is beyond a {n}-block model")
    table = torch.zeros(n + 1, ds.d_model, dtype=torch.float32)
    for r, v in vecs.items():
        table[r] = v
    return _atomic_write(out, lambda tmp: torch.save(table, tmp))


def _write_gguf(out: Path, directions: dict[int, torch.Tensor], hint: str, meta: dict) -> Path:
    import gguf

    def write(tmp):
        w = gguf.GGUFWriter(tmp, GGUF_ARCH)
        w.add_string(f"{GGUF_ARCH}.model_hint", hint)
        w.add_uint32(f"{GGUF_ARCH}.layer_count", len(directions))
        w.add_string("saetools.metadata", json.dumps(meta, sort_keys=True))
        for k, v in sorted(directions.items()):
            w.add_tensor(f"direction.{k}", v.numpy().astype(np.float32, copy=False))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    return _atomic_write(out, write)


def _prefix_for(ds: DirectionSet, module_prefix: str | None) -> tuple[str, str]:
    """Decoder-layer prefix and embedding module path for concept-ablation module names."""
    if module_prefix:
        return module_prefix.rstrip(
            "."
        ), f"{module_prefix.rstrip('.').rsplit('.', 1)[0]}.embed_tokens"
    mt = (ds.metadata.get("fingerprint") or {}).get("model_type")
    if mt == "gpt2":
        return "transformer.h", "transformer.wte"
    if mt == "gpt_neox":
        return "gpt_neox.layers", "gpt_neox.embed_in"
    return "model.layers", "model.embed_tokens"


def _export_concept_ablation(ds, out: Path, sites, module_prefix) -> Path:
    from safetensors.torch import save_file

    chosen = _select(ds, sites, "concept-ablation")
    layers, embed = _prefix_for(ds, module_prefix)
    tensors = {}
    for r, (name, _) in chosen.items():
        path = embed if r == 0 else f"{layers}.{r - 1}"
        tensors[path] = ds.basis(name).T.contiguous()  # [d, n], orthonormal columns
    meta = _export_meta(ds, "concept-ablation", 1.0, False, chosen)
    header = {
        "format": CA_FORMAT,
        "layers": layers,
        "embeddings": embed,
        "saetools.metadata": json.dumps(meta, sort_keys=True),
    }
    return _atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=header))


# --------------------------------------------------------------------------------------------
# repeng ControlVector (dict form, without importing repeng)


def to_repeng(
    ds: DirectionSet, *, alpha: float = 1.0, raw: bool = False, sites=None, model_hint=None
) -> dict:
    """``{"model_type": ..., "directions": {k: np.ndarray}}``: ``repeng.ControlVector(**d)`` takes it.

    Key k is repeng's layer k, the output of block k (``blocks.k.hook_resid_post``).
    """
    chosen = _select(ds, sites, "repeng")
    return {
        "model_type": _model_hint(ds, model_hint),
        "directions": {
            r - 1: _scaled(ds, name, v, alpha, raw).numpy().copy()
            for r, (name, v) in chosen.items()
        },
    }


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
    fp = _fingerprint(model)
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


# --------------------------------------------------------------------------------------------
# Import


def _fingerprint(model) -> dict | None:
    if model is None:
        return None
    if isinstance(model, dict):
        return model
    fp = getattr(model, "fingerprint", None)  # a LoadedModel carries its fingerprint
    if isinstance(fp, dict):
        return fp
    from .models import fingerprint

    return fingerprint(model)


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
        try:
            meta["source_metadata"] = json.loads(embedded)
        except json.JSONDecodeError:
            meta["source_metadata"] = embedded
    inner = meta.get("source_metadata")
    inner = inner.get("metadata") if isinstance(inner, dict) else None
    if isinstance(inner, dict):  # a saetools export: keep what still describes the vectors
        for key in ("aggregation", "sign", "probe_set", "counts"):
            if key in inner:
                meta[key] = inner[key]
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
    """Read another tool's file into a DirectionSet (sites as in the table of the module doc).

    ``model`` (an ``nn.Module``, a :class:`saetools.models.LoadedModel` or a fingerprint dict) is
    checked: vector width against ``d_model``, layer indices against ``n_layers``; its fingerprint is
    recorded so the result is refused on other models later.
    """
    p = Path(path)
    if not p.is_file():
        raise InteropError(f"file {p} does not exist")
    fmt = _check_format(fmt) if fmt else detect_format(p)
    fp = _fingerprint(model)
    if fmt in ("gguf", "repeng"):
        vectors, info = _read_gguf(p, allow_zero=fmt == "repeng")
        ds = _build(vectors, fmt, p, model, fp, info, shift=1, n_layers=n_layers)
    elif fmt == "steering-vectors":
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
        ds = _build(vectors, fmt, p, model, fp, meta, shift=1, n_layers=n_layers)
    elif fmt == "concept-ablation":
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
        ds = _build(vectors, fmt, p, model, fp, meta, shift=0, n_layers=n_layers, names=names)
    else:
        ds = _import_pt(p, model, fp, n_layers)
    return ds


def _import_pt(p: Path, model, fp, n_layers) -> DirectionSet:
    import pickle

    try:
        t = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise InteropError(
            f"{p} is not a readable tensor file, or it is truncated ({str(e).splitlines()[0]}); "
            "only plain tensors are read (torch.load weights_only=True)"
        ) from e
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
    from .directions import read_header

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
