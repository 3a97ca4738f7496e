"""Site names (TransformerLens style) and where they live in a Hugging Face model.

A *site* is a place in the residual stream, named as in TransformerLens:

* ``blocks.{k}.hook_resid_pre``  - the input of block k (HF ``hidden_states[k]``)
* ``blocks.{k}.hook_resid_post`` - the output of block k (HF ``hidden_states[k+1]``, except that HF
  applies the final norm to its last entry; saetools never does)
* ``blocks.{k}.hook_attn_out``   - what attention adds to the residual stream in block k
* ``blocks.{k}.hook_mlp_out``    - what the MLP adds to the residual stream in block k

This module parses names (with ``all`` and ranges such as ``blocks.10-20.hook_resid_post``), maps
them to modules of Llama, Qwen2, Mistral, Gemma/Gemma2/Gemma3, GPT-2 and GPT-NeoX style models, and
installs a hook that hands a site's activation ``[batch, seq, d_model]`` to a callback which may
replace it. Capture, steering and the regularizers all use this one mechanism.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

KINDS = ("resid_pre", "attn_out", "mlp_out", "resid_post")
# Order of sites inside one block, for "deepest site" computations.
KIND_ORDER = {"resid_pre": 0, "attn_out": 1, "mlp_out": 2, "resid_post": 3}
SITE_NAME_RE = re.compile(
    r"^blocks\.(\d+)(?:-(\d+))?\.hook_(resid_pre|resid_post|attn_out|mlp_out)$"
)

ActivationFn = Callable[[torch.Tensor], "torch.Tensor | None"]


class SiteError(ValueError):
    """An unknown, malformed or out-of-range site name."""


@dataclass(frozen=True, order=True)
class Site:
    """One hook site. Sorts by depth in the forward pass."""

    layer: int
    order: int
    kind: str

    @classmethod
    def make(cls, layer: int, kind: str) -> Site:
        if kind not in KIND_ORDER:
            raise SiteError(f"unknown site kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        return cls(layer=int(layer), order=KIND_ORDER[kind], kind=kind)

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.kind}"

    def __str__(self) -> str:
        return self.name


def valid_site_help(n_layers: int) -> str:
    return (
        f"valid sites: blocks.{{k}}.hook_{{{'|'.join(KINDS)}}} with k in 0..{n_layers - 1}, "
        f"ranges like blocks.0-{n_layers - 1}.hook_resid_post, or 'all' (every block's hook_resid_post)"
    )


def parse_site(name: str, n_layers: int) -> Site:
    """Parse one site name (no ranges) and check the layer is inside the model."""
    sites = parse_sites(name, n_layers)
    if len(sites) != 1:
        raise SiteError(f"expected a single site, got {name!r} ({len(sites)} sites)")
    return sites[0]


def parse_sites(spec: str | Iterable[str] | Site | Iterable[Site], n_layers: int) -> list[Site]:
    """Parse site names: a comma-separated string, a list, ``all``, or ranges ``blocks.a-b.hook_x``.

    ``all`` means every block's ``hook_resid_post``; ``all:hook_resid_pre`` picks another kind.
    Returns sorted, de-duplicated sites; raises :class:`SiteError` naming the problem.
    """
    if isinstance(spec, Site):
        items: list = [spec]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    if not items:
        raise SiteError("no sites given; " + valid_site_help(n_layers))
    out: set[Site] = set()
    for item in items:
        if isinstance(item, Site):
            _check_layer(item.layer, item.name, n_layers)
            out.add(item)
            continue
        text = str(item).strip()
        if text == "all" or text.startswith("all:"):
            kind = text[4:].removeprefix("hook_") if text.startswith("all:") else "resid_post"
            if kind not in KIND_ORDER:
                raise SiteError(f"unknown site kind in {text!r}; " + valid_site_help(n_layers))
            out.update(Site.make(k, kind) for k in range(n_layers))
            continue
        m = SITE_NAME_RE.match(text)
        if not m:
            raise SiteError(f"unknown site {text!r}; " + valid_site_help(n_layers))
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise SiteError(f"empty layer range in {text!r}: {lo} > {hi}")
        for k in (lo, hi):
            _check_layer(k, text, n_layers)
        out.update(Site.make(k, m.group(3)) for k in range(lo, hi + 1))
    return sorted(out)


def _check_layer(k: int, text: str, n_layers: int) -> None:
    if not 0 <= k < n_layers:
        raise SiteError(
            f"layer {k} in site {text!r} is out of range: this model has {n_layers} blocks (0..{n_layers - 1})"
        )


def deepest(sites: Sequence[Site]) -> Site:
    return max(sites)


# --------------------------------------------------------------------------------------------
# Model structure


def base_model(model: nn.Module) -> nn.Module:
    """Strip PEFT and task-head wrappers down to the transformers PreTrainedModel."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_peft(model: nn.Module) -> bool:
    """True for a PEFT model whose adapters can be switched off (``disable_adapter``)."""
    return hasattr(model, "peft_config") and callable(getattr(model, "disable_adapter", None))


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a supported HF causal LM (PEFT wrappers allowed)."""
    m = base_model(model)
    for path in (
        "model.layers",
        "transformer.h",
        "gpt_neox.layers",
        "model.decoder.layers",
        "layers",
        "h",
    ):
        obj = m
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise SiteError(
        f"cannot find the decoder blocks of {type(m).__name__}; supported: Llama, Qwen2, Mistral, Gemma, "
        "GPT-2 and GPT-NeoX style models"
    )


def n_layers(model: nn.Module) -> int:
    return len(get_blocks(model))


def d_model(model: nn.Module) -> int:
    cfg = base_model(model).config
    for attr in ("hidden_size", "n_embd", "d_model"):
        if hasattr(cfg, attr):
            return int(getattr(cfg, attr))
    raise SiteError(f"cannot read the residual width of {type(model).__name__}")


def _first_attr(block: nn.Module, names: Sequence[str]) -> nn.Module | None:
    for name in names:
        mod = getattr(block, name, None)
        if isinstance(mod, nn.Module):
            return mod
    return None


@dataclass(frozen=True)
class HookPoint:
    """Where a site's activation is read: the output of ``module``, or its first input."""

    module: nn.Module
    is_input: bool


