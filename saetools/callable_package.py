"""Packages that are also their headline function: ``saetools.steer`` and ``saetools.capture``.

``saetools.steer`` is a package *and* the context manager ``steer``; ``saetools.capture`` a
package *and* the function ``capture``. Python sets a package as an attribute of its parent when it
is imported, so ``from saetools import steer`` returns the package, whatever ``saetools/__init__``
says. :func:`make_callable` makes such a package callable: calling it calls its function, so
``with saetools.steer(model, interventions): ...`` and ``saetools.capture(model, tok, ...)`` work,
and so do ``saetools.steer.Intervention`` and ``from saetools.steer import steer``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable


class CallablePackage(types.ModuleType):
    """A module whose call runs the function named by its ``__call_target__`` attribute."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__call_target__)(*args, **kwargs)


def make_callable(module_name: str, function: Callable) -> None:
    """Make the module ``module_name`` callable as ``function`` (an attribute of that module)."""
    module = sys.modules[module_name]
    if getattr(module, function.__name__, None) is not function:
        raise ValueError(f"{function.__name__} is not an attribute of {module_name}")
    module.__call_target__ = function.__name__
    module.__class__ = CallablePackage
