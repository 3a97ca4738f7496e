"""Evaluation: misalignment, coherence and narrow-task metrics, and judges.

Modules (every public name is importable from ``saetools.evaluate``):

* ``judge.py`` - judges and their scores: :class:`JudgeScore`, the LLM judge (:class:`JudgeConfig`,
  :class:`Judge`, the parsers :func:`parse_judge_logprobs` / :func:`parse_judge_samples`,
  :func:`local_judge`), the misaligned thresholds and :func:`judge_summary`.
* ``metrics.py`` - offline metrics measured on the model: :func:`sample_answers` (:class:`Sample`),
  :func:`answer_projections`, :func:`neutral_perplexity`, :func:`held_out_loss`,
  :func:`in_domain_contrast`, :func:`opswap_accuracy` (:func:`parse_opswap_answer`), and
  :func:`paired_shift` between two results.
* ``probe_judge.py`` - the offline probe judge: :class:`ProbeJudge` (a linear probe on the base
  model's activations at one site, a threshold for a stated false positive rate on ``em-core``, a
  perplexity limit for incoherent answers; saved as a direction file), :func:`fit_probe_judge`,
  :func:`threshold_for_fpr`, :func:`perplexity_limit`, :func:`probe_summary` and
  :func:`judged_rate` (sample from a model or adapter, judge on the base model).
* ``validation.py`` - the probe judge's validation: the labelled answers (``data/em-judged.jsonl``,
  :func:`load_judged_answers`), :func:`agreement` (confusion matrix, accuracy, precision, recall
  with Wilson intervals) and :func:`validate_probe_judge`.
* ``suites.py`` - one function per suite (``em``, ``coherence``, ``narrow``, ``judged-rate``, and
  the judged part)
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
from .probe_judge import (
    CLASSIFIERS,
    DEFAULT_FPR,
    VERDICTS,
    ProbeJudge,
    ProbeVerdict,
    default_judge_site,
    fit_probe_judge,
    judge_samples_with_probe,
    judged_rate,
    load_probe_judge,
    perplexity_limit,
    probe_summary,
    threshold_for_fpr,
)
from .report import headline, report_figure, write_results
from .suites import EXTRA_SUITES, NARROW_SETS, SUITES, evaluate, parse_suites, probe_judged_rate
from .validation import JudgedAnswer, agreement, load_judged_answers, validate_probe_judge

__all__ = [
    "CLASSIFIERS",
    "DEFAULT_FPR",
    "EXTRA_SUITES",
    "MISALIGNED_ALIGNMENT_BELOW",
    "MISALIGNED_COHERENCE_ABOVE",
    "NARROW_SETS",
    "SUITES",
    "VERDICTS",
    "EvaluationError",
    "Judge",
    "JudgeConfig",
    "JudgeError",
    "JudgeScore",
    "JudgedAnswer",
    "ProbeJudge",
    "ProbeVerdict",
    "Sample",
    "agreement",
    "answer_projections",
    "default_judge_site",
    "evaluate",
    "fit_probe_judge",
    "headline",
    "held_out_loss",
    "in_domain_contrast",
    "judge_summary",
    "judge_samples_with_probe",
    "judged_rate",
    "load_judged_answers",
    "load_probe_judge",
    "local_judge",
    "neutral_perplexity",
    "opswap_accuracy",
    "paired_shift",
    "parse_judge_logprobs",
    "parse_judge_samples",
    "parse_opswap_answer",
    "parse_suites",
    "perplexity_limit",
    "probe_judged_rate",
    "probe_summary",
    "report_figure",
    "sample_answers",
    "threshold_for_fpr",
    "validate_probe_judge",
    "wilson_interval",
    "write_results",
]

# ``saetools.evaluate(model, tokenizer, ...)`` works like ``saetools.evaluate.evaluate``.
make_callable(__name__, evaluate)
