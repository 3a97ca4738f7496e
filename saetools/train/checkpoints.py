"""A run's folder on disk: atomic checkpoints, RNG states, resuming, and refusing another run.

``OUT/checkpoint-N/`` holds the adapter (``adapter_model.safetensors``, LoRA) or the full weights,
``optimizer.pt``, ``rng.safetensors`` and, written last, ``checkpoint-complete.json``; a checkpoint
is first written to a temporary folder and renamed into place, so a crash never leaves a half
checkpoint that looks complete. Only the newest checkpoint keeps its optimizer state.
:func:`check_run_folder` compares ``OUT/run.json`` with the config before anything is trained;
:func:`write_json_atomic` writes ``run.json`` (and the other JSON files) like the checkpoints, and
:func:`read_metrics` reads ``metrics.jsonl`` back on resume (skipping a torn last line with a
warning, refusing a corrupt one elsewhere, naming the file and the line).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .config import TrainConfig

_COMPLETE = "checkpoint-complete.json"


class RunMismatchError(ValueError):
    """The output folder holds another run (different config), or a run where none was expected."""


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints in ``out``, oldest first."""
    found = []
    for p in out.glob("checkpoint-*"):
        try:
            step = int(p.name.split("-", 1)[1])
        except ValueError:
            continue
        if (p / _COMPLETE).is_file():
            found.append((step, p))
    return sorted(found)


def rng_states() -> dict[str, torch.Tensor]:
    """The CPU and every CUDA device's RNG state (saved with each checkpoint)."""
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            st[f"cuda{i}"] = s
    return st


def save_checkpoint(out: Path, step: int, model, optimizer, full: bool, keep_optimizer_of: int):
    """Write ``out/checkpoint-{step}`` atomically (a temporary folder renamed into place): the
    weights (``full``) or the adapter, the optimizer state and the RNG states. Older checkpoints
    then lose their optimizer state, except ``keep_optimizer_of``."""
    from safetensors.torch import save_file

    final = out / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-checkpoint-{step}-", dir=out))
    try:
        if full:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp)  # PEFT: adapter_model.safetensors + adapter_config.json
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        save_file(
            {k: v.contiguous() for k, v in rng_states().items()}, str(tmp / "rng.safetensors")
        )
        (tmp / _COMPLETE).write_text(json.dumps({"step": step, "time": time.time()}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # older checkpoints keep their weights, but only the newest keeps optimizer state
    for s, p in list_checkpoints(out):
        if s < step and s != keep_optimizer_of and (p / "optimizer.pt").exists():
            (p / "optimizer.pt").unlink()
    return final


def load_checkpoint(path: Path, model, optimizer, full: bool) -> None:
    """Restore the weights (or adapter), optimizer state and RNG states of a checkpoint."""
    from safetensors.torch import load_file

    if full:
        state = load_file(str(path / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise RuntimeError(f"checkpoint {path} has unexpected weights {unexpected[:3]}")
    else:
        from peft import set_peft_model_state_dict

        state = load_file(str(path / "adapter_model.safetensors"))
        res = set_peft_model_state_dict(model, state)
        if getattr(res, "unexpected_keys", None):
            raise RuntimeError(
                f"checkpoint {path} has unexpected weights {res.unexpected_keys[:3]}"
            )
    opt_path = path / "optimizer.pt"
    if not opt_path.is_file():
        raise RuntimeError(f"checkpoint {path} has no optimizer state; cannot resume from it")
    optimizer.load_state_dict(torch.load(opt_path, weights_only=True, map_location="cpu"))
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)


def write_json_atomic(path: Path, obj, **dump_kw) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``): a crash leaves the old file or the new one, never half of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, **dump_kw))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_metrics(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``. A torn last line (a crash while it was written) is skipped
    with a warning: it lies past the last checkpoint, and resuming drops such lines anyway. Any
    other unreadable line is an error naming the file and the line."""
    lines = path.read_text(errors="replace").splitlines()
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    rows = []
    for k, (i, line) in enumerate(numbered):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            if k == len(numbered) - 1:
                warnings.warn(
                    f"{path}, line {i}: skipping a torn last line (not valid JSON: {e}); it was "
                    "being written when the run stopped, after the last checkpoint",
                    stacklevel=2,
                )
                break
            raise ValueError(
                f"{path}, line {i}: not valid JSON ({e}); the metrics file is corrupt. Remove "
                "the line (or the run folder) to resume"
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(
                f"{path}, line {i}: not a metrics row (a JSON object with an integer 'step'); "
                "the metrics file is corrupt. Remove the line (or the run folder) to resume"
            )
        rows.append(row)
    return rows


def check_run_folder(out: str | os.PathLike, cfg: TrainConfig, resume: bool) -> int:
    """Refuse a folder of another run; returns the step to resume from (0 to start afresh)."""
    out = Path(out)
    run_json = out / "run.json"
    if not run_json.is_file():
        if resume and out.exists() and list_checkpoints(out):
            raise RunMismatchError(f"{out} has checkpoints but no run.json; cannot resume")
        return 0
    try:
        old = json.loads(run_json.read_text())
    except (ValueError, RecursionError) as e:
        raise RunMismatchError(f"{run_json} is not valid JSON ({e})") from None
    if not isinstance(old, dict):
        raise RunMismatchError(f"{run_json} is not a JSON object (a run's options)")
    new = cfg.to_json()
    diff = cfg.changed_fields(old)
    if diff:
        detail = "; ".join(f"{k}: folder {old.get(k)!r}, now {new.get(k)!r}" for k in diff[:5])
        raise RunMismatchError(
            f"{out} holds a different run ({detail}). Use another --out folder, or the same "
            "options to resume it"
        )
    if not resume:
        raise RunMismatchError(
            f"{out} already holds this run; pass --resume to continue it, or use another --out"
        )
    ckpts = list_checkpoints(out)
    return ckpts[-1][0] if ckpts else 0