def hook_point(model: nn.Module, site: Site) -> HookPoint:
    """Resolve a site to a module of the model."""
    blocks = get_blocks(model)
    _check_layer(site.layer, site.name, len(blocks))
    block = blocks[site.layer]
    if site.kind == "resid_pre":
        return HookPoint(block, is_input=True)
    if site.kind == "resid_post":
        return HookPoint(block, is_input=False)
    if site.kind == "attn_out":
        # Gemma2/3 normalise the attention output before adding it to the residual.
        if hasattr(block, "pre_feedforward_layernorm") and hasattr(
            block, "post_attention_layernorm"
        ):
            return HookPoint(block.post_attention_layernorm, is_input=False)
        mod = _first_attr(block, ("self_attn", "attn", "attention"))
    else:  # mlp_out
        mod = _first_attr(block, ("post_feedforward_layernorm", "mlp", "feed_forward"))
    if mod is None:
        raise SiteError(
            f"cannot find the module for {site.name} in block type {type(block).__name__}"
        )
    return HookPoint(mod, is_input=False)


def add_hook(model: nn.Module, site: Site, fn: ActivationFn) -> torch.utils.hooks.RemovableHandle:
    """Install ``fn`` at ``site``; it gets the activation ``[batch, seq, d]`` and may return a replacement.

    The caller must remove the returned handle; prefer :func:`hooks` which does so even on errors.
    """
    hp = hook_point(model, site)
    if hp.is_input:

        def pre_hook(module, args, kwargs):
            if args:
                new = fn(args[0])
                if new is not None:
                    return (new, *args[1:]), kwargs
            else:
                new = fn(kwargs["hidden_states"])
                if new is not None:
                    kwargs = dict(kwargs)
                    kwargs["hidden_states"] = new
                    return args, kwargs
            return None

        return hp.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(module, args, output):
        if isinstance(output, tuple):
            new = fn(output[0])
            if new is not None:
                return (new, *output[1:])
            return None
        new = fn(output)
        return new

    return hp.module.register_forward_hook(post_hook)


class hooks:  # noqa: N801 - used like a function: ``with hooks(model, {site: fn}):``
    """Context manager installing several site hooks; all are removed on exit, even after errors."""

    def __init__(
        self, model: nn.Module, fns: dict[Site, ActivationFn] | Sequence[tuple[Site, ActivationFn]]
    ):
        self.model = model
        self.items = list(fns.items()) if isinstance(fns, dict) else list(fns)
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> hooks:
        try:
            for site, fn in self.items:
                self.handles.append(add_hook(self.model, site, fn))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __exit__(self, *exc) -> None:
        self.remove()
