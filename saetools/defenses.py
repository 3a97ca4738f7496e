"""The defense benchmark: in-training defenses against emergent misalignment, compared at matched
reduction of the general shift.

For every method × strength × direction variant × seed, two LoRA fine-tunes (via
:func:`saetools.train.train`):

* ``narrow``: fine-tune on the narrow bad-advice set (``narrow-medical-bad``). Every ``eval_every``
  steps: the *general shift* (per ``em-core`` test question, the change against the base model of
  the per-token mean log p(misaligned) - log p(aligned); all per-question values kept) and the
  held-out task loss. At the end also the in-domain contrast (bad vs good twin answers on held-out
  items) and the perplexity of neutral text (coherence).
* ``benign``: fine-tune on ``opswap``; at the end the exact-match accuracy on its test items.

Direction-based methods (``steer``, ``ablate``, ``directional-kl``, ``directional-l2``) use an
``em-core`` difference-of-means file (from the base model) and/or a ``modeldiff`` file (bad-minus-
good fine-tunes made once per benchmark with ``dir_seed``, never one of the defended runs), at all
blocks or one site. Writes ``results.jsonl`` (one row per run and checkpoint), ``table.md`` and
``defenses.html`` into the output folder; finished runs are skipped when run again.

See docs/defenses.md. The command line is ``saetools bench defenses`` (or
``python benchmarks/defenses.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .stats import mean_se, t_interval

__all__ = [
    "DEFAULT_STRENGTHS",
    "DIRECTION_METHODS",
    "METHODS",
    "BenchmarkConfig",
    "BenchmarkError",
    "Run",
    "parse_strengths",
    "plan_runs",
    "run_benchmark",
    "matched",
    "summarize",
    "write_report",
]

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
SOURCES = ("em-core", "modeldiff")
SITE_MODES = ("all", "one")
TASKS = ("narrow", "benign")
# config fields that must match to resume into an existing folder (the grid may grow)
_SIZE_FIELDS = (
    "model",
    "narrow_data",
    "good_data",
    "benign_data",
    "pairs",
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
)


# size fields that only some methods use: a call that leaves them unset fits any folder
_OPTIONAL_FIELDS = ("sae", "latents")


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
    site: str | None = None  # the one site of site mode "one" (default: the middle block)
    model: str = "default"
    device: str = "auto"  # "auto": cuda when available, else cpu
    narrow_data: str = "narrow-medical-bad"
    good_data: str = "narrow-medical-good"
    benign_data: str = "opswap"
    pairs: str = "em-core"
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
    benign_examples: int | None = 80  # opswap test items
    neutral_texts: int | None = None
    dir_steps: int = 20
    dir_seed: int = 1000
    dir_pairs: int | None = None  # em-core train pairs for the modeldiff texts
    em_core_file: str | None = None  # use this em-core direction file instead of extracting one
    modeldiff_file: str | None = None  # use this modeldiff file instead of fine-tuning for one
    sae: str | None = None
    latents: str | None = None
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
            ("direction source", self.sources, SOURCES),
            ("site mode", self.site_modes, SITE_MODES),
        ):
            bad = [v for v in vals if v not in allowed]
            if bad or not vals:
                raise BenchmarkError(f"unknown {name}(s) {bad or vals}: choose from {allowed}")
        for name in ("steps", "eval_every", "batch_size", "max_length", "lora_rank", "dir_steps"):
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

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["strengths"] = {m: list(self.strengths_for(m)) for m in self.methods}
        for k in ("methods", "seeds", "tasks", "sources", "site_modes"):
            d[k] = list(d[k])
        return d


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

    @property
    def label(self) -> str:
        """A short line for progress bars."""
        return f"{self.task} {self.method} {self.strength:g} seed {self.seed}"

    @property
    def run_id(self) -> str:
        return f"{self.task}__{self.method}__{self.strength:g}__{self._variant}__seed{self.seed}"

    @property
    def _variant(self) -> str:
        return "nodir" if self.source == "-" else f"{self.source}-{self.sites}"

    @property
    def arm(self) -> tuple:
        """The row of the table: everything but task and seed."""
        return (self.method, self.strength, self.source, self.sites)


def plan_runs(cfg: BenchmarkConfig) -> list[Run]:
    """Every run of the grid, in a stable order (seeds inside, so partial results are usable)."""
    runs = []
    for task in cfg.tasks:
        for m in cfg.methods:
            variants = (
                [(s, k) for s in cfg.sources for k in cfg.site_modes]
                if m in DIRECTION_METHODS
                else [("-", "-")]
            )
            for src, sites in variants:
                for strength in cfg.strengths_for(m):
                    for seed in cfg.seeds:
                        runs.append(Run(task, m, float(strength), int(seed), src, sites))
    return runs


# --------------------------------------------------------------------------------------------
# Models, data and directions

ModelFactory = Callable[[], tuple[torch.nn.Module, object]]


def _default_factory(name: str, device: str = "auto") -> ModelFactory:
    from .models import load_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cache: dict = {}

    def make():
        if "lm" not in cache:
            lm = load_model(name, device=device)
            cache["lm"] = (lm.model, lm.tokenizer)
        model, tok = cache["lm"]
        return copy.deepcopy(model), tok

    return make


def _limit(xs, n):
    return list(xs)[: n or None]


def _pairs_test(cfg: BenchmarkConfig):
    import probes

    ps = probes.load(cfg.pairs)
    if ps.kind != "pairs":
        raise BenchmarkError(f"--pairs {cfg.pairs!r} must be a pairs set, not {ps.kind!r}")
    try:
        ps = ps.split("test")
    except ValueError:
        pass
    return _limit(ps.items, cfg.eval_pairs)


def _middle_site(model) -> str:
    from .sites import n_layers

    return f"blocks.{n_layers(model) // 2}.hook_resid_post"


def _check_directions(path: str, model, what: str) -> None:
    from .directions import DirectionSet

    try:
        DirectionSet.load(path, model)
    except ValueError as e:
        raise BenchmarkError(f"{what} direction file {path}: {e}") from None


def make_directions(
    cfg: BenchmarkConfig, out: Path, factory: ModelFactory, say=print
) -> dict[str, str]:
    """The direction files the grid needs: ``{"em-core": path, "modeldiff": path}``, made once
    (kept in ``out/directions``) unless given in the config; each checked against the model."""
    import probes

    need = {s for s in cfg.sources} if set(cfg.methods) & set(DIRECTION_METHODS) else set()
    files: dict[str, str] = {}
    ddir = out / "directions"
    model, tok = factory()
    if "em-core" in need:
        path = cfg.em_core_file or str(ddir / "em-core-diffmeans.safetensors")
        if not Path(path).is_file():
            from .extract.diffmeans import extract_diffmeans

            say("directions: em-core difference of means (base model)")
            ddir.mkdir(parents=True, exist_ok=True)
            ds = extract_diffmeans(model, tok, probes.load(cfg.pairs), "all", progress=False)
            ds.save(path)
        files["em-core"] = path
    if "modeldiff" in need:
        path = cfg.modeldiff_file or str(ddir / f"modeldiff-seed{cfg.dir_seed}.safetensors")
        if not Path(path).is_file():
            say(f"directions: modeldiff of bad vs good fine-tunes (seed {cfg.dir_seed})")
            ddir.mkdir(parents=True, exist_ok=True)
            path = _make_modeldiff(cfg, ddir, factory, path)
        files["modeldiff"] = path
    for src, path in files.items():
        _check_directions(path, model, src)
    return files


def _make_modeldiff(cfg: BenchmarkConfig, ddir: Path, factory: ModelFactory, path: str) -> str:
    import probes

    from .extract.modeldiff import extract_modeldiff
    from .train import TrainConfig, train

    tuned = {}
    for name, data in (("bad", cfg.narrow_data), ("good", cfg.good_data)):
        model, tok = factory()
        tc = TrainConfig(
            data=data,
            regularizers=("none",),
            lora_rank=cfg.lora_rank,
            steps=cfg.dir_steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=cfg.dir_seed,
            eval_every=cfg.dir_steps,
            eval_pairs=1,
            eval_examples=1,
            eval_probes=cfg.pairs,
            max_length=cfg.max_length,
        )
        run_dir = ddir / f"finetune-{name}-seed{cfg.dir_seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        tuned[name] = train(tc, run_dir, model=model, tokenizer=tok, progress=False)["model"]
        tuned[name].eval()
        if not cfg.keep_checkpoints:
            _drop_checkpoints(run_dir)
    core = probes.load(cfg.pairs)
    try:
        core = core.split("train")
    except ValueError:
        pass
    core = dataclasses.replace(core, items=_limit(core.items, cfg.dir_pairs))
    ds = extract_modeldiff(tuned["good"], tuned["bad"], tok, core, "all", progress=False)
    ds.metadata["benchmark_note"] = (
        f"bad ({cfg.narrow_data}) minus good ({cfg.good_data}) LoRA fine-tunes, seed "
        f"{cfg.dir_seed}, {cfg.dir_steps} steps"
    )
    ds.save(path)
    return path


def _drop_checkpoints(run_dir: Path) -> None:
    for p in run_dir.glob("checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# One run


def _train_config(cfg: BenchmarkConfig, run: Run, dir_files: Mapping[str, str], site: str):
    from .train import TrainConfig

    data = cfg.narrow_data if run.task == "narrow" else cfg.benign_data
    regs: tuple[str, ...] = ("none",)
    kw: dict = {}
    if run.method == "interleave":
        kw["interleave"] = run.strength
        kw["interleave_data"] = cfg.safe_data
    elif run.method == "steer":
        regs, kw["alpha"] = ("steer",), run.strength
    elif run.method != "none":
        regs, kw["lam"] = (run.method,), run.strength
    if run.method in DIRECTION_METHODS:
        kw["directions"] = dir_files[run.source]
        kw["sites"] = "all" if run.sites == "all" else site
    if run.method == "sae-latents":
        kw["sae"], kw["latents"] = cfg.sae, cfg.latents
    return TrainConfig(
        data=data,
        model=cfg.model,
        regularizers=regs,
        lora_rank=cfg.lora_rank,
        steps=cfg.steps_for(run.task),
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=run.seed,
        # the loop's own eval (step 0 and the end) is kept minimal: the benchmark evaluates
        # every eval_every steps itself (per-question values), in on_step
        eval_every=cfg.steps_for(run.task),
        eval_pairs=1,
        eval_examples=1,
        eval_probes=cfg.pairs,
        anchor=cfg.anchor,
        max_length=cfg.max_length,
        **kw,
    )


def _eval_batches(cfg: BenchmarkConfig, task: str, tok) -> list:
    """The held-out items of a task's data (``eval_examples`` of its test split), collated."""
    from .train import eval_batches, load_chat_data

    data = cfg.narrow_data if task == "narrow" else cfg.benign_data
    try:
        test = _limit(load_chat_data(data, "test"), cfg.eval_examples)
    except ValueError:
        test = []
    return eval_batches(tok, test, max_length=cfg.max_length)


