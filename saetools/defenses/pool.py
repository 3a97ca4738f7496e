"""Runs in worker processes (``jobs > 1``): a pool of spawned workers, each loading the model once
with its share of the torch threads; the rows of each finished run come back to the calling
process, which writes them. An interruption (Ctrl-C, a failed run, SIGTERM to the calling process
alone) stops the workers at once.

The worker entry points (:func:`_worker_init`, :func:`_worker_run`) are module-level functions:
spawned processes import them by name."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from .config import BenchmarkConfig, BenchmarkError, Run
from .inputs import ModelFactory, default_factory
from .run import run_one


def check_picklable(model_factory: ModelFactory, jobs: int) -> None:
    """Refuse a model factory that cannot be sent to worker processes."""
    try:
        pickle.dumps(model_factory)
    except Exception as e:  # noqa: BLE001 - any pickling failure means the same thing
        raise BenchmarkError(
            f"jobs={jobs} needs a picklable model_factory (a module-level function), and this "
            f"one is not ({type(e).__name__}: {e}); use jobs=1"
        ) from None


def run_parallel(
    cfg: BenchmarkConfig,
    todo: Sequence[Run],
    out: Path,
    model_factory: ModelFactory | None,
    dir_files: Mapping[str, str],
    common: dict,
    jobs: int,
    threads: int | None,
    record: Callable[[list[dict]], None],
    bar,
) -> None:
    """Run ``todo`` in ``jobs`` spawned worker processes; rows are written by this process as each
    run finishes, so an interruption loses only the runs in flight. An interruption (Ctrl-C, an
    error, or SIGTERM to this process alone) stops the workers at once."""
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


# the worker process's config and model factory, set once by _worker_init
_WORKER: dict = {}


def _worker_init(cfg: BenchmarkConfig, model_factory, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["cfg"] = cfg
    _WORKER["factory"] = model_factory or default_factory(cfg.model, cfg.device)


def _worker_run(run: Run, out: str, dir_files: dict, common: dict) -> list[dict]:
    return run_one(_WORKER["cfg"], run, Path(out), _WORKER["factory"], dir_files, common)
