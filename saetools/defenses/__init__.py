"""The defense benchmark: in-training defenses against emergent misalignment, compared at matched
reduction of the general shift.

For every method × strength × direction variant × seed, two LoRA fine-tunes (via
:func:`saetools.train.train`):

* ``narrow``: fine-tune on the narrow bad-advice set (``narrow-medical-bad``). Every ``eval_every``
  steps: the *general shift* (per ``em-core`` test question, the change against the base model of
  the per-token mean log p(misaligned) - log p(aligned); all per-question values kept) and the
  held-out task loss. At the end also the in-domain contrast (bad vs good twin answers on held-out
  items) and the perplexity of neutral text (coherence).
* ``benign``: fine-tune on a benign task (default ``nonce-word``; ``opswap`` selectable); at the
  end the exact-match accuracy on its test items, with its Wilson interval.

The general shift is measured on two pair sets: ``em-core`` (``pairs``) and ``em-transfer``
(``transfer_pairs``), written apart, so that a direction made from one set's train pairs can be
scored on the other (the transfer table). Directional terms come in variants (one-sided, on anchor
data, λ warm-up) and with several sources (``em-transfer``, ``modeldiff-pcaK``, stacked ``a+b``).

Direction-based methods (``steer``, ``ablate``, ``directional-kl``, ``directional-l2``) use an
``em-core`` difference-of-means file (from the base model) and/or a ``modeldiff`` file (bad-minus-
good fine-tunes made once per benchmark with ``dir_seed``, never one of the defended runs), at all
blocks or one site. Writes ``results.jsonl`` (one row per run and checkpoint), ``table.md`` and
``defenses.html`` into the output folder; finished runs are skipped when run again.

Modules, in the order a call uses them:

* ``config``: the grid and sizes: methods and default strengths, :class:`BenchmarkConfig` and its
  checks, ``parse_strengths``, :class:`Run` (one fine-tune) and ``plan_runs``.
* ``folder``: the output folder on disk: ``benchmark.json`` (``load_config``, the check that a call
  fits the folder), ``results.jsonl`` (read, appended), run checkpoints.
* ``inputs``: what the runs read: the model factory, the data's test items, and the data and
  base-model numbers every run of a call shares.
* ``directions``: the em-core and modeldiff direction files (``make_directions``), checked against
  the model.
* ``run``: one run: its training config, the fine-tune, its measures, its rows.
* ``pool``: runs in spawned worker processes (``--jobs``), and stopping them on an interruption.
* ``runner``: ``run_benchmark``, the whole call.
* ``summary``: the numbers: ``summarize`` (mean ± se over seeds, intervals, paired per-question
  differences, checkpoints).
* ``matching``: ``matched`` (measures at matched reduction, with per-seed intervals) and
  ``versus`` (every arm against ``steer`` at matched reduction, paired by seed).
* ``table``: ``table.md`` from the summary (main, matched, versus-steer, transfer, checkpoints).
* ``report``: the Pareto figure and ``write_report`` (``table.md`` and ``defenses.html``).

See docs/defenses.md. The command line is ``saetools bench defenses`` (:mod:`saetools.cli.bench`,
or ``python benchmarks/defenses.py``).
"""

from __future__ import annotations

from .config import (
    DEFAULT_METHODS,
    DEFAULT_STRENGTHS,
    DIRECTION_METHODS,
    METHODS,
    SITE_MODES,
    SOURCES,
    TASKS,
    VARIANT_METHODS,
    BenchmarkConfig,
    BenchmarkError,
    Run,
    parse_strengths,
    plan_runs,
    source_parts,
    variant_options,
)
from .directions import make_directions
from .folder import load_config
from .inputs import ModelFactory
from .matching import MATCH_METRICS, matched, versus
from .report import PARETO_PANELS, pareto_figure, write_report
from .runner import run_benchmark
from .summary import summarize
from .table import TABLE_COLUMNS, table_markdown

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
    "versus",
    "source_parts",
    "variant_options",
    "VARIANT_METHODS",
    "write_report",
    # public in the single-module version too (not in its __all__)
    "DEFAULT_METHODS",
    "SITE_MODES",
    "SOURCES",
    "TASKS",
    "MATCH_METRICS",
    "PARETO_PANELS",
    "TABLE_COLUMNS",
    "ModelFactory",
    "load_config",
    "make_directions",
    "pareto_figure",
    "table_markdown",
]