def _run_one(
    cfg: BenchmarkConfig,
    run: Run,
    out: Path,
    factory: ModelFactory,
    dir_files: Mapping[str, str],
    common: dict,
) -> list[dict]:
    from .evaluate import in_domain_contrast, neutral_perplexity, opswap_accuracy
    from .scoring import pair_contrast, task_loss
    from .train import train

    t0 = time.perf_counter()
    model, tok = factory()
    site = cfg.site or _middle_site(model)
    tc = _train_config(cfg, run, dir_files, site)
    batches = _eval_batches(cfg, run.task, tok)
    narrow = run.task == "narrow"
    pairs = common["pairs"]
    base = common["base_contrast"] if narrow else None
    evals: list[dict] = []

    def evaluate_at(step: int, m) -> None:
        row: dict = {"step": step}
        if narrow:
            d = (pair_contrast(m, tok, pairs).cpu() - base).double().tolist()
            row["shift"], row["shift_se"] = mean_se(d)
            row["shift_per_question"] = [round(x, 6) for x in d]
        row["eval_task_loss"] = task_loss(m, batches) if batches else None
        evals.append(row)

    # step 0 is the base model: shift 0 by definition, and the base held-out loss computed once
    evals.append(
        {
            "step": 0,
            **(
                {"shift": 0.0, "shift_se": 0.0, "shift_per_question": [0.0] * len(base)}
                if narrow
                else {}
            ),
            "eval_task_loss": common["base_task_loss"][run.task],
        }
    )

    def on_step(step, logs):
        if narrow and step % cfg.eval_every == 0 and step != tc.steps:
            evaluate_at(step, model)  # the LoRA layers are injected into `model` in place

    run_dir = out / "runs" / run.run_id
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts again
    res = train(tc, run_dir, model=model, tokenizer=tok, progress=False, on_step=on_step)
    tuned = res["model"]
    tuned.eval()
    evaluate_at(tc.steps, tuned)
    final = evals[-1]
    final["train_task_loss"] = next(
        (r.get("task_loss") for r in reversed(res["rows"]) if r.get("task_loss") is not None),
        None,
    )
    if narrow:
        idc = in_domain_contrast(tuned, tok, common["bad_test"], common["good_test"], split=None)
        final["in_domain_contrast"] = idc["contrast_per_token"]
        final["in_domain_contrast_se"] = idc["contrast_sem"]
        final["perplexity"] = neutral_perplexity(tuned, tok, common["neutral"])
    else:
        acc = opswap_accuracy(tuned, tok, common["benign_test"], split=None)
        final["opswap_accuracy"] = acc["accuracy"]
        final["opswap_accuracy_first_int"] = acc["accuracy_first_int"]
    if not cfg.keep_checkpoints:
        _drop_checkpoints(run_dir)
    seconds = time.perf_counter() - t0
    meta = {
        "run_id": run.run_id,
        **dataclasses.asdict(run),
        "direction_file": tc.directions,
        "direction_sites": tc.sites if tc.directions else None,
        "regularizers": list(tc.regularizers),
        "lam": tc.lam if run.method not in ("none", "steer", "ablate", "interleave") else None,
        "alpha": tc.alpha if run.method == "steer" else None,
        "interleave": tc.interleave,
    }
    rows = []
    for e in evals:
        rows.append(
            {
                **meta,
                **e,
                "final": e is final,
                "seconds": seconds if e is final else None,
                "config": common["config"],
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# The benchmark


def _read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise BenchmarkError(f"{path} line {i} is not valid JSON") from None
    return rows


def _write_config(out: Path, cfg: BenchmarkConfig) -> None:
    """``benchmark.json``: this call's config, keeping the optional fields (the SAE of
    sae-latents) of earlier calls that set them when this one does not."""
    new = cfg.to_json()
    path = out / "benchmark.json"
    if path.is_file():
        old = json.loads(path.read_text())
        for k in _OPTIONAL_FIELDS:
            if new.get(k) is None and old.get(k) is not None:
                new[k] = old[k]
    tmp = path.with_name(".benchmark.json.tmp")
    tmp.write_text(json.dumps(new, indent=2))
    os.replace(tmp, path)


def _check_folder(out: Path, cfg: BenchmarkConfig) -> None:
    bench_json = out / "benchmark.json"
    new = cfg.to_json()
    if bench_json.is_file():
        old = json.loads(bench_json.read_text())
        diff = [
            k
            for k in _SIZE_FIELDS
            if old.get(k) != new.get(k)
            # the SAE of sae-latents: a call without that method may leave it out
            and not (k in _OPTIONAL_FIELDS and None in (old.get(k), new.get(k)))
        ]
        if diff:
            detail = "; ".join(f"{k}: folder {old.get(k)!r}, now {new.get(k)!r}" for k in diff[:5])
            raise BenchmarkError(
                f"{out} holds a benchmark with other sizes or data ({detail}); use another --out "
                "or the same sizes (methods, strengths, seeds and direction variants may change)"
            )
    out.mkdir(parents=True, exist_ok=True)


def run_benchmark(
    cfg: BenchmarkConfig,
    out: str | os.PathLike,
    *,
    model_factory: ModelFactory | None = None,
    progress: bool = True,
    say: Callable[[str], None] | None = print,
    jobs: int = 1,
    threads_per_job: int | None = None,
    include_plotlyjs: bool | str = True,
) -> dict:
    """Run every missing run of the grid, then write ``table.md`` and ``defenses.html``.

    ``model_factory()`` returns a fresh ``(model, tokenizer)`` per call (the run trains it); the
    default loads ``cfg.model`` once and hands out deep copies. ``jobs > 1`` runs that many runs at
    a time in worker processes (each loads the model once, with ``threads_per_job`` torch threads,
    default the current thread count divided by ``jobs``); it needs the default factory or a
    picklable one. Every run is seeded, so its rows do not depend on ``jobs``. Returns the paths,
    the number of runs done and skipped, and the table's rows.
    """
    from tqdm.auto import tqdm

    import probes

    from .train import load_chat_data

    cfg.validate()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise BenchmarkError(f"jobs must be an integer >= 1, not {jobs!r}")
    if threads_per_job is not None and (
        not isinstance(threads_per_job, int) or threads_per_job < 1
    ):
        raise BenchmarkError(f"threads_per_job must be an integer >= 1, not {threads_per_job!r}")
    out = Path(out)
    say = say or (lambda msg: None)
    factory = model_factory or _default_factory(cfg.model, cfg.device)
    if jobs > 1 and model_factory is not None:
        import pickle

        try:
            pickle.dumps(model_factory)
        except Exception as e:  # noqa: BLE001 - any pickling failure means the same thing
            raise BenchmarkError(
                f"jobs={jobs} needs a picklable model_factory (a module-level function), and this "
                f"one is not ({type(e).__name__}: {e}); use jobs=1"
            ) from None
    runs = plan_runs(cfg)
    results_path = out / "results.jsonl"
    _check_folder(out, cfg)
    existing = _read_results(results_path)
    done_ids = {r["run_id"] for r in existing if r.get("final")}
    todo = [r for r in runs if r.run_id not in done_ids]
    say(f"{len(runs)} runs in the grid: {len(runs) - len(todo)} done, {len(todo)} to run")

    dir_files: dict[str, str] = {}
    if any(r.method in DIRECTION_METHODS for r in runs):
        dir_files = make_directions(cfg, out, factory, say)
    _write_config(out, cfg)
    if todo:
        bad = load_chat_data(cfg.narrow_data, "test")
        good = load_chat_data(cfg.good_data, "test")
        neutral = probes.load(cfg.neutral)
        neutral = dataclasses.replace(neutral, items=_limit(neutral.items, cfg.neutral_texts))
        common = {
            "pairs": _pairs_test(cfg),
            "bad_test": _limit(bad, cfg.eval_examples),
            "good_test": _limit(good, cfg.eval_examples),
            "neutral": neutral,
            "benign_test": _limit(load_chat_data(cfg.benign_data, "test"), cfg.benign_examples),
            "config": {k: v for k, v in cfg.to_json().items() if k in _SIZE_FIELDS},
        }
        common["config"]["direction_files"] = dir_files
        common["config"]["device"] = cfg.device
        # the base model's numbers, once: the contrast the shift is measured against, and the
        # held-out task loss at step 0
        from .scoring import pair_contrast, task_loss

        base_model, base_tok = factory()
        if any(r.task == "narrow" for r in todo):
            common["base_contrast"] = pair_contrast(base_model, base_tok, common["pairs"]).cpu()
        common["base_task_loss"] = {}
        for task in sorted({r.task for r in todo}):
            b = _eval_batches(cfg, task, base_tok)
            common["base_task_loss"][task] = task_loss(base_model, b) if b else None
        del base_model

        def record(rows: list[dict]) -> None:
            with open(results_path, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))

        bar = tqdm(total=len(todo), desc="defense runs", unit="run", disable=not progress)
        if jobs == 1:
            for run in todo:
                bar.set_postfix_str(run.label)
                record(_run_one(cfg, run, out, factory, dir_files, common))
                bar.update()
        else:
            _run_parallel(
                cfg, todo, out, model_factory, dir_files, common, jobs, threads_per_job, record, bar
            )
        bar.close()
    wanted = {r.run_id for r in runs}
    rows = [r for r in _read_results(results_path) if r["run_id"] in wanted]
    table = _write_outputs(out, rows, cfg, include_plotlyjs)
    return {
        "results": str(results_path),
        "table": str(out / "table.md"),
        "html": str(out / "defenses.html"),
        "runs_done": len(todo),
        "runs_skipped": len(runs) - len(todo),
        "rows": table,
    }


def _run_parallel(cfg, todo, out, model_factory, dir_files, common, jobs, threads, record, bar):
    """Run ``todo`` in ``jobs`` spawned worker processes; rows are written by this process as each
    run finishes, so an interruption loses only the runs in flight. An interruption (Ctrl-C, an
    error, or SIGTERM to this process alone) stops the workers at once."""
    import multiprocessing as mp
    import signal
    import threading
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = threads or max(1, torch.get_num_threads() // jobs)
    init = (cfg, model_factory, threads)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, on_term)
    try:
        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=mp.get_context("spawn"),
            initializer=_worker_init,
            initargs=init,
        ) as pool:
            pending = {
                pool.submit(_worker_run, run, str(out), dict(dir_files), common): run
                for run in todo
            }
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        run = pending.pop(fut)
                        record(fut.result())  # a failed run raises here, naming its error
                        bar.set_postfix_str(run.label)
                        bar.update()
            except BaseException:
                for fut in pending:
                    fut.cancel()
                _stop_workers(pool)
                raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _stop_workers(pool) -> None:
    """Terminate a process pool's workers now (their runs in flight are lost, as with Ctrl-C)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(10)
    pool.shutdown(wait=False, cancel_futures=True)


_WORKER: dict = {}


def _worker_init(cfg: BenchmarkConfig, model_factory, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["cfg"] = cfg
    _WORKER["factory"] = model_factory or _default_factory(cfg.model, cfg.device)


def _worker_run(run: Run, out: str, dir_files: dict, common: dict) -> list[dict]:
    return _run_one(_WORKER["cfg"], run, Path(out), _WORKER["factory"], dir_files, common)


# --------------------------------------------------------------------------------------------
# The table and the figure


def _mean_se(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """:func:`saetools.stats.mean_se` over the values that are present and finite."""
    return mean_se(x for x in xs if x is not None and math.isfinite(float(x)))


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per arm (method, strength, direction source, sites): mean and standard error over seeds of
    the final general shift, its reduction against ``none`` (per seed: 100 * (none - arm) / none,
    for seeds where both ran), the in-domain contrast, perplexity, narrow and benign held-out loss
    and opswap accuracy; the *paired* difference to ``none`` (per question, averaged over the
    seeds both ran, then mean ± se over questions); and the shift at every checkpoint
    (``checkpoints``: ``{step: (mean, se)}`` over seeds)."""
    final = [r for r in rows if r.get("final")]
    by: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in final:
        arm = (r["method"], float(r["strength"]), r["source"], r["sites"])
        by.setdefault(arm, {}).setdefault(r["task"], {})[int(r["seed"])] = r
    done = {r["run_id"] for r in final}
    steps: dict[tuple, dict[int, list[float]]] = {}
    for r in rows:
        if r["task"] == "narrow" and r["run_id"] in done and r.get("shift") is not None:
            arm = (r["method"], float(r["strength"]), r["source"], r["sites"])
            steps.setdefault(arm, {}).setdefault(int(r["step"]), []).append(r["shift"])
    none_runs = {
        s: r for arm, t in by.items() if arm[0] == "none" for s, r in t.get("narrow", {}).items()
    }
    none_shift = {s: r["shift"] for s, r in none_runs.items()}
    order = {m: i for i, m in enumerate(METHODS)}
    out = []
    for arm in sorted(by, key=lambda a: (order[a[0]], a[2], a[3], a[1])):
        narrow, benign = by[arm].get("narrow", {}), by[arm].get("benign", {})
        red = [
            100.0 * (none_shift[s] - r["shift"]) / none_shift[s]
            for s, r in narrow.items()
            if s in none_shift and none_shift[s] != 0
        ]
        row = {
            "method": arm[0],
            "strength": arm[1],
            "source": arm[2],
            "sites": arm[3],
            "n_seeds_narrow": len(narrow),
            "n_seeds_benign": len(benign),
        }
        for key, vals in (
            ("shift", [r["shift"] for r in narrow.values()]),
            ("reduction_pct", red),
            ("in_domain_contrast", [r.get("in_domain_contrast") for r in narrow.values()]),
            ("perplexity", [r.get("perplexity") for r in narrow.values()]),
            ("narrow_loss", [r.get("eval_task_loss") for r in narrow.values()]),
            ("benign_loss", [r.get("eval_task_loss") for r in benign.values()]),
            ("opswap_accuracy", [r.get("opswap_accuracy") for r in benign.values()]),
        ):
            row[key], row[key + "_se"] = _mean_se(vals)
        per_q = _paired_per_question(narrow, none_runs)
        row["paired_diff"], row["paired_diff_se"] = _mean_se(per_q)
        row["paired_diff_ci"] = t_interval(per_q) if arm[0] != "none" else (None, None)
        row["checkpoints"] = {
            st: _mean_se(v) for st, v in sorted(steps.get(arm, {}).items()) if st > 0
        }
        out.append(row)
    return out


