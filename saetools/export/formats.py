"""The formats saetools converts to and from, and how each names a place in the residual stream.

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

:func:`residual_index` and :func:`site_of_residual_index` convert; :func:`check_format` refuses an
unknown format name; :func:`fingerprint_of` reads the fingerprint of the model both directions
check against.
"""

from __future__ import annotations

from ..directions import DirectionFileError
from ..models import fingerprint
from ..sites import SITE_NAME_RE

FORMATS = ("gguf", "repeng", "steering-vectors", "pt", "concept-ablation")
GGUF_ARCH = "controlvector"
SV_FORMAT = "steering-vectors"
CA_FORMAT = "concept-ablation"


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


def check_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`FORMATS`; else an :class:`InteropError`."""
    if fmt not in FORMATS:
        raise InteropError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def fingerprint_of(model) -> dict | None:
    """The fingerprint of ``model`` (an ``nn.Module``, a LoadedModel or a fingerprint dict), or None."""
    if model is None:
        return None
    if isinstance(model, dict):
        return model
    fp = getattr(model, "fingerprint", None)  # a LoadedModel carries its fingerprint
    if isinstance(fp, dict):
        return fp
    return fingerprint(model)
