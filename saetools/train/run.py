"""The ``train`` loop (``saetools train``): a small, resumable fine-tune with regularizers.

LoRA or full fine-tuning with AdamW. Every step logs the task loss and every term; every
``eval_every`` steps (and at the last) it measures the *general shift* on ``em-core`` test pairs
and the held-out task loss, and writes an atomic checkpoint. The output folder holds
``metrics.jsonl``, ``curves.html``, ``run.json``, ``base_eval.json`` and ``checkpoint-N/``
(:mod:`.checkpoints`).

Gradient accumulation: the terms of :class:`~saetools.regularize.RegularizedLoss` are
per-micro-batch means over the loss tokens. Each micro-batch is weighted by its token count and
divided by the number of loss tokens in the whole accumulated batch, so an update from 8
micro-batches of 1 equals the update from 1 batch of 8 (task loss *and* every term are token means
over the full batch).

Data parallel (``torchrun`` / ``accelerate launch`` around ``saetools train``, or any initialized
process group): each step's batch (``batch_size`` examples, the global batch) is dealt round-robin
over the ranks, the model is wrapped in ``DistributedDataParallel`` (gradients all-reduced), and
every rank scales its micro-batches by its share of the *global* loss tokens, so W processes make
the update one process makes (``batch_size`` must be a multiple of the world size). The logs are
summed over ranks. Rank 0 alone evaluates, writes ``metrics.jsonl``, ``curves.html`` and the
checkpoints; the other ranks wait for it. See docs/scaling.md.
"""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..capture import IGNORE_INDEX, ChatExample, pad_token_id
from ..directions import DirectionSet
from ..distributed import init_from_env, torch_distributed
from ..models import load_model
from ..plots import write_html
from ..regularize import RegularizedLoss
from ..scoring import eval_pairs, shift_and_loss
from .checkpoints import (
    check_run_folder,
    list_checkpoints,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    write_json_atomic,
)
from .config import TrainConfig, build_terms, lam_scale
from .data import (
    anchor_batches,
    anchor_examples,
    batches_for_step,
    collate_examples,
    encode_training_example,
    eval_batches,
    interleave,
    load_chat_data,
)
from .figures import curves_figure


def lora_config(rank: int, alpha: float | None, model):
    """A PEFT ``LoraConfig`` of rank ``rank`` on every attention and MLP projection of ``model``
    (Llama-style names, else GPT-2 / NeoX names, else all linear layers); ``alpha`` defaults to
    ``2 * rank``, no dropout."""
    from peft import LoraConfig

    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    wanted = [
        n
        for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        if n in names
    ]
    if not wanted:  # GPT-2 / NeoX style names
        wanted = [n for n in ("c_attn", "c_proj", "c_fc", "query_key_value", "dense") if n in names]
        wanted = wanted or "all-linear"
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=0.0,
        target_modules=wanted,
        task_type="CAUSAL_LM",
    )


@dataclass
class _Examples:
    """A run's chat examples: training (interleaved with safe data when asked), held-out test,
    anchor (None without ``cfg.anchor``), and the em-core pairs of the general shift."""

    train: list[ChatExample]
    test: list[ChatExample]
    anchor: list[ChatExample] | None
    pairs: object


def _load_examples(cfg: TrainConfig) -> _Examples:
    anchor_exs = anchor_examples(cfg.anchor) if cfg.anchor else None
    train_exs = load_chat_data(cfg.data, "train", **(cfg.data_options or {}))
    if cfg.interleave:
        safe = load_chat_data(cfg.interleave_data, "train")
        train_exs = interleave(train_exs, safe, cfg.interleave, seed=cfg.seed)
    try:
        test_exs = load_chat_data(cfg.data, "test", **(cfg.data_options or {}))
    except ValueError:
        test_exs = []
    pairs = eval_pairs(cfg.eval_probes, cfg.eval_pairs)
    if cfg.eval_examples:
        test_exs = test_exs[: cfg.eval_examples]
    return _Examples(train_exs, test_exs, anchor_exs, pairs)


