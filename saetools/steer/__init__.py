"""Inference-time steering: add, ablate and clamp along directions, in any forward pass or generation.

Three layers of API:

* **Operators**, plain callables on an activation ``h [..., d]``: :func:`add`, :func:`ablate`,
  :func:`clamp` (and :func:`projection`).
* :class:`Intervention`, one operator at one site with its vector, strength and token positions, and
  the context manager :func:`steer` that installs interventions as forward hooks through
  :func:`saetools.sites.hooks` and removes them on exit, whatever happens (exceptions,
  ``KeyboardInterrupt``). :func:`steer_tl` does the same with TransformerLens hook names on a
  ``TransformerBridge``.
* :func:`generate`: chat template, left padding, batched HF ``generate`` with the KV cache, answers
  back as strings.

Modules, in import order (each imports only the ones listed before it):

* :mod:`~saetools.steer.ops`: the operators, :data:`OPS`, and :class:`SteeringError`.
* :mod:`~saetools.steer.limits`: the ranges of strengths and sampling options, checked in one
  place (:func:`check_float32`, :func:`check_temperature`, :func:`check_top_p`,
  :func:`check_seed`, :data:`FLOAT32_MAX`); the command line's argparse types use them too.
* :mod:`~saetools.steer.positions`: token positions (``all``, ``prompt``, ``generated`` or a mask)
  as absolute columns, tracked through the KV cache (:class:`PositionTracker`), and
  :func:`check_positions`.
* :mod:`~saetools.steer.intervention`: :class:`Intervention` (raw or unit vector, validation),
  :func:`interventions_from_directions`, :func:`parse_alphas`, :func:`parse_site_alphas`,
  :data:`CLAMP_VALUE_KEYS`, :func:`scale_alpha` (norm-relative strengths).
* :mod:`~saetools.steer.hooks`: the :class:`steer` context manager.
* :mod:`~saetools.steer.tl`: the TransformerLens backend (:func:`bridge_from_hf`,
  :func:`tl_fwd_hooks`, :func:`steer_tl`).
* :mod:`~saetools.steer.generation`: :func:`generate`, :func:`encode_prompts`,
  :func:`as_messages`, :func:`context_length`.

Everything the single module ``saetools/steer.py`` exported is importable from
``saetools.steer`` (including ``pad_token_id``, which lives in :mod:`saetools.capture`).
"""

from __future__ import annotations

from ..callable_package import make_callable
from ..capture import pad_token_id
from .generation import as_messages, context_length, encode_prompts, generate
from .hooks import steer
from .intervention import (
    ALPHA_SCALES,
    CLAMP_VALUE_KEYS,
    Intervention,
    interventions_from_directions,
    parse_alphas,
    parse_site_alphas,
    scale_alpha,
    weak_alpha_note,
)
from .limits import FLOAT32_MAX, check_float32, check_seed, check_temperature, check_top_p
from .ops import OPS, SteeringError, ablate, add, clamp, projection
from .positions import POSITIONS, check_positions
from .tl import bridge_from_hf, steer_tl, tl_fwd_hooks

__all__ = [
    "ALPHA_SCALES",
    "CLAMP_VALUE_KEYS",
    "FLOAT32_MAX",
    "OPS",
    "POSITIONS",
    "Intervention",
    "SteeringError",
    "ablate",
    "add",
    "as_messages",
    "bridge_from_hf",
    "check_float32",
    "check_positions",
    "check_seed",
    "check_temperature",
    "check_top_p",
    "clamp",
    "context_length",
    "encode_prompts",
    "generate",
    "interventions_from_directions",
    "pad_token_id",
    "parse_alphas",
    "parse_site_alphas",
    "projection",
    "scale_alpha",
    "steer",
    "steer_tl",
    "tl_fwd_hooks",
    "weak_alpha_note",
]

# ``saetools.steer(model, interventions)`` works like ``saetools.steer.steer`` (see callable_package).
make_callable(__name__, steer)
