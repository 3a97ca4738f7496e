"""Devices and dtypes a model may run in, checked before loading, and float16 overflow, caught.

* :func:`check_device`: a CUDA (or MPS) device on a torch that has none is a clear error instead
  of torch's ``AssertionError: Torch not compiled with CUDA enabled``.
* :func:`check_dtype`: bfloat16 on a GPU without bfloat16 support is a clear error.
* :func:`check_float16_range` and :func:`guard_float16`: some models' residual streams leave
  float16's range (Gemma 3 scales its embeddings by sqrt(d_model); its residual norm reaches
  about 9,700 at block 10, 39,000 at its last block). In float16 they overflow into infinities, and greedy decoding then
  returns empty answers without any error. A float16 load runs one short forward and refuses the
  model when a block's output is not finite (naming the block), and a guard on the last block
  raises :class:`Float16OverflowError` whenever a later forward overflows.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .sites import get_blocks

FP16_MAX = float(torch.finfo(torch.float16).max)
# the text of the float16 check: ordinary prose, long enough to pass a few attention windows' worth
CHECK_TEXT = (
    "The committee met on Tuesday to review the budget. After a long discussion about schools, "
    "roads and the new library, they agreed to meet again next month and publish the minutes."
)


class DeviceError(ValueError):
    """The requested device or dtype is not available on this machine."""


class Float16OverflowError(RuntimeError):
    """A float16 model's activations left float16's range (infinities or NaN)."""


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, refusing one this machine (or this torch build) lacks."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise DeviceError(
                f"--device {device}: this torch ({torch.__version__}) is a CPU-only build without "
                "CUDA. Install a CUDA build of torch on a machine with an NVIDIA GPU, or use "
                "--device cpu."
            )
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {device}: torch has CUDA support but finds no usable GPU (driver or "
                "CUDA_VISIBLE_DEVICES?); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"--device {device}: MPS (Apple GPU) is not available here")
    return dev


def check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse bfloat16 on a CUDA GPU without bfloat16 support (before Ampere)."""
    if dtype == torch.bfloat16 and device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(device)
            raise DeviceError(
                f"--dtype bfloat16: the GPU {name} has no bfloat16 support (it needs compute "
                "capability 8.0 or newer); use --dtype float32, or float16 if the model's "
                "activations stay within float16's range"
            )


def _block_maxima(model: nn.Module, input_ids: torch.Tensor) -> list[float]:
    """The largest |activation| at each block's output for one forward of ``input_ids``."""
    maxima: list[float] = []

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        maxima.append(float(h.detach().abs().float().nan_to_num(nan=float("inf")).max()))

    handles = [b.register_forward_hook(hook) for b in get_blocks(model)]
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return maxima


def check_float16_range(model: nn.Module, tokenizer, name: str = "this model") -> float:
    """Run :data:`CHECK_TEXT` through a float16 ``model``; raise :class:`Float16OverflowError`
    naming the first block whose output is not finite, warn when a block comes within a factor
    of 4 of float16's limit. Returns the largest |activation| seen."""
    device = next(model.parameters()).device
    ids = tokenizer(CHECK_TEXT, return_tensors="pt")["input_ids"].to(device)
    maxima = _block_maxima(model, ids)
    for k, m in enumerate(maxima):
        if not m < float("inf"):
            raise Float16OverflowError(
                f"{name} overflows in float16: the output of block {k} "
                f"(blocks.{k}.hook_resid_post) leaves float16's range (max {FP16_MAX:.0f}) on a "
                "short ordinary text, and generation would return empty or garbage answers. Use "
                "--dtype bfloat16 (same range as float32) or float32."
            )
    top = max(maxima) if maxima else 0.0
    if top > FP16_MAX / 4:
        warnings.warn(
            f"{name} in float16: activations reach {top:.0f}, within a factor of 4 of float16's "
            f"limit {FP16_MAX:.0f}; steering or longer texts may overflow (bfloat16 is safer)",
            stacklevel=2,
        )
    return top


def guard_float16(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """A hook on the last block raising :class:`Float16OverflowError` when a forward's residual
    stream holds infinities or NaN (one reduction per forward). Remove it with the handle."""
    last = len(get_blocks(model)) - 1

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        if h.dtype == torch.float16 and not bool(torch.isfinite(h).all()):
            raise Float16OverflowError(
                f"float16 overflow: the residual stream after block {last} holds infinities or "
                "NaN (the activations, or the steering added to them, left float16's range). "
                "Use --dtype bfloat16 or float32, or a smaller steering strength."
            )

    return get_blocks(model)[last].register_forward_hook(hook)