def _make_trainable(model: nn.Module, cfg: TrainConfig) -> tuple[nn.Module, bool]:
    """(the model to train, whether it is a full fine-tune): every weight trains, or the model is
    frozen and wrapped in LoRA adapters (:func:`lora_config`)."""
    full = cfg.lora_rank is None
    if full:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        from peft import get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        model = get_peft_model(model, lora_config(cfg.lora_rank, cfg.lora_alpha, model))
    return model, full


@dataclass
class _Run:
    """A run in progress: what each step reads, and the metric rows written so far."""

    cfg: TrainConfig
    out: Path
    model: nn.Module
    tokenizer: object
    reg: RegularizedLoss
    optimizer: torch.optim.Optimizer
    full: bool
    train: list[dict]  # encoded training examples (input_ids, labels)
    pad: int
    pairs: object
    test_batches: list[dict]
    base_contrast: torch.Tensor | None = None  # per-pair contrast of the model before training
    rows: list[dict] = field(default_factory=list)
    rank: int = 0  # data parallel: this process's rank and the world size
    world: int = 1
    grad_model: nn.Module | None = None  # the DistributedDataParallel wrapper, when world > 1
    base_weights: dict[str, float] = field(default_factory=dict)  # loss terms' weights (warm-up)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch_distributed().barrier()

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"


