"""The direction files of the direction-based methods, made once per benchmark folder: ``em-core``
(difference of means on the base model) and ``modeldiff`` (bad minus good twin fine-tunes, seed
``dir_seed``, never one of the defended runs); each is checked against the model before any run."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import probes

from ..directions import DirectionSet
from ..extract.diffmeans import extract_diffmeans
from ..extract.modeldiff import extract_modeldiff
from ..train import TrainConfig, train
from .config import DIRECTION_METHODS, BenchmarkConfig, BenchmarkError
from .folder import drop_checkpoints
from .inputs import ModelFactory, limit


def make_directions(
    cfg: BenchmarkConfig, out: Path, factory: ModelFactory, say=print
) -> dict[str, str]:
    """The direction files the grid needs: ``{"em-core": path, "modeldiff": path}``, made once
    (kept in ``out/directions``) unless given in the config; each checked against the model."""
    need = {s for s in cfg.sources} if set(cfg.methods) & set(DIRECTION_METHODS) else set()
    files: dict[str, str] = {}
    ddir = out / "directions"
    model, tok = factory()
    if "em-core" in need:
        path = cfg.em_core_file or str(ddir / "em-core-diffmeans.safetensors")
        if not Path(path).is_file():
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
        check_directions(path, model, src)
    return files


def check_directions(path: str, model, what: str) -> None:
    """Refuse a direction file made for another model, naming the source (``what``)."""
    try:
        DirectionSet.load(path, model)
    except ValueError as e:
        raise BenchmarkError(f"{what} direction file {path}: {e}") from None


def _make_modeldiff(cfg: BenchmarkConfig, ddir: Path, factory: ModelFactory, path: str) -> str:
    """Fine-tune the bad and the good twin, then save their per-block mean activation difference
    (bad minus good) on ``dir_pairs`` em-core train texts to ``path``."""
    tuned = {}
    for name, data in (("bad", cfg.narrow_data), ("good", cfg.good_data)):
        tuned[name], tok = _finetune_twin(cfg, name, data, ddir, factory)
    core = probes.load(cfg.pairs)
    try:
        core = core.split("train")
    except ValueError:
        pass
    core = dataclasses.replace(core, items=limit(core.items, cfg.dir_pairs))
    ds = extract_modeldiff(tuned["good"], tuned["bad"], tok, core, "all", progress=False)
    ds.metadata["benchmark_note"] = (
        f"bad ({cfg.narrow_data}) minus good ({cfg.good_data}) LoRA fine-tunes, seed "
        f"{cfg.dir_seed}, {cfg.dir_steps} steps"
    )
    ds.save(path)
    return path


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