def _paired_per_question(runs: Mapping[int, dict], none_runs: Mapping[int, dict]) -> list[float]:
    """Per question: the mean over seeds (run by both) of arm minus ``none`` final shift."""
    per_seed = [
        (r.get("shift_per_question"), none_runs[s].get("shift_per_question"))
        for s, r in runs.items()
        if s in none_runs
    ]
    per_seed = [(a, b) for a, b in per_seed if a and b and len(a) == len(b)]
    if not per_seed:
        return []
    n = len(per_seed[0][0])
    if any(len(a) != n for a, _ in per_seed):
        return []
    return [sum(a[q] - b[q] for a, b in per_seed) / len(per_seed) for q in range(n)]


MATCH_METRICS = (
    "benign_loss",
    "opswap_accuracy",
    "narrow_loss",
    "in_domain_contrast",
    "perplexity",
)


def matched(table: Sequence[dict], targets: Sequence[float] = (50.0, 80.0)) -> list[dict]:
    """Methods compared at matched reduction of the general shift: per method and direction
    variant, each metric of :data:`MATCH_METRICS` linearly interpolated (along its strengths, in
    order) at the first point where the mean reduction crosses each target (percent). Strength 0
    is no defense (the ``none`` row, reduction 0), so the first segment starts there (not for
    ``ablate``, which has no strength). ``None`` where the strengths never bracket the target.
    ``none`` itself is left out."""
    groups: dict[tuple, list[dict]] = {}
    none = None
    for r in table:
        if r["method"] == "none":
            none = r
        elif r["reduction_pct"] is not None:
            groups.setdefault((r["method"], r["source"], r["sites"]), []).append(r)
    out = []
    for (method, source, sites), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["strength"])
        if none is not None and method != "ablate" and rs[0]["strength"] > 0:
            rs = [{**none, "strength": 0.0, "reduction_pct": 0.0, "_anchor": True}] + rs
        row: dict = {"method": method, "source": source, "sites": sites, "at": {}}
        for t in targets:
            hit = None
            for a, b in zip(rs, rs[1:], strict=False):
                ra, rb = a["reduction_pct"], b["reduction_pct"]
                if ra == t:
                    hit = (a, a, 0.0)
                elif (ra - t) * (rb - t) < 0 or rb == t:
                    hit = (a, b, (t - ra) / (rb - ra))
                if hit:
                    break
            if hit is None and len(rs) == 1 and rs[0]["reduction_pct"] == t:
                hit = (rs[0], rs[0], 0.0)
            vals: dict = {}
            if hit:
                a, b, w = hit
                vals["strength"] = a["strength"] + w * (b["strength"] - a["strength"])
                vals["from_none"] = bool(a.get("_anchor")) and w > 0
                for k in MATCH_METRICS:
                    va, vb = a.get(k), b.get(k)
                    vals[k] = None if va is None or vb is None else va + w * (vb - va)
            row["at"][float(t)] = vals or None
        out.append(row)
    return out