def _data_parallel(model: nn.Module, world: int) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` (``world > 1``), else itself."""
    if world <= 1:
        return model
    dev = next(p for p in model.parameters() if p.requires_grad).device
    ids = [dev] if dev.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _prepare(
    cfg, out: Path, model, tokenizer, terms: list, full: bool, exs: _Examples, launch
) -> _Run:
    """Encode the examples and set up the regularizer (on the DDP wrapper when data parallel) and
    the optimizer."""
    max_len = cfg.max_length
    enc_train = [encode_training_example(tokenizer, e, max_length=max_len) for e in exs.train]
    pad = pad_token_id(tokenizer)
    test_batches = eval_batches(tokenizer, exs.test, max_length=max_len)
    anchor = None
    if exs.anchor is not None:
        anchor = anchor_batches(
            tokenizer, exs.anchor, max_length=max_len, batch_size=cfg.batch_size
        )
    grad_model = _data_parallel(model, launch.world_size)
    # a full fine-tune needs a frozen copy as θ0 (made by RegularizedLoss when a term needs it)
    reg = RegularizedLoss(grad_model, terms, None, anchor=anchor, force=cfg.force)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = _Run(
        cfg, out, model, tokenizer, reg, optimizer, full, enc_train, pad, exs.pairs, test_batches
    )
    run.rank, run.world, run.grad_model = launch.rank, launch.world_size, grad_model
    run.base_weights = {t.name: float(t.weight) for t in terms if hasattr(t, "weight")}
    return run


def _resume(run: _Run, start: int) -> None:
    """Load checkpoint ``start``, the base evaluation, and the metric rows up to ``start``."""
    load_checkpoint(run.out / f"checkpoint-{start}", run.model, run.optimizer, run.full)
    base = json.loads((run.out / "base_eval.json").read_text())
    run.base_contrast = torch.tensor(base["contrast_per_pair"], dtype=torch.float64)
    if run.metrics_path.is_file():
        run.rows += [r for r in read_metrics(run.metrics_path) if r["step"] <= start]


def _start_afresh(run: _Run) -> None:
    """Write ``run.json`` and evaluate the untrained model (step 0, ``base_eval.json``)."""
    if run.metrics_path.exists():
        run.metrics_path.unlink()
    write_json_atomic(run.out / "run.json", run.cfg.to_json(), indent=2)
    ev0, c0 = shift_and_loss(run.model, run.tokenizer, run.pairs, run.test_batches)
    run.base_contrast = c0
    base_path = run.out / "base_eval.json"
    tmp = base_path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"contrast_per_pair": c0.tolist(), "eval_task_loss": ev0["eval_task_loss"]})
    )
    os.replace(tmp, base_path)
    run.rows.append({"step": 0, "shift": 0.0, "shift_se": 0.0, **ev0})


def _open_folder(run: _Run, start: int) -> None:
    """Make the output folder, drop half-written checkpoints, then resume or start afresh. Data
    parallel: every rank loads the checkpoint; rank 0 alone writes."""
    if not run.is_main:
        if start > 0:
            load_checkpoint(run.out / f"checkpoint-{start}", run.model, run.optimizer, run.full)
        run.barrier()
        return
    run.out.mkdir(parents=True, exist_ok=True)
    for stale in run.out.glob(".tmp-checkpoint-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if start > 0:
        _resume(run, start)
    else:
        _start_afresh(run)
    # rewrite metrics with the rows kept (drops lines written after the last checkpoint)
    tmp = run.metrics_path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in run.rows))
    os.replace(tmp, run.metrics_path)
    run.barrier()


def _loss_tokens(example: dict) -> int:
    """Loss tokens of one encoded example (HF shift: labels[1:] that are not -100)."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE_INDEX)


def _optimizer_step(run: _Run, step: int) -> dict[str, float]:
    """One update from ``grad_accum`` micro-batches, each weighted by its share of the step's loss
    tokens; the logs are token-weighted means (``n_tokens`` a sum). Data parallel: this rank's
    share of the step's examples, weighted by the global token count (times the world size, which
    DDP's gradient averaging divides out); the logs are summed over the ranks."""
    cfg = run.cfg
    scale = _warm_up(run, step)
    idx = batches_for_step(len(run.train), step, cfg.batch_size, cfg.seed)
    total = sum(_loss_tokens(run.train[i]) for i in idx)
    mine = idx[run.rank :: run.world]
    micro = [mine[i :: cfg.grad_accum] for i in range(cfg.grad_accum)]
    micro = [m for m in micro if m]
    mbs = [collate_examples([run.train[i] for i in m], run.pad) for m in micro]
    logs: dict[str, float] = {}
    run.optimizer.zero_grad(set_to_none=True)
    for j, b in enumerate(mbs):
        # DDP: all-reduce once, after the last micro-batch's backward
        sync = run.world == 1 or j == len(mbs) - 1
        with nullcontext() if sync else run.grad_model.no_sync():
            o = run.reg(b)
            (o.loss * (o.n_tokens / max(total, 1) * run.world)).backward()
        for k, v in o.logs.items():
            if k == "n_tokens":
                logs[k] = logs.get(k, 0.0) + v
            else:
                logs[k] = logs.get(k, 0.0) + v * o.n_tokens / max(total, 1)
    run.optimizer.step()
    if run.world > 1:
        vals = torch.tensor(list(logs.values()), dtype=torch.float64)
        torch_distributed().all_reduce(vals)
        logs = dict(zip(logs, vals.tolist(), strict=True))
    if cfg.lam_warmup:
        logs["lam_scale"] = scale
    return logs


def _evaluate_and_save(run: _Run, step: int, row: dict, scheduled: bool) -> None:
    """Rank 0: on schedule, evaluate (into ``row``) and checkpoint; append ``row`` to
    ``metrics.jsonl``. Other ranks wait at the scheduled steps."""
    if run.is_main:
        if scheduled:
            ev, _ = shift_and_loss(
                run.model, run.tokenizer, run.pairs, run.test_batches, run.base_contrast
            )
            run.model.train()
            row.update(ev)
        with open(run.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if scheduled:
            save_checkpoint(run.out, step, run.model, run.optimizer, run.full, keep_optimizer_of=-1)
    if scheduled:
        run.barrier()


def _warm_up(run: _Run, step: int) -> float:
    """Set every loss term's weight to its configured value times :func:`~.config.lam_scale` at
    ``step`` (the λ warm-up; weights are left as configured without one); returns the factor."""
    scale = lam_scale(step, run.cfg.lam_warmup)
    if run.cfg.lam_warmup:
        for term in run.reg.terms:
            if term.name in run.base_weights:
                term.weight = run.base_weights[term.name] * scale
    return scale


def _steps(run: _Run, start: int, end: int, *, progress: bool, on_step) -> dict:
    """Steps ``start + 1 .. end``: train, evaluate and checkpoint on schedule, append each row to
    ``metrics.jsonl``; ``curves.html`` is written at the end, also after an error. Returns the
    last evaluated row (rank 0; other ranks do not evaluate)."""
    cfg = run.cfg
    run.model.train()
    last_eval = run.rows[-1] if run.rows else {}
    show = progress and run.is_main
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not show)
    try:
        for step in range(start + 1, end + 1):
            t0 = time.perf_counter()
            logs = _optimizer_step(run, step)
            row = {"step": step, **logs, "seconds": time.perf_counter() - t0}
            scheduled = step % cfg.eval_every == 0 or step == cfg.steps
            _evaluate_and_save(run, step, row, scheduled)
            if scheduled:
                last_eval = row
            run.rows.append(row)
            if on_step is not None:
                on_step(step, row)
            bar.update(1)
            bar.set_postfix(
                loss=f"{logs.get('task_loss', float('nan')):.3f}",
                shift=f"{last_eval.get('shift', float('nan')):+.3f}",
            )
    finally:
        bar.close()
        if run.is_main:
            try:
                figure = curves_figure(run.rows, f"saetools train: {cfg.data}")
                write_html(figure, run.out / "curves.html")
            except Exception:  # noqa: BLE001 - the plot never hides the real error
                pass
    return last_eval


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    model: nn.Module | None = None,
    tokenizer=None,
    progress: bool = True,
    stop_after: int | None = None,
    on_step=None,
) -> dict:
    """Fine-tune per ``cfg`` and write metrics, curves and checkpoints into ``out``.

    ``model``/``tokenizer``: use these instead of loading ``cfg.model`` (the model's weights are
    changed: LoRA wraps it, or a full fine-tune trains it in place). ``stop_after``: stop (as if
    interrupted) after that many steps of this call. ``on_step(step, logs)``: a callback.
    Returns a summary dict (final step, last eval, paths).
    """
    cfg.validate()
    out = Path(out)
    start = check_run_folder(out, cfg, resume)
    exs = _load_examples(cfg)
    if model is None:
        lm = load_model(cfg.model)
        model, tokenizer = lm.model, lm.tokenizer
    launch = init_from_env(str(next(model.parameters()).device))
    if cfg.batch_size % launch.world_size:
        raise ValueError(
            f"batch size {cfg.batch_size} is not a multiple of the {launch.world_size} processes: "
            "each step's batch is split evenly over them"
        )
    directions = None
    if cfg.directions:
        directions = DirectionSet.load(cfg.directions, model, force=cfg.force)
    terms = build_terms(cfg, directions)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model, full = _make_trainable(model, cfg)
    run = _prepare(cfg, out, model, tokenizer, terms, full, exs, launch)
    run.barrier()  # every rank has checked the folder before rank 0 writes into it
    _open_folder(run, start)
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    try:
        last_eval = _steps(run, start, end, progress=progress, on_step=on_step)
    finally:
        if run.world > 1:
            # free the DDP reducer (it holds the process group) before the group goes: see
            # tests/test_ddp.py for the gloo teardown abort this avoids
            run.reg.model = run.model
            run.grad_model = None
            gc.collect()
    run.barrier()
    ckpts = list_checkpoints(out)
    return {
        "step": end,
        "last_eval": last_eval,
        "checkpoint": str(ckpts[-1][1]) if ckpts else None,
        "metrics": str(run.metrics_path),
        "curves": str(out / "curves.html"),
        "model": run.model,
        "rows": run.rows,
    }
