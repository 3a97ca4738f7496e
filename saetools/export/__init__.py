"""Export direction files to other tools' formats, and import theirs.

Formats: llama.cpp control vector GGUF (``gguf``), repeng (``repeng``), steering-vectors
(``steering-vectors``), persona-vector ``.pt`` (``pt``) and concept-ablation bases
(``concept-ablation``). Modules:

* :mod:`~saetools.export.formats`: the format names, how each indexes the residual stream
  (:func:`residual_index`, :func:`site_of_residual_index`), and :class:`InteropError`.
* :mod:`~saetools.export.writers`: :func:`export_directions` (which vectors are written: unit or
  raw, times ``alpha``; which sites a format cannot hold) and :func:`to_repeng`.
* :mod:`~saetools.export.llamacpp`: :func:`apply_control_vector` and :func:`read_control_vector`,
  a control vector GGUF applied to a ``llama_cpp.Llama`` (llama-cpp-python has no file loader).
* :mod:`~saetools.export.readers`: :func:`import_directions`, :func:`detect_format` and
  :func:`from_repeng` (what an imported file records, and the checks against a model).

Every public name of the former single module ``saetools/export.py`` imports from
``saetools.export``.
"""

from __future__ import annotations

from .formats import (
    CA_FORMAT,
    FORMATS,
    GGUF_ARCH,
    SV_FORMAT,
    InteropError,
    residual_index,
    site_of_residual_index,
)
from .llamacpp import apply_control_vector, read_control_vector
from .readers import detect_format, from_repeng, import_directions
from .writers import export_directions, to_repeng

__all__ = [
    "CA_FORMAT",
    "FORMATS",
    "GGUF_ARCH",
    "SV_FORMAT",
    "InteropError",
    "apply_control_vector",
    "detect_format",
    "export_directions",
    "from_repeng",
    "read_control_vector",
    "import_directions",
    "residual_index",
    "site_of_residual_index",
    "to_repeng",
]
