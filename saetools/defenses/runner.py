"""The benchmark: :func:`run_benchmark` plans the grid, skips the runs a folder already holds, makes
the direction files, runs the rest (one at a time, or in worker processes), and writes the report."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from .config import DIRECTION_METHODS, BenchmarkConfig, BenchmarkError, Run, plan_runs
from .directions import make_directions
from .folder import append_results, check_folder, read_results, write_config
from .inputs import ModelFactory, default_factory, shared_inputs
from .judge import make_probe_judge
from .pool import check_picklable, run_parallel
from .report import write_outputs
from .run import run_one


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
    cfg.validate()
    _check_jobs(jobs, threads_per_job)
    out = Path(out)
    say = say or (lambda msg: None)
    factory = model_factory or default_factory(cfg.model, cfg.device)
    if jobs > 1 and model_factory is not None:
        check_picklable(model_factory, jobs)
    runs = plan_runs(cfg)
    results_path = out / "results.jsonl"
    check_folder(out, cfg)
    existing = read_results(results_path)
    done_ids = {r["run_id"] for r in existing if r.get("final")}
    todo = [r for r in runs if r.run_id not in done_ids]
    say(f"{len(runs)} runs in the grid: {len(runs) - len(todo)} done, {len(todo)} to run")

    dir_files: dict[str, str] = {}
    if any(r.method in DIRECTION_METHODS for r in runs):
        dir_files = make_directions(cfg, out, factory, say)
    judge_file = None
    if cfg.judged_rate and any(r.task == "narrow" for r in todo):
        judge_file = make_probe_judge(cfg, out, factory, say)
    write_config(out, cfg)
    if todo:
        common = shared_inputs(cfg, todo, dir_files, factory)
        common["judge_file"] = judge_file
        _run_all(
            cfg,
            todo,
            out,
            dir_files,
            common,
            factory=factory,
            model_factory=model_factory,
            jobs=jobs,
            threads_per_job=threads_per_job,
            progress=progress,
        )
    wanted = {r.run_id for r in runs}
    rows = [r for r in read_results(results_path) if r["run_id"] in wanted]
    table = write_outputs(out, rows, cfg, include_plotlyjs)
    return {
        "results": str(results_path),
        "table": str(out / "table.md"),
        "html": str(out / "defenses.html"),
        "runs_done": len(todo),
        "runs_skipped": len(runs) - len(todo),
        "rows": table,
    }


def _check_jobs(jobs: int, threads_per_job: int | None) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise BenchmarkError(f"jobs must be an integer >= 1, not {jobs!r}")
    if threads_per_job is not None and (
        not isinstance(threads_per_job, int) or threads_per_job < 1
    ):
        raise BenchmarkError(f"threads_per_job must be an integer >= 1, not {threads_per_job!r}")


def _run_all(
    cfg: BenchmarkConfig,
    todo: Sequence[Run],
    out: Path,
    dir_files: Mapping[str, str],
    common: dict,
    *,
    factory: ModelFactory,
    model_factory: ModelFactory | None,
    jobs: int,
    threads_per_job: int | None,
    progress: bool,
) -> None:
    """Run ``todo``, appending each run's rows to ``results.jsonl`` as it finishes. One job runs
    here with ``factory``; more run in worker processes, each with the caller's ``model_factory``
    (None: the default, loaded once per worker)."""
    results_path = out / "results.jsonl"

    def record(rows: list[dict]) -> None:
        append_results(results_path, rows)

    bar = tqdm(total=len(todo), desc="defense runs", unit="run", disable=not progress)
    if jobs == 1:
        for run in todo:
            bar.set_postfix_str(run.label)
            record(run_one(cfg, run, out, factory, dir_files, common))
            bar.update()
    else:
        run_parallel(
            cfg, todo, out, model_factory, dir_files, common, jobs, threads_per_job, record, bar
        )
    bar.close()
