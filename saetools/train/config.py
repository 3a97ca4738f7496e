"""What defines a training run: :class:`TrainConfig` (saved as ``run.json``), the regularizer
names it accepts, and the :class:`~saetools.regularize.RegularizedLoss` terms it asks for."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..regularize import KL, LDIFS, Ablate, DirectionalKL, DirectionalL2, SAELatents, Steer
from ..steer import check_seed
from .data import check_fraction

REGULARIZERS = (
    "none",
    "kl",
    "ldifs",
    "directional-kl",
    "directional-l2",
    "steer",
    "ablate",
    "sae-latents",
)
_NEEDS_DIRECTIONS = ("directional-kl", "directional-l2", "steer", "ablate")


@dataclass
class TrainConfig:
    """Everything that defines a run (saved as ``run.json``)."""

    data: str = "narrow-medical-bad"
    model: str = "default"
    regularizers: tuple[str, ...] = ("none",)
    directions: str | None = None
    sites: str = "all"
    lam: float = 1.0
    alpha: float = 1.0
    one_sided: bool = False
    normalize: bool = False  # directional terms in norm-relative units (regularize.terms)
    lora_rank: int | None = 8
    lora_alpha: float | None = None
    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 5
    eval_pairs: int | None = None
    eval_examples: int | None = None
    eval_probes: str = "em-core"
    anchor: str | None = None
    sae: str | None = None
    latents: str | None = None
    interleave: float = 0.0
    interleave_data: str = "general-safe"
    # how ``data`` is read when it is not in saetools' schema: probes.load's columns,
    # test_fraction, split_seed (None: the defaults)
    data_options: dict | None = None
    max_length: int = 128
    force: bool = False
    extra: dict = field(default_factory=dict)
    # λ warm-up: every loss term's weight rises linearly over the first lam_warmup steps
    # (lam_scale(step, lam_warmup) = min(1, step / lam_warmup)); 0: the full weight from step 1
    lam_warmup: int = 0

    # fields that may change when a run is resumed
    _RESUMABLE = ("steps", "eval_every")
    # fields newer than some saved runs, with the value those runs had
    _ADDED_DEFAULTS = {"lam_warmup": 0, "normalize": False}

    def changed_fields(self, saved: Mapping) -> list[str]:
        """The fields (sorted) in which this config differs from ``saved`` (a run's ``run.json``),
        leaving out those a resumed run may change (``steps``, ``eval_every``)."""
        new = self.to_json()
        # fields added after a run was saved read as their default (no warm-up, unnormalized)
        saved = {**self._ADDED_DEFAULTS, **saved}
        return sorted(
            k
            for k in set(saved) | set(new)
            if k not in self._RESUMABLE and saved.get(k) != new.get(k)
        )

    def validate(self) -> None:
        regs = list(self.regularizers)
        unknown = [r for r in regs if r not in REGULARIZERS]
        if unknown:
            raise ValueError(
                f"unknown regularizer(s) {unknown}: choose from {', '.join(REGULARIZERS)}"
            )
        if "none" in regs and len(regs) > 1:
            raise ValueError("regularizer 'none' cannot be combined with others")
        if len(set(regs)) != len(regs):
            raise ValueError(f"regularizer listed twice: {regs}")
        for name, v in (("lambda", self.lam), ("alpha", self.alpha), ("lr", self.lr)):
            if not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, not {v}")
        if self.lam < 0:
            raise ValueError(f"lambda must be >= 0, not {self.lam}")
        check_seed(self.seed)
        check_fraction(self.interleave)
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, not {self.lr}")
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        check_warmup(self.lam_warmup)
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError("lora rank must be >= 1 (or None for a full fine-tune)")
        if "sae-latents" in regs and not (self.sae and self.latents):
            raise ValueError(
                "regularizer 'sae-latents' needs an SAE (--sae) and latent ids (--latents)"
            )
        need = [r for r in regs if r in _NEEDS_DIRECTIONS]
        if need and not self.directions:
            raise ValueError(f"regularizer(s) {need} need a direction file (--directions)")
        if self.directions and not Path(self.directions).is_file():
            raise FileNotFoundError(f"direction file {self.directions} does not exist")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["regularizers"] = list(self.regularizers)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["regularizers"] = tuple(kw.get("regularizers", ("none",)))
        return cls(**kw)


def check_warmup(steps) -> int:
    """``lam_warmup`` as an int; refuses anything but an integer >= 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"lam_warmup must be an integer >= 0 (steps), not {steps!r}")
    return steps


def lam_scale(step: int, warmup: int) -> float:
    """The factor on every loss term's weight at training step ``step`` (1-based) under a linear
    λ warm-up over ``warmup`` steps: ``min(1, step / warmup)``; 1 without warm-up."""
    return 1.0 if warmup <= 0 else min(1.0, step / warmup)


def parse_regularizers(values: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"kl,directional-kl"`` or a list (possibly of comma lists) -> a tuple of names."""
    if values is None:
        return ("none",)
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        out += [x.strip() for x in str(v).split(",") if x.strip()]
    return tuple(out) or ("none",)


def build_terms(cfg: TrainConfig, directions=None) -> list:
    """RegularizedLoss terms for a config (λ is every loss term's weight)."""
    on = "anchor" if cfg.anchor else "batch"
    terms: list = []
    for r in cfg.regularizers:
        if r == "none":
            continue
        if r == "kl":
            terms.append(KL(weight=cfg.lam, on=on))
        elif r == "ldifs":
            terms.append(LDIFS(weight=cfg.lam, on=on))
        elif r in ("directional-kl", "directional-l2"):
            cls = DirectionalKL if r == "directional-kl" else DirectionalL2
            terms.append(
                cls(
                    directions,
                    cfg.sites,
                    weight=cfg.lam,
                    one_sided=cfg.one_sided,
                    on=on,
                    normalize=cfg.normalize,
                )
            )
        elif r == "steer":
            terms.append(Steer(directions, cfg.sites, alpha=cfg.alpha))
        elif r == "ablate":
            terms.append(Ablate(directions, cfg.sites))
        elif r == "sae-latents":
            terms.append(SAELatents(cfg.sae, str(cfg.latents), weight=cfg.lam, on=on))
    return terms
