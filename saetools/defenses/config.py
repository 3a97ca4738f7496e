"""The benchmark's grid and sizes: the methods and their default strengths, the direction
sources and site modes, the term variants, :class:`BenchmarkConfig` (with its checks),
``--strengths`` parsing, and :class:`Run` (one fine-tune of the grid) with :func:`plan_runs`, the
grid in a stable order.

**Direction sources** (``BenchmarkConfig.sources``): a base source (:data:`BASE_SOURCES`:
``em-core`` and ``em-transfer`` difference of means on the base model, ``modeldiff`` of the bad vs
good twin fine-tunes), ``modeldiff-pcaK`` (the top-K subspace of the same twins' per-example
differences, K in 2-8), or several base sources joined by ``+`` (``em-core+modeldiff``: their
vectors stacked per site and orthonormalized, in the order given).

**Variants** (``BenchmarkConfig.variants``, :data:`VARIANT_METHODS` only): ``-`` (the plain term)
or options joined by ``+``: ``one-sided`` (only shifts toward the misaligned side are penalized),
``anchor`` (the term is computed on anchor batches of the safe data instead of the training batch),
``warmupN`` (λ rises linearly over the first N steps). Each variant is its own row of the table."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

METHODS = (
    "none",
    "kl",
    "ldifs",
    "steer",
    "ablate",
    "interleave",
    "directional-kl",
    "directional-l2",
    "sae-latents",
)
DIRECTION_METHODS = ("steer", "ablate", "directional-kl", "directional-l2")
DEFAULT_METHODS = METHODS[:-1]
DEFAULT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "none": (0.0,),
    # chosen from the benchmark on the embedded model (docs/results.md) so that the curves overlap;
    # ldifs and directional-l2 sum squared activation differences (hundreds after one step), so
    # their useful λ are about 1000x smaller than those of the KL terms
    "kl": (0.3, 1.0, 3.0),
    "ldifs": (0.0001, 0.0003, 0.001),
    "steer": (0.5, 1.0, 2.0),  # alpha (unit direction, added at every chosen site)
    "ablate": (1.0,),  # no strength: full projection removal
    "interleave": (0.25, 0.5, 0.75),  # fraction of safe examples in the training data
    "directional-kl": (1.0, 3.0, 10.0),
    "directional-l2": (0.0001, 0.001, 0.01),
    "sae-latents": (0.3, 1.0, 3.0),
}
SOURCES = ("em-core", "em-transfer", "modeldiff")
BASE_SOURCES = SOURCES
PCA_RANKS = range(2, 9)  # K of the modeldiff-pcaK sources
SITE_MODES = ("all", "one")
TASKS = ("narrow", "benign")
# methods whose term takes the variants (one-sided, anchor, warmupN)
VARIANT_METHODS = ("directional-kl", "directional-l2")
VARIANT_OPTIONS = ("one-sided", "anchor", "warmupN")
# config fields that must match to resume into an existing folder (the grid may grow)
SIZE_FIELDS = (
    "model",
    "narrow_data",
    "good_data",
    "benign_data",
    "pairs",
    "transfer_pairs",
    "neutral",
    "safe_data",
    "anchor",
    "steps",
    "eval_every",
    "benign_steps",
    "batch_size",
    "lr",
    "lora_rank",
    "max_length",
    "eval_pairs",
    "eval_examples",
    "benign_examples",
    "neutral_texts",
    "dir_steps",
    "dir_seed",
    "dir_pairs",
    "site",
    "em_core_file",
    "modeldiff_file",
    "sae",
    "latents",
    "judge_questions",
    "judge_samples",
    "judge_max_new_tokens",
    "probe_judge",
)


# size fields that only some methods use: a call that leaves them unset fits any folder
OPTIONAL_FIELDS = ("sae", "latents")
# size fields added after results folders were written: a folder whose benchmark.json lacks one
# fits a call with its default (its runs simply lack the new measure)
LATER_FIELDS = ("judge_questions", "judge_samples", "judge_max_new_tokens", "probe_judge")


class BenchmarkError(ValueError):
    """A benchmark that cannot run as asked (bad method, strength, direction file, folder)."""


@dataclass
class BenchmarkConfig:
    """The grid and the sizes. Data fields take probe set names or JSONL paths."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    strengths: dict[str, tuple[float, ...]] = field(default_factory=dict)  # overrides defaults
    seeds: tuple[int, ...] = (0, 1, 2)
    tasks: tuple[str, ...] = TASKS
    sources: tuple[str, ...] = ("modeldiff",)
    site_modes: tuple[str, ...] = ("all",)
    variants: tuple[str, ...] = ("-",)  # of VARIANT_METHODS; "-" is the plain term
    site: str | None = None  # the one site of site mode "one" (default: the middle block)
    model: str = "default"
    device: str = "auto"  # "auto": cuda when available, else cpu
    narrow_data: str = "narrow-medical-bad"
    good_data: str = "narrow-medical-good"
    benign_data: str = "nonce-word"
    pairs: str = "em-core"
    transfer_pairs: str | None = "em-transfer"  # a second pairs set: shift measured on both
    neutral: str = "neutral"
    safe_data: str = "general-safe"
    anchor: str | None = None
    steps: int = 40
    eval_every: int = 10
    benign_steps: int | None = None  # steps of the benign task (None: ``steps``)
    batch_size: int = 8
    lr: float = 1e-3
    lora_rank: int = 8
    max_length: int = 128
    eval_pairs: int | None = None  # em-core test pairs (None: all)
    eval_examples: int | None = 32  # held-out narrow items (loss, in-domain contrast)
    benign_examples: int | None = 80  # benign test items (exact match; all 80 of nonce-word)
    neutral_texts: int | None = None
    dir_steps: int = 20
    dir_seed: int = 1000
    dir_pairs: int | None = None  # em-core train pairs for the modeldiff texts
    em_core_file: str | None = None  # use this em-core direction file instead of extracting one
    modeldiff_file: str | None = None  # use this modeldiff file instead of fine-tuning for one
    sae: str | None = None
    latents: str | None = None
    # the judged misalignment rate at the end of each narrow run (probe judge, see
    # saetools.evaluate.probe_judge): judge_samples answers per judge_questions question at
    # temperature 1, judged on the base model; probe_judge: a judge file (None: one is fitted on
    # ``pairs`` at the default site and kept in the folder)
    judged_rate: bool = True
    judge_questions: str = "em-eval"
    judge_samples: int = 2
    judge_max_new_tokens: int = 64
    probe_judge: str | None = None
    keep_checkpoints: bool = False

    def steps_for(self, task: str) -> int:
        return int(self.benign_steps or self.steps) if task == "benign" else int(self.steps)

    def strengths_for(self, method: str) -> tuple[float, ...]:
        return tuple(self.strengths.get(method, DEFAULT_STRENGTHS[method]))

    def validate(self) -> None:
        if not self.methods:
            raise BenchmarkError("no methods given")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise BenchmarkError(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
        extra = [m for m in self.strengths if m not in METHODS]
        if extra:
            raise BenchmarkError(f"strengths given for unknown method(s) {extra}")
        if "sae-latents" in self.methods and not (self.sae and self.latents):
            raise BenchmarkError(
                "method 'sae-latents' needs an SAE (--sae) and latents (--latents)"
            )
        for m in self.methods:
            vals = self.strengths_for(m)
            if not vals:
                raise BenchmarkError(f"method {m!r} has no strengths")
            for v in vals:
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise BenchmarkError(f"strength of {m!r} must be a finite number, not {v!r}")
                if v < 0:
                    raise BenchmarkError(f"strength of {m!r} must be >= 0, not {v}")
                if m == "interleave" and not v < 1:
                    raise BenchmarkError(f"interleave fraction must be in [0, 1), not {v}")
                if m == "none" and v != 0:
                    raise BenchmarkError("method 'none' has no strength (use 0)")
                if m == "ablate" and v != 1:
                    raise BenchmarkError("method 'ablate' has no strength (use 1: full ablation)")
        if not self.seeds:
            raise BenchmarkError("no seeds given")
        if self.dir_seed in self.seeds and "modeldiff" in self.sources:
            raise BenchmarkError(
                f"dir_seed {self.dir_seed} is also a run seed: the modeldiff direction must come "
                "from a separate fine-tune"
            )
        for name, vals, allowed in (
            ("task", self.tasks, TASKS),
            ("site mode", self.site_modes, SITE_MODES),
        ):
            bad = [v for v in vals if v not in allowed]
            if bad or not vals:
                raise BenchmarkError(f"unknown {name}(s) {bad or vals}: choose from {allowed}")
        if not self.sources:
            raise BenchmarkError(f"no direction source given: choose from {SOURCES}")
        for src in self.sources:
            if "em-transfer" in source_parts(src) and not self.transfer_pairs:
                raise BenchmarkError(f"direction source {src!r} needs a transfer pairs set")
        if not self.variants:
            raise BenchmarkError("no variant given (use '-' for the plain term)")
        for v in self.variants:
            variant_options(v)
        for name in (
            "steps",
            "eval_every",
            "batch_size",
            "max_length",
            "lora_rank",
            "dir_steps",
            "judge_samples",
            "judge_max_new_tokens",
        ):
            if int(getattr(self, name)) < 1:
                raise BenchmarkError(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in (
            "eval_pairs",
            "eval_examples",
            "benign_examples",
            "neutral_texts",
            "benign_steps",
        ):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise BenchmarkError(f"{name} must be >= 1 (or unset for all), not {v}")
        for f in (self.em_core_file, self.modeldiff_file):
            if f and not Path(f).is_file():
                raise BenchmarkError(f"direction file {f} does not exist")
        if self.probe_judge and not Path(self.probe_judge).is_file():
            raise BenchmarkError(f"probe judge file {self.probe_judge} does not exist")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["strengths"] = {m: list(self.strengths_for(m)) for m in self.methods}
        for k in ("methods", "seeds", "tasks", "sources", "site_modes", "variants"):
            d[k] = list(d[k])
        return d


def source_parts(source: str) -> list[str]:
    """The base sources of a direction source: ``"em-core+modeldiff"`` -> ``["em-core",
    "modeldiff"]``, ``"modeldiff-pca3"`` -> ``["modeldiff-pca3"]``. Refuses unknown names."""
    parts = [p.strip() for p in str(source).split("+")]
    for p in parts:
        if p in BASE_SOURCES:
            continue
        k = p.removeprefix("modeldiff-pca")
        if p.startswith("modeldiff-pca") and k.isdigit() and int(k) in PCA_RANKS:
            continue
        raise BenchmarkError(
            f"unknown direction source {source!r}: choose from {', '.join(BASE_SOURCES)}, "
            f"modeldiff-pcaK (K {PCA_RANKS.start}-{PCA_RANKS.stop - 1}), or several joined by '+'"
        )
    if len(set(parts)) != len(parts):
        raise BenchmarkError(f"direction source {source!r} names a source twice")
    return parts


def variant_options(variant: str) -> dict:
    """A variant's options: ``"-"`` -> ``{}``; ``"one-sided+warmup4"`` -> ``{"one_sided": True,
    "lam_warmup": 4}``; ``"anchor"`` -> ``{"anchor": True}``. Refuses unknown options."""
    out: dict = {}
    if variant == "-":
        return out
    for opt in str(variant).split("+"):
        if opt == "one-sided":
            out["one_sided"] = True
        elif opt == "anchor":
            out["anchor"] = True
        elif opt.startswith("warmup") and opt[6:].isdigit() and int(opt[6:]) >= 1:
            out["lam_warmup"] = int(opt[6:])
        else:
            raise BenchmarkError(
                f"unknown variant {variant!r}: '-' or options joined by '+' from "
                f"{', '.join(VARIANT_OPTIONS)} (N >= 1 steps)"
            )
    return out


def parse_strengths(specs: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """``["kl=0.1,1,10", "steer=2"]`` -> ``{"kl": (0.1, 1.0, 10.0), "steer": (2.0,)}``."""
    out: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        name, sep, vals = str(spec).partition("=")
        name = name.strip()
        if not sep or not name:
            raise BenchmarkError(f"strengths {spec!r}: expected METHOD=V1,V2,...")
        if name not in METHODS:
            raise BenchmarkError(f"strengths {spec!r}: unknown method {name!r}")
        try:
            out[name] = tuple(float(v) for v in vals.split(",") if v.strip())
        except ValueError:
            raise BenchmarkError(f"strengths {spec!r}: values must be numbers") from None
    return out


@dataclass(frozen=True)
class Run:
    """One fine-tune of the grid."""

    task: str
    method: str
    strength: float
    seed: int
    source: str = "-"  # direction source, or "-" for methods without directions
    sites: str = "-"  # "all" or "one"
    variant: str = "-"  # term variant (VARIANT_METHODS), "-" for the plain term

    @property
    def label(self) -> str:
        """A short line for progress bars."""
        opts = "" if self.variant == "-" else f" [{self.variant}]"
        return f"{self.task} {self.method}{opts} {self.strength:g} seed {self.seed}"

    @property
    def run_id(self) -> str:
        opts = "" if self.variant == "-" else f"__{self.variant}"
        return (
            f"{self.task}__{self.method}__{self.strength:g}__{self._variant}{opts}__seed{self.seed}"
        )

    @property
    def _variant(self) -> str:
        return "nodir" if self.source == "-" else f"{self.source}-{self.sites}"

    @property
    def arm(self) -> tuple:
        """The row of the table: everything but task and seed."""
        return (self.method, self.strength, self.source, self.sites, self.variant)


def plan_runs(cfg: BenchmarkConfig) -> list[Run]:
    """Every run of the grid, in a stable order (seeds inside, so partial results are usable)."""
    runs = []
    for task in cfg.tasks:
        for m in cfg.methods:
            dirs = (
                [(s, k) for s in cfg.sources for k in cfg.site_modes]
                if m in DIRECTION_METHODS
                else [("-", "-")]
            )
            variants = cfg.variants if m in VARIANT_METHODS else ("-",)
            for src, sites in dirs:
                for variant in variants:
                    for strength in cfg.strengths_for(m):
                        for seed in cfg.seeds:
                            runs.append(
                                Run(task, m, float(strength), int(seed), src, sites, variant)
                            )
    return runs
