"""The ranges of the numbers steering and sampling take, checked in one place.

Steering vectors and activations are float32 (or narrower), so a strength beyond float32's range
(``|x| <= 3.4028235e38``) turns the activations into ``inf``/``NaN`` and the answer into nothing;
NaN and infinities are refused for the same reason. ``top_p`` is a probability in ``(0, 1]``,
``temperature`` a finite number ``>= 0`` (0 is greedy), and a seed an integer that
``torch.manual_seed`` takes (``-2**63 .. 2**64 - 1``).

Each ``check_*`` function returns the value as a Python number or raises
:class:`~saetools.steer.ops.SteeringError` (a ``ValueError``) naming the value, the option
(``name``) and the limit. The command line's argparse types (:mod:`saetools.cli.common`) and the
Python API (:class:`~saetools.steer.Intervention`, :func:`~saetools.steer.generate`,
:func:`~saetools.steer.parse_alphas`, ...) use the same functions, so both say the same thing.
"""

from __future__ import annotations

import math
import operator

from .ops import SteeringError

FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max
SEED_MIN = -(2**63)  # torch.manual_seed takes -2**63 .. 2**64 - 1
SEED_MAX = 2**64 - 1


def _number(value, name: str) -> float:
    if isinstance(value, bool):
        raise SteeringError(f"{name} must be a number, not {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SteeringError(f"{name} must be a number, not {value!r}") from None
    except OverflowError:  # an int too large for a float
        raise SteeringError(
            f"{name} ({_digits(value)}) must be a finite number within float32's range "
            f"(|x| <= {FLOAT32_MAX:.8g})"
        ) from None


def _digits(v: int) -> str:
    """A huge integer, shown without converting all of it (str() refuses over 4300 digits)."""
    if v.bit_length() <= 128:
        return str(v)
    return f"an integer of about {int(v.bit_length() * math.log10(2)) + 1} digits"


def check_float32(value, name: str = "alpha") -> float:
    """``value`` as a float: a finite number within float32's range, else a SteeringError."""
    v = _number(value, name)
    if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
        raise SteeringError(
            f"{name} must be a finite number within float32's range (|x| <= "
            f"{FLOAT32_MAX:.8g}), not {v:g}"
        )
    return v


def check_temperature(value, name: str = "temperature") -> float:
    """A sampling temperature: finite, ``>= 0`` (0 is greedy), within float32's range."""
    v = _number(value, name)
    if not v >= 0:  # also NaN
        raise SteeringError(f"{name} must be >= 0 (0 is greedy), not {v:g}")
    return check_float32(v, name)


def check_top_p(value, name: str = "top_p") -> float:
    """A nucleus-sampling threshold: a probability in ``(0, 1]``."""
    v = _number(value, name)
    if not 0 < v <= 1:  # also NaN
        raise SteeringError(f"{name} must be in (0, 1] (1: no nucleus filtering), not {v:g}")
    return v


def check_seed(value, name: str = "seed") -> int:
    """A random seed ``torch.manual_seed`` takes: an integer from ``-2**63`` to ``2**64 - 1``."""
    if isinstance(value, bool):
        raise SteeringError(f"{name} must be an integer, not {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        v = operator.index(value)
    except TypeError:
        raise SteeringError(f"{name} must be an integer, not {value!r}") from None
    if not SEED_MIN <= v <= SEED_MAX:
        raise SteeringError(
            f"{name} must be an integer from -2**63 to 2**64 - 1 (what torch.manual_seed takes), "
            f"not {_digits(v)}"
        )
    return v
