"""What the runs read: the model factory (a fresh model per run), the test items of the data sets,
and :func:`shared_inputs`, the data and base-model numbers every run of a call shares (made once,
sent to each worker)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch

import probes

from ..models import load_model
from ..scoring import pair_contrast, task_loss
from ..sites import n_layers
from ..train import eval_batches, load_chat_data
from .config import SIZE_FIELDS, BenchmarkConfig, BenchmarkError, Run

ModelFactory = Callable[[], tuple[torch.nn.Module, object]]


def default_factory(name: str, device: str = "auto") -> ModelFactory:
    """Load model ``name`` once (on the first call) and hand out a deep copy per call."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cache: dict = {}

    def make():
        if "lm" not in cache:
            lm = load_model(name, device=device)
            cache["lm"] = (lm.model, lm.tokenizer)
        model, tok = cache["lm"]
        return copy.deepcopy(model), tok

    return make


def limit(xs, n):
    """The first ``n`` of ``xs`` as a list (all of them when ``n`` is None or 0)."""
    return list(xs)[: n or None]


def pairs_test(cfg: BenchmarkConfig, name: str | None = None):
    """The pairs of a general shift: ``eval_pairs`` of the test split of ``name`` (default
    ``cfg.pairs``; the transfer set ``cfg.transfer_pairs`` is read the same way)."""
    name = name or cfg.pairs
    ps = probes.load(name)
    if ps.kind != "pairs":
        flag = "--pairs" if name == cfg.pairs else "--transfer-pairs"
        raise BenchmarkError(f"{flag} {name!r} must be a pairs set, not {ps.kind!r}")
    try:
        ps = ps.split("test")
    except ValueError:
        pass
    return limit(ps.items, cfg.eval_pairs)


def middle_site(model) -> str:
    """The default site of site mode "one": the residual stream after the middle block."""
    return f"blocks.{n_layers(model) // 2}.hook_resid_post"


def task_batches(cfg: BenchmarkConfig, task: str, tok) -> list:
    """The held-out items of a task's data (``eval_examples`` of its test split), collated."""
    data = cfg.narrow_data if task == "narrow" else cfg.benign_data
    try:
        test = limit(load_chat_data(data, "test"), cfg.eval_examples)
    except ValueError:
        test = []
    return eval_batches(tok, test, max_length=cfg.max_length)


def shared_inputs(
    cfg: BenchmarkConfig, todo: Sequence[Run], dir_files: Mapping[str, str], factory: ModelFactory
) -> dict:
    """What every run of ``todo`` reads: the test items of each data set, the pairs of the general
    shift, the config written into each result row, and the base model's numbers."""
    bad = load_chat_data(cfg.narrow_data, "test")
    good = load_chat_data(cfg.good_data, "test")
    neutral = probes.load(cfg.neutral)
    neutral = dataclasses.replace(neutral, items=limit(neutral.items, cfg.neutral_texts))
    common = {
        "pairs": pairs_test(cfg),
        "transfer_pairs": pairs_test(cfg, cfg.transfer_pairs) if cfg.transfer_pairs else None,
        "bad_test": limit(bad, cfg.eval_examples),
        "good_test": limit(good, cfg.eval_examples),
        "neutral": neutral,
        "benign_test": limit(load_chat_data(cfg.benign_data, "test"), cfg.benign_examples),
        "config": {k: v for k, v in cfg.to_json().items() if k in SIZE_FIELDS},
    }
    common["config"]["direction_files"] = dir_files
    common["config"]["device"] = cfg.device
    common.update(_base_numbers(cfg, todo, common["pairs"], common["transfer_pairs"], factory))
    return common


def _base_numbers(
    cfg: BenchmarkConfig, todo: Sequence[Run], pairs, transfer, factory: ModelFactory
) -> dict:
    """The base model's numbers, once: the contrasts the shifts are measured against (on both
    pair sets, when a narrow run is to do), and the held-out task loss at step 0 of each task."""
    base_model, base_tok = factory()
    out: dict = {"base_contrast_transfer": None}
    if any(r.task == "narrow" for r in todo):
        out["base_contrast"] = pair_contrast(base_model, base_tok, pairs).cpu()
        if transfer is not None:
            out["base_contrast_transfer"] = pair_contrast(base_model, base_tok, transfer).cpu()
    out["base_task_loss"] = {}
    for task in sorted({r.task for r in todo}):
        b = task_batches(cfg, task, base_tok)
        out["base_task_loss"][task] = task_loss(base_model, b) if b else None
    del base_model
    return out
