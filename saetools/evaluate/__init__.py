"""Evaluation: misalignment, coherence and narrow-task metrics, and judges.

Modules (every public name is importable from ``saetools.evaluate``):

* ``judge.py`` - judges and their scores: :class:`JudgeScore`, the LLM judge (:class:`JudgeConfig`,
  :class:`Judge`, the parsers :func:`parse_judge_logprobs` / :func:`parse_judge_samples`,
  :func:`local_judge`), the misaligned thresholds and :func:`judge_summary`.
* ``metrics.py`` - offline metrics measured on the model: :func:`sample_answers` (:class:`Sample`),
  :func:`answer_projections`, :func:`neutral_perplexity`, :func:`held_out_loss`,
  :func:`in_domain_contrast`, :func:`opswap_accuracy` (:func:`parse_opswap_answer`), and
  :func:`paired_shift` between two results.
* ``suites.py`` - one function per suite (``em``, ``coherence``, ``narrow``, and the judged part)
  and :func:`evaluate`, the driver that runs them and returns a JSON-serialisable dict.
* ``report.py`` - :func:`headline`, :func:`report_figure` (plotly), :func:`write_results`.
* ``errors.py`` - :class:`EvaluationError`.

:func:`wilson_interval` lives in :mod:`saetools.stats` and is re-exported here.
"""

from __future__ import annotations

from ..callable_package import make_callable
from ..stats import wilson_interval
from .errors import EvaluationError
from .judge import (
    MISALIGNED_ALIGNMENT_BELOW,
    MISALIGNED_COHERENCE_ABOVE,
    Judge,
    JudgeConfig,
    JudgeError,
    JudgeScore,
    judge_summary,
    local_judge,
    parse_judge_logprobs,
    parse_judge_samples,
)
from .metrics import (
    Sample,
    answer_projections,
    held_out_loss,
    in_domain_contrast,
    neutral_perplexity,
    opswap_accuracy,
    paired_shift,
    parse_opswap_answer,
    sample_answers,
)
from .report import headline, report_figure, write_results
from .suites import NARROW_SETS, SUITES, evaluate, parse_suites

__all__ = [
    "MISALIGNED_ALIGNMENT_BELOW",
    "MISALIGNED_COHERENCE_ABOVE",
    "NARROW_SETS",
    "SUITES",
    "EvaluationError",
    "Judge",
    "JudgeConfig",
    "JudgeError",
    "JudgeScore",
    "Sample",
    "answer_projections",
    "evaluate",
    "headline",
    "held_out_loss",
    "in_domain_contrast",
    "judge_summary",
    "local_judge",
    "neutral_perplexity",
    "opswap_accuracy",
    "paired_shift",
    "parse_judge_logprobs",
    "parse_judge_samples",
    "parse_opswap_answer",
    "parse_suites",
    "report_figure",
    "sample_answers",
    "wilson_interval",
    "write_results",
]

# ``saetools.evaluate(model, tokenizer, ...)`` works like ``saetools.evaluate.evaluate``.
make_callable(__name__, evaluate)
