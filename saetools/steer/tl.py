"""The TransformerLens backend: the same interventions on a ``TransformerBridge``, with TL hook names.

:func:`bridge_from_hf` boots a ``TransformerBridge`` from an already loaded HF model (offline; the
bridge rewires the modules it wraps, so it works on a deep copy and leaves your model alone).
:func:`steer_tl` installs the same interventions through ``bridge.hooks`` with TL names
(``blocks.15.hook_resid_post``); :func:`tl_fwd_hooks` returns the ``(name, fn)`` list for
``run_with_hooks``. ``transformer_lens`` is imported only when a bridge is booted.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ..sites import base_model, parse_site
from .hooks import as_interventions, site_hook
from .intervention import Intervention
from .ops import SteeringError
from .positions import PositionTracker


def bridge_from_hf(model: nn.Module, tokenizer, *, copy_model: bool = True):
    """Boot a TransformerLens ``TransformerBridge`` around an already loaded HF causal LM (offline).

    The bridge replaces the modules it wraps inside the HF model, so by default it gets a deep copy
    and ``model`` stays a plain HF model. The bridge runs the same weights through HF's own forward.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf = copy.deepcopy(base_model(model)) if copy_model else base_model(model)
    name = getattr(hf.config, "_name_or_path", None) or type(hf).__name__
    device = next(hf.parameters()).device
    dtype = next(hf.parameters()).dtype
    # TransformerLens reloads a tokenizer by name to turn on add_bos_token, which fails for tokenizers
    # built in memory and would change how prompts tokenize. Give it a copy that says it is already
    # set up, so the bridge tokenizes exactly like ``tokenizer``.
    tok = copy.deepcopy(tokenizer)
    if tok is not None:
        tok.init_kwargs.setdefault("name_or_path", name)
        tok.init_kwargs["add_bos_token"] = True
    return TransformerBridge.boot_transformers(
        name, hf_model=hf, tokenizer=tok, device=device, dtype=dtype
    )


def _tl_check(bridge, iv: Intervention) -> str:
    n = int(bridge.cfg.n_layers)
    try:
        site = parse_site(iv.site, n)
    except ValueError as e:
        raise SteeringError(str(e)) from e
    if iv.d_model != int(bridge.cfg.d_model):
        raise SteeringError(
            f"{iv.op} at {iv.site}: the direction is {iv.d_model} wide but the bridge's d_model is {bridge.cfg.d_model}"
        )
    if site.name not in bridge.hook_dict:
        raise SteeringError(f"the TransformerBridge has no hook point {site.name}")
    return site.name


def tl_fwd_hooks(
    interventions, positions: PositionTracker | None = None, bridge=None
) -> list[tuple[str, object]]:
    """``[(hook_name, fn)]`` for ``bridge.run_with_hooks(..., fwd_hooks=...)`` / ``bridge.hooks(...)``.

    Without ``positions`` only ``positions="all"`` interventions work (there is no cache offset to
    read); :func:`steer_tl` tracks positions through the bridge's HF model.
    """
    interventions = as_interventions(interventions)
    out = []
    for iv in interventions:
        name = _tl_check(bridge, iv) if bridge is not None else parse_site(iv.site, 10**6).name
        if positions is None and not (isinstance(iv.positions, str) and iv.positions == "all"):
            raise SteeringError(
                "position rules other than 'all' need steer_tl (which tracks the KV cache)"
            )
        fn = site_hook(iv, positions or PositionTracker())

        def hook_fn(tensor, hook=None, _fn=fn):
            new = _fn(tensor)
            return tensor if new is None else new

        out.append((name, hook_fn))
    return out


@contextmanager
def steer_tl(bridge, interventions, *, prompt_len=None) -> Iterator[PositionTracker]:
    """Steer a ``TransformerBridge`` with TL hook names; hooks are removed on exit, whatever happens."""
    interventions = as_interventions(interventions)
    for iv in interventions:
        _tl_check(bridge, iv)
    pos = PositionTracker(prompt_len)
    fwd = tl_fwd_hooks(interventions, pos, bridge)
    top = bridge.original_model
    handles = []
    try:
        handles.append(top.register_forward_pre_hook(pos.pre_hook, with_kwargs=True))
        handles.append(top.register_forward_hook(pos.post_hook, always_call=True))
        with bridge.hooks(fwd_hooks=fwd):
            yield pos
    finally:
        while handles:
            handles.pop().remove()