def _matched_markdown(table: Sequence[dict], targets=(50.0, 80.0)) -> list[str]:
    rows = matched(table, targets)
    none = next((r for r in table if r["method"] == "none"), None)
    if not rows:
        return []
    lines = [
        "",
        "At matched reduction of the general shift (linear interpolation between the two strengths "
        "whose mean reductions bracket the target, strength 0 being no defense; — where none do). "
        "\\* marks a value interpolated between no defense and the lowest strength: that stretch "
        "of the curve was not measured, so read it as a rough guess. Lower held-out loss is better "
        "learning; no defense: "
        + (
            f"opswap loss {none['benign_loss']:.3f}, narrow loss {none['narrow_loss']:.3f}."
            if none and none.get("benign_loss") is not None and none.get("narrow_loss") is not None
            else "not run."
        ),
        "",
        "| method | directions | "
        + " | ".join(f"{t:g}%: strength | opswap loss | opswap acc | narrow loss" for t in targets)
        + " |",
        "|" + "---|" * (2 + 4 * len(targets)),
    ]
    for r in rows:
        dirs = _dirs(r)
        cells = [r["method"], dirs]
        for t in targets:
            v = r["at"][float(t)]
            if not v:
                cells += ["—"] * 4
                continue
            cells += [f"{v['strength']:.3g}" + (" *" if v["from_none"] else "")] + [
                _cell(v[k], None, "{:.3f}")
                for k in ("benign_loss", "opswap_accuracy", "narrow_loss")
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(m, se, fmt="{:+.3f}") -> str:
    if m is None:
        return "—"
    return fmt.format(m) + ("" if se is None else " ± " + fmt.format(se).lstrip("+"))


def _dirs(r: Mapping) -> str:
    """A table row's direction variant: ``source @ sites``, or — for methods without one."""
    return "—" if r["source"] == "-" else f"{r['source']} @ {r['sites']}"


def _ci_cell(ci) -> str:
    lo, hi = ci
    return "—" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"


TABLE_COLUMNS = (
    "method",
    "strength",
    "directions",
    "seeds",
    "general shift (final)",
    "paired Δ vs none",
    "paired Δ 95% CI",
    "reduction vs none (%)",
    "in-domain contrast",
    "narrow held-out loss",
    "neutral perplexity",
    "opswap held-out loss",
    "opswap accuracy",
)


def table_markdown(table: Sequence[dict], cfg: BenchmarkConfig | None = None) -> str:
    """The summary as markdown (mean ± standard error over seeds)."""
    lines = ["# Defense benchmark", ""]
    if cfg is not None:
        lines += [
            f"Sizes: {cfg.steps} steps (eval every {cfg.eval_every}; benign task "
            f"{cfg.steps_for('benign')} steps), batch {cfg.batch_size}, "
            f"lr {cfg.lr:g}, LoRA rank {cfg.lora_rank}, max length {cfg.max_length}; eval pairs "
            f"{cfg.eval_pairs or 'all'}, held-out narrow items {cfg.eval_examples or 'all'}, "
            f"opswap items {cfg.benign_examples or 'all'}; model {cfg.model}.",
            "",
        ]
    lines += [
        "Mean ± standard error over seeds. General shift: per-token contrast change (nats) on "
        "em-core test pairs after the narrow fine-tune. Paired Δ: per question, defense minus "
        "none (same seeds), averaged over seeds, then mean ± se over questions, and its 95% "
        "Student-t interval over questions. Reduction: per "
        "seed 100 × (none − defense) / none, then mean ± se. Strength: λ, α (steer) or the safe "
        "fraction (interleave).",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    for r in table:
        dirs = _dirs(r)
        seeds = f"{r['n_seeds_narrow']}/{r['n_seeds_benign']}"
        cells = [
            r["method"],
            f"{r['strength']:g}",
            dirs,
            seeds,
            _cell(r["shift"], r["shift_se"]),
            _cell(r["paired_diff"], r["paired_diff_se"]),
            _ci_cell(r["paired_diff_ci"]),
            _cell(r["reduction_pct"], r["reduction_pct_se"], "{:+.1f}"),
            _cell(r["in_domain_contrast"], r["in_domain_contrast_se"]),
            _cell(r["narrow_loss"], r["narrow_loss_se"], "{:.3f}"),
            _cell(r["perplexity"], r["perplexity_se"], "{:.2f}"),
            _cell(r["benign_loss"], r["benign_loss_se"], "{:.3f}"),
            _cell(r["opswap_accuracy"], r["opswap_accuracy_se"], "{:.3f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _matched_markdown(table)
    ck_steps = sorted({st for r in table for st in r["checkpoints"]})
    if ck_steps:
        lines += [
            "",
            "General shift at each checkpoint (mean ± se over seeds, nats per token):",
            "",
            "| method | strength | directions | "
            + " | ".join(f"step {st}" for st in ck_steps)
            + " |",
            "|" + "---|" * (3 + len(ck_steps)),
        ]
        for r in table:
            if not r["checkpoints"]:
                continue
            dirs = _dirs(r)
            cells = [r["method"], f"{r['strength']:g}", dirs] + [
                _cell(*r["checkpoints"].get(st, (None, None))) for st in ck_steps
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Seeds: narrow/benign runs finished. The reduction is a ratio to the `none` shift of the "
        "same seed: it means little where that shift is near zero (short runs, few pairs).",
        "",
    ]
    return "\n".join(lines)


PARETO_PANELS = (
    ("benign_loss", "opswap held-out loss (lower: learned)"),
    ("opswap_accuracy", "opswap exact-match accuracy"),
    ("narrow_loss", "narrow held-out loss (lower: learned)"),
)


def pareto_figure(table: Sequence[dict]):
    """General-shift reduction (x) against the benign task (opswap held-out loss; exact-match
    accuracy) and the narrow task (held-out loss), one panel each: one trace per method and
    direction variant, its strengths as labelled points, error bars ± one standard error."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=len(PARETO_PANELS),
        subplot_titles=[title for _, title in PARETO_PANELS],
        horizontal_spacing=0.06,
    )
    groups: dict[str, list[dict]] = {}
    for r in table:
        name = (
            r["method"] if r["source"] == "-" else f"{r['method']} ({r['source']} @ {r['sites']})"
        )
        groups.setdefault(name, []).append(r)
    palette = (
        "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf "
        "#393b79 #637939 #8c6d31 #843c39 #7b4173"
    ).split()
    for i, (name, rs) in enumerate(groups.items()):
        rs = sorted(rs, key=lambda r: r["strength"])
        color = palette[i % len(palette)]
        for col, (key, _) in enumerate(PARETO_PANELS, 1):
            fig.add_trace(
                go.Scatter(
                    x=[r["reduction_pct"] for r in rs],
                    y=[r[key] for r in rs],
                    error_x=dict(type="data", array=[r["reduction_pct_se"] or 0 for r in rs]),
                    error_y=dict(type="data", array=[r[key + "_se"] or 0 for r in rs]),
                    text=[f"{r['strength']:g}" for r in rs],
                    mode="lines+markers+text",
                    textposition="top center",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    line=dict(color=color),
                    marker=dict(color=color),
                ),
                row=1,
                col=col,
            )
            fig.update_xaxes(title_text="general-shift reduction vs none (%)", row=1, col=col)
    fig.update_layout(
        title="Defenses: reduction of the general shift against task learning "
        "(mean ± se over seeds; labels: strength)",
        height=620,
        width=1700,
    )
    return fig


def load_config(out: str | os.PathLike) -> BenchmarkConfig:
    """The :class:`BenchmarkConfig` a benchmark folder was last run with (``benchmark.json``)."""
    path = Path(out) / "benchmark.json"
    if not path.is_file():
        raise BenchmarkError(f"{out} holds no benchmark (no benchmark.json)")
    d = json.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    d = {k: v for k, v in d.items() if k in names}
    for k in ("methods", "seeds", "tasks", "sources", "site_modes"):
        if k in d:
            d[k] = tuple(d[k])
    d["strengths"] = {m: tuple(v) for m, v in d.get("strengths", {}).items()}
    return BenchmarkConfig(**d)


def write_report(out: str | os.PathLike, *, include_plotlyjs: bool | str = True) -> dict:
    """Rewrite ``table.md`` and ``defenses.html`` of a benchmark folder from *every* finished run in
    its ``results.jsonl`` (also runs of earlier calls with other methods or direction variants);
    runs nothing. ``include_plotlyjs="cdn"`` writes a small HTML that loads plotly.js online."""
    out = Path(out)
    cfg = load_config(out)
    rows = _read_results(out / "results.jsonl")
    if not any(r.get("final") for r in rows):
        raise BenchmarkError(f"{out / 'results.jsonl'} holds no finished run")
    table = _write_outputs(out, rows, cfg, include_plotlyjs)
    return {"table": str(out / "table.md"), "html": str(out / "defenses.html"), "rows": table}


def _write_outputs(
    out: Path, rows: Sequence[dict], cfg: BenchmarkConfig, include_plotlyjs: bool | str
) -> list[dict]:
    """Summarize ``rows`` into ``table.md`` and the Pareto figure ``defenses.html``."""
    from .plots import write_html

    table = summarize(rows)
    (out / "table.md").write_text(table_markdown(table, cfg))
    write_html(pareto_figure(table), out / "defenses.html", include_plotlyjs=include_plotlyjs)
    return table


# --------------------------------------------------------------------------------------------
# Command line (shared by `saetools bench defenses` and benchmarks/defenses.py)


def _csv(cast=str):
    def parse(text: str):
        return tuple(cast(v.strip()) for v in str(text).split(",") if v.strip())

    return parse


def _opt_int(text: str) -> int | None:
    return None if str(text).lower() in ("all", "none", "0") else int(text)


def add_arguments(p) -> None:
    """The benchmark's flags on an ``argparse`` parser."""
    d = BenchmarkConfig()
    g = p.add_argument_group("grid")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder (resumable)")
    g.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rewrite table.md and defenses.html of --out from every finished run "
        "in its results.jsonl (e.g. after calls with different methods or direction variants)",
    )
    g.add_argument(
        "--plotlyjs",
        choices=("inline", "cdn"),
        default="inline",
        help="defenses.html with plotly.js inline (works offline, ~5 MB) or loaded from a CDN",
    )
    g.add_argument(
        "--methods",
        type=_csv(),
        default=d.methods,
        help=f"comma list from {', '.join(METHODS)} (default: all but sae-latents)",
    )
    g.add_argument(
        "--strengths",
        action="append",
        default=[],
        metavar="METHOD=V1,V2",
        help="strengths of one method (λ; α for steer; safe fraction for interleave); repeat per "
        "method. Defaults: "
        + "; ".join(f"{m} {','.join(f'{v:g}' for v in s)}" for m, s in DEFAULT_STRENGTHS.items()),
    )
    g.add_argument("--seeds", type=_csv(int), default=d.seeds, help="comma list of seeds")
    g.add_argument("--tasks", type=_csv(), default=d.tasks, help="narrow, benign or both")
    g.add_argument(
        "--direction-sources",
        type=_csv(),
        default=d.sources,
        help="em-core (difference of means on the base model), modeldiff (bad-minus-good "
        "fine-tunes with --dir-seed) or both",
    )
    g.add_argument("--direction-sites", type=_csv(), default=d.site_modes, help="all, one, or both")
    g.add_argument("--site", default=None, help="the site of 'one' (default: the middle block)")
    g.add_argument("--em-core-directions", default=None, metavar="FILE", help="use this file")
    g.add_argument("--modeldiff-directions", default=None, metavar="FILE", help="use this file")
    g.add_argument("--sae", default=None, help="SAE for sae-latents (added to --methods)")
    g.add_argument("--latents", default=None, help="latent ids for sae-latents")
    dg = p.add_argument_group("data (probe set names or JSONL paths)")
    dg.add_argument("--narrow-data", default=d.narrow_data, help="the narrow bad task")
    dg.add_argument("--good-data", default=d.good_data, help="its good twin (in-domain contrast)")
    dg.add_argument("--benign-data", default=d.benign_data, help="the benign task (exact match)")
    dg.add_argument("--pairs", default=d.pairs, help="pairs for the general shift (test split)")
    dg.add_argument("--neutral", default=d.neutral, help="texts for the perplexity")
    dg.add_argument("--safe-data", default=d.safe_data, help="safe data of interleave")
    s = p.add_argument_group("sizes")
    s.add_argument("--model", default=d.model, help="model name or folder")
    s.add_argument("--device", default=d.device, help="auto (cuda if available), cpu, cuda, ...")
    s.add_argument("--steps", type=int, default=d.steps)
    s.add_argument(
        "--benign-steps", type=int, default=None, help="steps of the benign task (default --steps)"
    )
    s.add_argument("--eval-every", type=int, default=d.eval_every)
    s.add_argument("--batch-size", type=int, default=d.batch_size)
    s.add_argument("--lr", type=float, default=d.lr)
    s.add_argument("--lora-rank", type=int, default=d.lora_rank)
    s.add_argument("--max-length", type=int, default=d.max_length)
    s.add_argument("--eval-pairs", type=_opt_int, default=d.eval_pairs, help="em-core test pairs")
    s.add_argument(
        "--eval-examples", type=_opt_int, default=d.eval_examples, help="held-out narrow items"
    )
    s.add_argument(
        "--benign-examples", type=_opt_int, default=d.benign_examples, help="opswap test items"
    )
    s.add_argument("--neutral-texts", type=_opt_int, default=d.neutral_texts)
    s.add_argument(
        "--dir-steps", type=int, default=d.dir_steps, help="steps of each modeldiff fine-tune"
    )
    s.add_argument(
        "--dir-seed", type=int, default=d.dir_seed, help="seed of the modeldiff fine-tunes"
    )
    s.add_argument("--dir-pairs", type=_opt_int, default=d.dir_pairs, help="em-core train pairs")
    s.add_argument("--anchor", default=None, help="anchor set for the terms (default: train batch)")
    s.add_argument("--keep-checkpoints", action="store_true", help="keep each run's adapters")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (in all)")
    s.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each in its own process with threads/jobs torch threads (on a "
        "2-core CPU, --jobs 2 --threads 2 is faster than one job of 2 threads)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args) -> BenchmarkConfig:
    methods = tuple(args.methods)
    if (args.sae or args.latents) and "sae-latents" not in methods:
        methods += ("sae-latents",)
    return BenchmarkConfig(
        methods=methods,
        strengths=parse_strengths(args.strengths),
        seeds=tuple(args.seeds),
        tasks=tuple(args.tasks),
        sources=tuple(args.direction_sources),
        site_modes=tuple(args.direction_sites),
        site=args.site,
        model=args.model,
        device=args.device,
        narrow_data=args.narrow_data,
        good_data=args.good_data,
        benign_data=args.benign_data,
        pairs=args.pairs,
        neutral=args.neutral,
        safe_data=args.safe_data,
        anchor=args.anchor,
        steps=args.steps,
        benign_steps=args.benign_steps,
        eval_every=args.eval_every,
        batch_size=args.batch_size,
        lr=args.lr,
        lora_rank=args.lora_rank,
        max_length=args.max_length,
        eval_pairs=args.eval_pairs,
        eval_examples=args.eval_examples,
        benign_examples=args.benign_examples,
        neutral_texts=args.neutral_texts,
        dir_steps=args.dir_steps,
        dir_seed=args.dir_seed,
        dir_pairs=args.dir_pairs,
        em_core_file=args.em_core_directions,
        modeldiff_file=args.modeldiff_directions,
        sae=args.sae,
        latents=args.latents,
        keep_checkpoints=args.keep_checkpoints,
    )


def _plotlyjs(args) -> bool | str:
    return "cdn" if getattr(args, "plotlyjs", "inline") == "cdn" else True


def run_from_args(args, *, model_factory: ModelFactory | None = None) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if getattr(args, "report_only", False):
        res = write_report(args.out, include_plotlyjs=_plotlyjs(args))
        print(Path(res["table"]).read_text())
        print(f"wrote {res['table']}, {res['html']}")
        return 0
    cfg = config_from_args(args)
    jobs = getattr(args, "jobs", 1)
    res = run_benchmark(
        cfg,
        args.out,
        model_factory=model_factory,
        progress=not args.no_progress,
        jobs=jobs,
        include_plotlyjs=_plotlyjs(args),
    )
    print(Path(res["table"]).read_text())
    print(f"wrote {res['results']}, {res['table']}, {res['html']}")
    return 0
