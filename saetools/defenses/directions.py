"""The direction files of the direction-based methods, made once per benchmark folder (in
``OUT/directions``): ``em-core`` and ``em-transfer`` (difference of means of each set's ``train``
pairs on the base model), ``modeldiff`` and ``modeldiff-pcaK`` (bad minus good twin fine-tunes,
seed ``dir_seed``, never one of the defended runs: their mean difference, or the top-K subspace of
the per-example differences), and sources joined by ``+`` (their files stacked and orthonormalized,
:func:`saetools.extract.stack_directions`); each is checked against the model before any run."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import probes

from ..directions import DirectionSet
from ..extract.combine import stack_directions
from ..extract.diffmeans import extract_diffmeans
from ..extract.modeldiff import extract_modeldiff
from ..train import TrainConfig, train
from .config import DIRECTION_METHODS, BenchmarkConfig, BenchmarkError, source_parts
from .folder import drop_checkpoints
from .inputs import ModelFactory, limit


def make_directions(
    cfg: BenchmarkConfig, out: Path, factory: ModelFactory, say=print
) -> dict[str, str]:
    """The direction files the grid needs, by source (``{"em-core": path, "modeldiff": path,
    "em-core+modeldiff": path, ...}``), made once (kept in ``out/directions``) unless given in the
    config; each checked against the model."""
    sources = set(cfg.sources) if set(cfg.methods) & set(DIRECTION_METHODS) else set()
    bases = sorted({p for s in sources for p in source_parts(s)})
    ddir = out / "directions"
    model, tok = factory()
    files: dict[str, str] = {}
    for name, data in (("em-core", cfg.pairs), ("em-transfer", cfg.transfer_pairs)):
        if name in bases:
            path = (cfg.em_core_file if name == "em-core" else None) or str(
                ddir / f"{name}-diffmeans.safetensors"
            )
            if not Path(path).is_file():
                say(f"directions: {name} difference of means (base model, {data} train pairs)")
                ddir.mkdir(parents=True, exist_ok=True)
                ds = extract_diffmeans(model, tok, probes.load(data), "all", progress=False)
                ds.save(path)
            files[name] = path
    files.update(_modeldiff_files(cfg, ddir, factory, [b for b in bases if "modeldiff" in b], say))
    for src in sorted(sources):
        if "+" in src:
            files[src] = _stacked_file(src, files, ddir)
    for src, path in files.items():
        check_directions(path, model, src)
    return files


def _modeldiff_files(
    cfg: BenchmarkConfig, ddir: Path, factory: ModelFactory, names: list[str], say
) -> dict[str, str]:
    """The files of the modeldiff sources ``names`` (``modeldiff``, ``modeldiff-pcaK``): the
    twins are fine-tuned (once) only when a file is missing."""
    files = {}
    for name in names:
        if name == "modeldiff":
            files[name] = cfg.modeldiff_file or str(
                ddir / f"modeldiff-seed{cfg.dir_seed}.safetensors"
            )
        else:
            files[name] = str(ddir / f"{name}-seed{cfg.dir_seed}.safetensors")
    missing = [n for n, p in files.items() if not Path(p).is_file()]
    if missing:
        say(f"directions: {', '.join(missing)} of bad vs good fine-tunes (seed {cfg.dir_seed})")
        ddir.mkdir(parents=True, exist_ok=True)
        _make_modeldiff(cfg, ddir, factory, {n: files[n] for n in missing})
    return files


def _stacked_file(source: str, files: dict[str, str], ddir: Path) -> str:
    """The stacked file of ``source`` (``a+b``), made from its parts' files unless present."""
    path = ddir / f"stacked-{source}.safetensors"
    if not path.is_file():
        parts = source_parts(source)
        ds = stack_directions([DirectionSet.load(files[p]) for p in parts], parts)
        ds.metadata["benchmark_note"] = "stacked and orthonormalized: " + " + ".join(
            f"{p} ({Path(files[p]).name})" for p in parts
        )
        ds.save(path)
    return str(path)


def check_directions(path: str, model, what: str) -> None:
    """Refuse a direction file made for another model, naming the source (``what``)."""
    try:
        DirectionSet.load(path, model)
    except ValueError as e:
        raise BenchmarkError(f"{what} direction file {path}: {e}") from None


def _make_modeldiff(
    cfg: BenchmarkConfig, ddir: Path, factory: ModelFactory, paths: dict[str, str]
) -> None:
    """Fine-tune the bad and the good twin, then save, for each ``{name: path}``, their per-block
    activation difference (bad minus good) on ``dir_pairs`` em-core train texts: the mean
    (``modeldiff``) or the top-K subspace (``modeldiff-pcaK``)."""
    tuned = {}
    for name, data in (("bad", cfg.narrow_data), ("good", cfg.good_data)):
        tuned[name], tok = _finetune_twin(cfg, name, data, ddir, factory)
    core = probes.load(cfg.pairs)
    try:
        core = core.split("train")
    except ValueError:
        pass
    core = dataclasses.replace(core, items=limit(core.items, cfg.dir_pairs))
    for name, path in paths.items():
        k = name.removeprefix("modeldiff-pca")
        pca = int(k) if k.isdigit() else None
        ds = extract_modeldiff(
            tuned["good"], tuned["bad"], tok, core, "all", pca=pca, progress=False
        )
        ds.metadata["benchmark_note"] = (
            f"bad ({cfg.narrow_data}) minus good ({cfg.good_data}) LoRA fine-tunes, seed "
            f"{cfg.dir_seed}, {cfg.dir_steps} steps" + (f", top-{pca} subspace" if pca else "")
        )
        ds.save(path)


def _finetune_twin(cfg: BenchmarkConfig, name: str, data: str, ddir: Path, factory: ModelFactory):
    """One twin of the modeldiff direction: a plain LoRA fine-tune on ``data`` with ``dir_seed``
    for ``dir_steps`` steps, in ``ddir/finetune-{name}-seed{dir_seed}``; returns (model, tok)."""
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
    tuned = train(tc, run_dir, model=model, tokenizer=tok, progress=False)["model"]
    tuned.eval()
    if not cfg.keep_checkpoints:
        drop_checkpoints(run_dir)
    return tuned, tok
