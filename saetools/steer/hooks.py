"""The :class:`steer` context manager: interventions installed as forward hooks, always removed.

:class:`steer` validates every intervention against the model before any hook is installed, then
hooks each site through :func:`saetools.sites.hooks` and the top-level model through a
:class:`~saetools.steer.positions.PositionTracker`, and removes all of them on exit, whatever
happens (exceptions, ``KeyboardInterrupt``). :func:`as_interventions` and :func:`site_hook` are the
pieces the TransformerLens backend (:mod:`saetools.steer.tl`) shares.
"""

from __future__ import annotations

import torch
from torch import nn

from ..sites import Site, base_model, hooks
from .intervention import Intervention
from .ops import SteeringError
from .positions import PositionTracker


def _is_intervention(x) -> bool:
    """An :class:`Intervention`, or any object with the same protocol: ``site``, ``positions``,
    ``check(model) -> Site`` and ``apply(h) -> h`` (e.g. :class:`saetools.sae.LatentClamp`)."""
    return isinstance(x, Intervention) or (
        hasattr(x, "site")
        and hasattr(x, "positions")
        and callable(getattr(x, "check", None))
        and callable(getattr(x, "apply", None))
    )


def as_interventions(interventions) -> list:
    """One intervention or several as a list; refuse anything that is not one."""
    if _is_intervention(interventions):
        return [interventions]
    out = list(interventions)
    for iv in out:
        if not _is_intervention(iv):
            raise SteeringError(
                f"expected Intervention objects (or objects with site, positions, check(model) and apply(h)), "
                f"got {type(iv).__name__}"
            )
    return out


def site_hook(iv: Intervention, pos: PositionTracker):
    """The activation hook of ``iv``: apply its operator at the columns its positions select."""

    def fn(h: torch.Tensor) -> torch.Tensor | None:
        m = pos.mask(iv.positions, h)
        if m is False:
            return None
        new = iv.apply(h)
        if m is None:
            return new
        return torch.where(m[..., None], new, h)

    return fn


class steer:  # noqa: N801 - used like a function: ``with steer(model, interventions):``
    """Context manager steering every forward pass of ``model`` (including ``generate``).

    ``interventions`` is one :class:`Intervention` or a list; several at one site run in the order
    given. Everything is validated before any hook is installed; hooks are removed on exit even
    after exceptions or ``KeyboardInterrupt``, and the model is then exactly as before.
    ``prompt_len`` fixes where the prompt ends (int, or one column per row); otherwise it is found
    automatically (see :mod:`saetools.steer.positions`). ``ctx.reset(prompt_len)`` starts a new
    context.
    """

    def __init__(self, model: nn.Module, interventions, *, prompt_len=None):
        self.model = model
        self.interventions = as_interventions(interventions)
        self.sites: list[Site] = []
        for iv in self.interventions:
            self.sites.append(iv.check(model))
        self.positions = PositionTracker(prompt_len)
        self._hooks = hooks(
            model,
            [
                (s, site_hook(iv, self.positions))
                for s, iv in zip(self.sites, self.interventions, strict=True)
            ],
        )
        self._top: list = []

    def reset(self, prompt_len=None) -> None:
        """Forget the recorded prompt; with ``prompt_len``, fix it for the next calls."""
        self.positions.reset(prompt_len)

    def __enter__(self) -> steer:
        top = base_model(self.model)
        try:
            self._top.append(
                top.register_forward_pre_hook(self.positions.pre_hook, with_kwargs=True)
            )
            self._top.append(top.register_forward_hook(self.positions.post_hook, always_call=True))
            self._hooks.__enter__()
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        try:
            self._hooks.remove()
        finally:
            while self._top:
                self._top.pop().remove()
            self.positions.call = None

    def __exit__(self, *exc) -> None:
        self._remove()
