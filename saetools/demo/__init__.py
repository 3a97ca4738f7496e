"""The main job: the whole saetools loop on the embedded model, written into one folder.

:func:`run_demo` prepares the embedded model, extracts ``em-core`` directions, steers with them,
fine-tunes twice (no regularizer, directional KL), evaluates the base model and both adapters, and
writes ``index.html`` that links everything (``saetools demo``).

Modules:

* ``settings.py`` - what the demo runs and at what size (:data:`FULL`, :data:`QUICK`).
* ``stages.py`` - the stages and :func:`run_demo`, which runs them.
* ``report.py`` - ``index.html`` (:func:`write_index`), the comparison figure and the printed
  summary.
"""

from __future__ import annotations

from .report import compare_figure, print_summary, write_index
from .settings import (
    DEMO_PROMPTS,
    FULL,
    QUICK,
    RUNS,
    STEER_SITE,
    TRAIN_DATA,
    TWIN_DATA,
    DemoSizes,
)
from .stages import run_demo

__all__ = [
    "DEMO_PROMPTS",
    "FULL",
    "QUICK",
    "RUNS",
    "STEER_SITE",
    "TRAIN_DATA",
    "TWIN_DATA",
    "DemoSizes",
    "compare_figure",
    "print_summary",
    "run_demo",
    "write_index",
]
