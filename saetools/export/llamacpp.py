"""Apply an exported control vector in llama-cpp-python, which has no file loader for them.

llama.cpp's own programs read a control vector GGUF with ``--control-vector FILE``; the Python
package only exposes the low-level ``llama_set_adapter_cvec(ctx, data, len, n_embd, il_start,
il_end)`` (``llama_apply_adapter_cvec`` / ``llama_control_vector_apply`` in older versions, same
arguments). :func:`read_control_vector` lays a file out as llama.cpp's
``common_control_vector_load`` does (``direction.k`` at offset ``n_embd * (k - 1)``, files added
together), and :func:`apply_control_vector` hands it to a ``llama_cpp.Llama``::

    from llama_cpp import Llama
    from saetools.export import apply_control_vector

    llm = Llama(model_path="gemma-3-270m-q4_k_m.gguf", n_ctx=512, verbose=False)
    apply_control_vector(llm, "em.gguf", scale=1.0)   # None removes it again

Needs ``llama-cpp-python`` (imported on use) and the ``gguf`` package (a saetools dependency).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

import numpy as np

from .formats import InteropError

_CVEC_FUNCTIONS = (
    "llama_set_adapter_cvec",
    "llama_apply_adapter_cvec",
    "llama_control_vector_apply",
)


def read_control_vector(
    paths: str | os.PathLike | Sequence[str | os.PathLike], n_layer: int, scale: float = 1.0
) -> tuple[np.ndarray, int]:
    """The flat float32 buffer llama.cpp takes for control vector file(s) on an ``n_layer``-block
    model, times ``scale``, and the vectors' width: ``direction.k`` at ``n_embd * (k - 1)``, padded
    to every layer 1 .. n_layer - 1 (so no vector of an earlier call stays on a layer)."""
    import gguf

    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    n_embd = -1
    data = np.zeros(0, dtype=np.float32)
    for path in files:
        reader = gguf.GGUFReader(str(path))
        for t in reader.tensors:
            name, _, idx = t.name.partition(".")
            if name != "direction" or not idx.isdigit() or int(idx) < 1:
                raise InteropError(f"{path}: {t.name} is not a control vector tensor direction.k")
            if t.tensor_type != gguf.GGMLQuantizationType.F32:
                raise InteropError(f"{path}: {t.name} is not float32")
            k = int(idx)
            if k >= n_layer:
                raise InteropError(f"{path}: {t.name} is beyond the model's {n_layer} blocks")
            v = np.array(t.data, dtype=np.float32).reshape(-1)
            if n_embd < 0:
                n_embd = v.size
                data = np.zeros(n_embd * (n_layer - 1), dtype=np.float32)
            if v.size != n_embd:
                raise InteropError(f"{path}: {t.name} is {v.size} wide, others are {n_embd}")
            data[n_embd * (k - 1) : n_embd * k] += scale * v
    if n_embd < 0:
        raise InteropError(f"no direction.k tensors in {', '.join(map(str, files))}")
    return data, n_embd


def _cvec_function(llama_cpp):
    for name in _CVEC_FUNCTIONS:
        fn = getattr(llama_cpp, name, None)
        if fn is not None:
            return fn
    raise InteropError(
        "this llama-cpp-python exposes no control-vector function (looked for "
        + ", ".join(_CVEC_FUNCTIONS)
        + ")"
    )


def apply_control_vector(llm, paths=None, *, scale: float = 1.0) -> None:
    """Steer the ``llama_cpp.Llama`` ``llm`` with control vector file(s) ``paths`` times
    ``scale`` from its next evaluation on; ``paths=None`` removes any control vector. Clear the
    Llama's own prefix cache (``llm.reset()``) before scoring text it has seen unsteered."""
    import llama_cpp

    fn = _cvec_function(llama_cpp)
    n_layer = int(llama_cpp.llama_model_n_layer(llm.model))
    n_embd_model = int(llama_cpp.llama_model_n_embd(llm.model))
    if paths is None:
        rc = fn(llm.ctx, None, 0, n_embd_model, -1, -1)
    else:
        data, n_embd = read_control_vector(paths, n_layer, scale)
        if n_embd != n_embd_model:
            raise InteropError(
                f"the control vector is {n_embd} wide but the model's residual stream is "
                f"{n_embd_model} wide (a file made for another model?)"
            )
        buf = (ctypes.c_float * data.size).from_buffer_copy(data.tobytes())
        llm._saetools_cvec = buf  # llama.cpp copies it, but keep it alive for older versions
        rc = fn(llm.ctx, buf, data.size, n_embd, 1, n_layer - 1)
    if rc != 0:
        raise InteropError(f"llama.cpp refused the control vector (return code {rc})")
