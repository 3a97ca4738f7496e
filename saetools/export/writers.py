"""Write direction files in other tools' formats (see :mod:`saetools.export.formats` for the indices).

llama.cpp adds ``direction.k`` to the output of block k and rejects ``direction.0``, so block 0's
output (and ``blocks.0/1.hook_resid_pre``) cannot be written to a GGUF: an explicitly requested
site there is an error; with the default "every site in the file" such sites are skipped with a
warning. Attention and MLP output sites (``hook_attn_out``, ``hook_mlp_out``) have no equivalent
in these formats and are handled the same way.

**Vectors written.** By default the **unit** vector times ``alpha`` (``alpha`` defaults to 1), so a
file loaded at strength ``s`` in llama.cpp / repeng / steering-vectors steers like
``saetools steer --alpha (alpha * s)``. ``raw=True`` writes the raw stored vector times ``alpha``.
``alpha_scale="norm"`` reads ``alpha`` as a fraction of each site's mean residual
norm. ``raw=True, alpha=1`` round-trips exactly (export then import gives identical tensors). The
concept-ablation format stores an orthonormal basis ``Q [d, n]`` (``DirectionSet.basis``); it has no
scale, and ``alpha``/``raw`` are refused for it. The persona ``.pt`` format is a bare tensor, so rows
without a direction are zeros. The other formats carry the source direction file's metadata (a
JSON string ``saetools.metadata``). A llama.cpp GGUF's ``controlvector.model_hint`` is llama.cpp's
architecture name (``gemma3`` for HF's ``gemma3_text``; :func:`saetools.known_models.llamacpp_arch`);
a repeng file keeps HF's ``model_type``, which repeng reads back.

:func:`export_directions` writes a file; :func:`to_repeng` returns repeng's ``ControlVector`` dict
form without importing repeng.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..directions import DirectionSet
from ..known_models import llamacpp_arch
from ..sites import SITE_NAME_RE
from ..steer import FLOAT32_MAX, SteeringError, check_float32, scale_alpha
from .formats import (
    CA_FORMAT,
    GGUF_ARCH,
    SV_FORMAT,
    InteropError,
    check_format,
    fingerprint_of,
    residual_index,
)

# Smallest residual index each format can express, and why the ones below it cannot be written.
_MIN_R = {"gguf": 2, "repeng": 1, "steering-vectors": 1, "pt": 0, "concept-ablation": 0}
_WHY = {
    "gguf": "llama.cpp adds direction.k to the output of block k for k >= 1 only (direction.0 is "
    "rejected), so block 0's output and blocks.0/1.hook_resid_pre cannot be steered there",
    "repeng": "repeng and steering-vectors index block outputs; the embeddings "
    "(blocks.0.hook_resid_pre) are not one",
    "steering-vectors": "steering-vectors hooks block outputs; the embeddings "
    "(blocks.0.hook_resid_pre) are not one",
}


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
    if not torch.isfinite(out).all():
        raise InteropError(
            f"alpha {float(alpha):g} times the vector at {name} is not a finite float32 vector "
            f"(float32's range: |x| <= {FLOAT32_MAX:.8g})"
        )
    return out.to(torch.float32).contiguous()


def _site_alpha(ds: DirectionSet, name: str, alpha: float, alpha_scale: str, raw: bool) -> float:
    """``alpha`` at site ``name`` in activation units (see :func:`saetools.steer.scale_alpha`)."""
    try:
        return scale_alpha(ds, name, alpha, alpha_scale, unit=not raw)
    except ValueError as e:
        raise InteropError(str(e)) from None


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
    alpha_scale: str = "abs",
) -> Path:
    """Write ``ds`` (a DirectionSet or a direction file) to ``out`` in another tool's format.

    ``sites``: None or ``"all"`` (every site of the file; sites the format cannot hold are skipped
    with a warning) or explicit names/ranges (any it cannot hold is an error). ``model``: optional
    model / fingerprint dict checked with :meth:`DirectionSet.check_model`. See the module doc of
    :mod:`saetools.export.writers` for ``alpha``/``raw``; ``alpha_scale="norm"``: ``alpha`` is a
    fraction of each site's mean residual norm (:func:`saetools.steer.scale_alpha`).
    """
    fmt = check_format(fmt)
    if not isinstance(ds, DirectionSet):
        ds = DirectionSet.load(ds)
    if model is not None:
        fp = fingerprint_of(model)
        ds.check_model(fp, force=force)
        if n_layers is None and fp.get("n_layers"):
            n_layers = int(fp["n_layers"])
    out = _check_out(out)
    try:
        alpha = check_float32(alpha, "alpha")
    except SteeringError as e:
        raise InteropError(str(e)) from None
    if fmt == "concept-ablation":
        if raw or alpha != 1.0:
            raise InteropError(
                "concept-ablation files hold an orthonormal basis with no scale: --alpha and --raw "
                "do not apply"
            )
        return _export_concept_ablation(ds, out, sites, module_prefix)
    chosen = _select(ds, sites, fmt)
    vecs = {
        r: _scaled(ds, name, v, _site_alpha(ds, name, alpha, alpha_scale, raw), raw)
        for r, (name, v) in chosen.items()
    }
    meta = _export_meta(ds, fmt, alpha, raw, chosen)
    if alpha_scale != "abs":
        meta["alpha_scale"] = alpha_scale
    if fmt == "repeng" and 0 in {r - 1 for r in vecs}:
        warnings.warn(
            "the repeng file holds layer 0 (block 0's output): repeng reads it, llama.cpp refuses "
            "the whole file (direction.0); export without block 0 for llama.cpp (--format gguf)",
            stacklevel=2,
        )
    if fmt in ("gguf", "repeng"):
        hint = _model_hint(ds, model_hint)
        if fmt == "gguf" and not model_hint:
            hint = llamacpp_arch(hint)  # llama.cpp's name (gemma3), not HF's (gemma3_text)
        return _write_gguf(out, {r - 1: v for r, v in vecs.items()}, hint, meta)
    if fmt == "steering-vectors":
        return _write_steering_vectors(out, vecs, meta)
    return _write_persona_pt(ds, out, vecs, chosen, n_layers)


def _write_steering_vectors(out: Path, vecs: dict[int, torch.Tensor], meta: dict) -> Path:
    """safetensors ``{k: vector}`` with k the block whose output the vector steers."""
    from safetensors.torch import save_file

    header = {
        "format": SV_FORMAT,
        "layer_type": "decoder_block",
        "saetools.metadata": json.dumps(meta, sort_keys=True),
    }
    tensors = {str(r - 1): v for r, v in vecs.items()}
    return _atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=header))


def _write_persona_pt(
    ds: DirectionSet, out: Path, vecs: dict[int, torch.Tensor], chosen: dict, n_layers: int | None
) -> Path:
    """A bare tensor ``[n_layers + 1, d]`` indexed like ``hidden_states`` (zeros where no vector)."""
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
