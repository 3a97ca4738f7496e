"""The benchmark folder on disk (``--out``): ``benchmark.json`` (the config a folder was run with,
and the check that a new call fits it), ``results.jsonl`` (read, appended), and the run folders'
checkpoints (dropped unless kept)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .config import LATER_FIELDS, OPTIONAL_FIELDS, SIZE_FIELDS, BenchmarkConfig, BenchmarkError


def load_config(out: str | os.PathLike) -> BenchmarkConfig:
    """The :class:`BenchmarkConfig` a benchmark folder was last run with (``benchmark.json``)."""
    path = Path(out) / "benchmark.json"
    if not path.is_file():
        raise BenchmarkError(f"{out} holds no benchmark (no benchmark.json)")
    d = json.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    d = {k: v for k, v in d.items() if k in names}
    for k in ("methods", "seeds", "tasks", "sources", "site_modes", "variants"):
        if k in d:
            d[k] = tuple(d[k])
    d["strengths"] = {m: tuple(v) for m, v in d.get("strengths", {}).items()}
    return BenchmarkConfig(**d)


def write_config(out: Path, cfg: BenchmarkConfig) -> None:
    """``benchmark.json``: this call's config, keeping the optional fields (the SAE of
    sae-latents) of earlier calls that set them when this one does not."""
    new = cfg.to_json()
    path = out / "benchmark.json"
    if path.is_file():
        old = json.loads(path.read_text())
        for k in OPTIONAL_FIELDS:
            if new.get(k) is None and old.get(k) is not None:
                new[k] = old[k]
    tmp = path.with_name(".benchmark.json.tmp")
    tmp.write_text(json.dumps(new, indent=2))
    os.replace(tmp, path)


def check_folder(out: Path, cfg: BenchmarkConfig) -> None:
    """Refuse a folder that holds a benchmark with other sizes or data; create it if missing."""
    bench_json = out / "benchmark.json"
    new = cfg.to_json()
    if bench_json.is_file():
        old = json.loads(bench_json.read_text())
        defaults = BenchmarkConfig().to_json()
        for k in LATER_FIELDS:
            old.setdefault(k, defaults[k])
        diff = [
            k
            for k in SIZE_FIELDS
            if old.get(k) != new.get(k)
            # the SAE of sae-latents: a call without that method may leave it out
            and not (k in OPTIONAL_FIELDS and None in (old.get(k), new.get(k)))
        ]
        if diff:
            detail = "; ".join(f"{k}: folder {old.get(k)!r}, now {new.get(k)!r}" for k in diff[:5])
            raise BenchmarkError(
                f"{out} holds a benchmark with other sizes or data ({detail}); use another --out "
                "or the same sizes (methods, strengths, seeds and direction variants may change)"
            )
    out.mkdir(parents=True, exist_ok=True)


def read_results(path: Path) -> list[dict]:
    """The rows of ``results.jsonl`` (none when the file is missing)."""
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


def append_results(path: Path, rows: Sequence[dict]) -> None:
    """Append one run's rows to ``results.jsonl``, one JSON object a line."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def drop_checkpoints(run_dir: Path) -> None:
    """Remove a run folder's adapter checkpoints (``checkpoint-*``)."""
    for p in run_dir.glob("checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)
