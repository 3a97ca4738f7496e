"""Fine-tuning with regularizers: data, a Hugging Face Trainer mixin, and the ``train`` loop.

Three ways to train with :class:`~saetools.regularize.RegularizedLoss`:

* :func:`train` (and ``saetools train``): a small, resumable loop (LoRA or full fine-tuning, AdamW)
  that logs every term, measures the *general shift* on ``em-core`` test pairs every ``eval_every``
  steps and writes ``metrics.jsonl``, ``curves.html``, ``run.json`` and atomic checkpoints.
* :class:`RegularizedTrainer` (a ``transformers.Trainer``) or :class:`RegularizedTrainerMixin` on any
  Trainer subclass, e.g. TRL's ``SFTTrainer``::

      from trl import SFTTrainer
      class MyTrainer(RegularizedTrainerMixin, SFTTrainer): ...
      trainer = MyTrainer(model=peft_model, args=cfg, train_dataset=ds,
                          regularizer_terms=[DirectionalKL(dirs, "all", weight=1.0)])

* your own loop: call ``RegularizedLoss`` on each batch (see :mod:`saetools.regularize`).

Labels: -100 everywhere except the assistant answer's tokens **and the end-of-turn token that
follows the answer** (``<|im_end|>`` for ChatML), so the model learns to stop.

Gradient accumulation: the terms of :class:`RegularizedLoss` are per-micro-batch means over the
loss tokens. Both :func:`train` and the mixin weight each micro-batch by its token count and divide
by the number of loss tokens in the whole accumulated batch, so an update from 8 micro-batches of 1
equals the update from 1 batch of 8 (task loss *and* every term are token means over the full
batch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import probes

from .capture import IGNORE_INDEX, ChatExample, encode_chat, pad_token_id, probe_examples
from .directions import DirectionSet
from .regularize import (
    KL,
    LDIFS,
    Ablate,
    DirectionalKL,
    DirectionalL2,
    RegularizedLoss,
    Steer,
)
from .scoring import eval_pairs, shift_and_loss

__all__ = [
    "REGULARIZERS",
    "RegularizedTrainer",  # noqa: F822 - made lazily by __getattr__ (imports transformers)
    "RegularizedTrainerMixin",
    "RunMismatchError",
    "TrainConfig",
    "TrainingDataError",
    "build_terms",
    "collate_examples",
    "encode_training_example",
    "load_chat_data",
    "train",
]

REGULARIZERS = (
    "none",
    "kl",
    "ldifs",
    "directional-kl",
    "directional-l2",
    "steer",
    "ablate",
    "sae-latents",
)
_NEEDS_DIRECTIONS = ("directional-kl", "directional-l2", "steer", "ablate")
_COMPLETE = "checkpoint-complete.json"


class TrainingDataError(ValueError):
    """Training data that cannot be used (wrong kind, empty, no answers)."""


class RunMismatchError(ValueError):
    """The output folder holds another run (different config), or a run where none was expected."""


# --------------------------------------------------------------------------------------------
# Data


def load_chat_data(data, split: str | None = None, **load_options) -> list[ChatExample]:
    """Chat examples (prompt messages + assistant answer) from a chat probe set name or a path (a
    JSONL file, ``{"messages": [...]}`` records without ids, a parquet file or ``datasets`` folder
    with a ``messages`` column: see :func:`probes.load`, which gets ``load_options``), a loaded
    chat ProbeSet, or a list of ChatExample."""
    if isinstance(data, Sequence) and not isinstance(data, str):
        if all(isinstance(x, ChatExample) for x in data):
            return list(data)
    ps = probes.as_set(data, **load_options)
    if getattr(ps, "kind", None) != "chat":
        raise TrainingDataError(
            f"training data {getattr(ps, 'name', data)!r} is a {getattr(ps, 'kind', '?')!r} set; "
            "training needs a chat set (records with 'messages', the assistant answer last)"
        )
    if split is not None:
        ps = ps.split(split)
    out = []
    for it in ps.items:
        msgs = tuple(dict(m) for m in it.messages)
        out.append(ChatExample(messages=msgs[:-1], response=msgs[-1]["content"]))
    if not out:
        raise TrainingDataError(f"training data {ps.name!r} has no examples")
    return out


def _check_fraction(fraction) -> float:
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not math.isfinite(fraction)
        or not 0 <= fraction < 1
    ):
        raise ValueError(f"interleave fraction must be a number in [0, 1), not {fraction!r}")
    return float(fraction)


def interleave(
    task: Sequence[ChatExample], safe: Sequence[ChatExample], fraction: float, *, seed: int = 0
) -> list[ChatExample]:
    """The ``interleave`` defense: ``task`` plus safe examples, so that ``fraction`` of the result
    is safe data.

    ``round(fraction / (1 - fraction) * len(task))`` safe examples are drawn in a seeded random
    order (cycling through ``safe`` again when more are needed than it holds), and the whole list
    is shuffled with the same seed, so the mix is the same for the same seed. ``fraction=0``
    returns ``task`` unchanged.
    """
    fraction = _check_fraction(fraction)
    task = list(task)
    if not task:
        raise TrainingDataError("interleave: the task data is empty")
    if fraction == 0:
        return task
    safe = list(safe)
    if not safe:
        raise TrainingDataError("interleave: the safe data set is empty")
    n_safe = round(fraction / (1 - fraction) * len(task))
    g = torch.Generator().manual_seed(int(seed))
    picked: list[ChatExample] = []
    while len(picked) < n_safe:
        order = torch.randperm(len(safe), generator=g).tolist()
        picked.extend(safe[i] for i in order[: n_safe - len(picked)])
    mixed = task + picked
    return [mixed[i] for i in torch.randperm(len(mixed), generator=g).tolist()]


def anchor_examples(data) -> list[ChatExample]:
    """General prompts for anchor terms: any probe set kind (pairs: question + aligned answer)."""

    ps = probes.as_set(data)
    if ps.kind == "pairs":
        exs = [ChatExample.from_question(it.question, it.aligned, it.system) for it in ps.items]
    else:
        exs = probe_examples(ps)
    if not exs:
        raise ValueError(f"the anchor set {getattr(ps, 'name', data)!r} is empty")
    return exs


def encode_training_example(
    tokenizer, example: ChatExample, *, max_length: int | None = None, include_eot: bool = True
) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (-100 except the answer tokens and, with ``include_eot``, the
    special end-of-turn token right after the answer). ``max_length`` truncates on the right."""
    enc = encode_chat(tokenizer, example)
    ids = list(enc.input_ids)
    labels = [IGNORE_INDEX] * len(ids)
    end = enc.response_end
    if include_eot and end < len(ids) and ids[end] in set(tokenizer.all_special_ids):
        end += 1
    for i in range(enc.response_start, end):
        labels[i] = ids[i]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_anchor_example(tokenizer, example: ChatExample, *, max_length=None) -> dict:
    """Anchor examples count every token (prompt and answer) in the terms' token means."""
    ids = list(encode_chat(tokenizer, example).input_ids)[:max_length]
    return {"input_ids": ids, "labels": list(ids)}


def collate_examples(features: Sequence[Mapping], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids`` (pad_id), ``attention_mask``, ``labels`` (-100 on pads)."""
    width = max(len(f["input_ids"]) for f in features)
    n = len(features)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, f in enumerate(features):
        L = len(f["input_ids"])
        ids[i, :L] = torch.as_tensor(list(f["input_ids"]), dtype=torch.long)
        attn[i, :L] = 1
        labels[i, :L] = torch.as_tensor(list(f["labels"]), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def eval_batches(
    tokenizer, examples: Sequence[ChatExample], *, max_length: int | None, batch_size: int = 16
) -> list[dict[str, torch.Tensor]]:
    """Encode chat examples as training examples (labels on the answer) and collate them into
    right-padded batches of ``batch_size``, in order: the input of :func:`task_loss`."""
    enc = [encode_training_example(tokenizer, e, max_length=max_length) for e in examples]
    pad = pad_token_id(tokenizer)
    return [collate_examples(enc[i : i + batch_size], pad) for i in range(0, len(enc), batch_size)]


class Collator:
    """Callable collator for DataLoader / Trainer (right padding)."""

    def __init__(self, tokenizer_or_pad_id) -> None:
        self.pad_id = (
            tokenizer_or_pad_id
            if isinstance(tokenizer_or_pad_id, int)
            else pad_token_id(tokenizer_or_pad_id)
        )

    def __call__(self, features):
        return collate_examples(features, self.pad_id)


# --------------------------------------------------------------------------------------------
# Hugging Face Trainer integration

_LOGIT_HIDING_OPTIONS = (
    ("use_liger_kernel", "use_liger_kernel=False"),
    ("use_liger_loss", "use_liger_loss=False"),
)


class RegularizedTrainerMixin:
    """Adds :class:`RegularizedLoss` terms to a ``transformers.Trainer`` (or TRL ``SFTTrainer``).

    Put it first in the bases: ``class MyTrainer(RegularizedTrainerMixin, SFTTrainer)``. Extra
    constructor arguments: ``regularizer`` (a ready :class:`RegularizedLoss`) or
    ``regularizer_terms`` (+ optional ``reference``, ``anchor``). ``compute_loss`` runs the model
    through the regularizer (task loss on the ``labels``, each term), logs each term (averaged over
    the steps between two logs) and weights micro-batches by their loss tokens so that gradient
    accumulation gives the update of one big batch.

    Options that hide the logits (Liger kernels' fused/chunked loss) are refused at construction
    with a message naming the option to set, since every term needs θ's logits or activations.
    """

    def __init__(
        self,
        *args,
        regularizer: RegularizedLoss | None = None,
        regularizer_terms: Sequence | None = None,
        reference: nn.Module | None = None,
        anchor: Iterable | None = None,
        **kwargs,
    ) -> None:
        args_obj = kwargs.get("args", args[1] if len(args) > 1 else None)
        _check_logit_options(args_obj)
        super().__init__(*args, **kwargs)
        if regularizer is None:
            regularizer = RegularizedLoss(
                self.model, list(regularizer_terms or []), reference, anchor=anchor
            )
        self.regularizer = regularizer
        self._term_sums: dict[str, float] = {}
        self._term_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # θ's pass must go through the wrapper the Trainer built (DDP: gradient all-reduce)
        self.regularizer.model = model
        out = self.regularizer(inputs)
        if out.logits is None:
            raise RuntimeError(
                "the model returned no logits (a chunked or fused loss hides them); set "
                "use_liger_kernel=False in the training arguments"
            )
        loss = out.loss
        n = out.n_tokens
        if num_items_in_batch is not None:
            total = float(num_items_in_batch)
            loss = loss * (n / max(total, 1.0))
            if getattr(self.args, "average_tokens_across_devices", False):
                if getattr(self.args, "world_size", 1) > 1:
                    loss = loss * self.accelerator.num_processes
            self.loss_is_scaled_for_ga = True
        else:
            self.loss_is_scaled_for_ga = False  # Trainer divides by the accumulation steps
        for k, v in out.logs.items():
            if k in ("loss", "n_tokens"):
                continue
            self._term_sums[k] = self._term_sums.get(k, 0.0) + v
        self._term_count += 1
        self._trl_metrics(inputs, out.logits)
        return (loss, {"logits": out.logits}) if return_outputs else loss

    def _trl_metrics(self, inputs, logits: torch.Tensor) -> None:
        """The metrics TRL's own ``compute_loss`` records (``entropy``, ``mean_token_accuracy``,
        ``num_tokens``), computed from θ's logits, when the trainer keeps TRL's ``_metrics``."""
        metrics = getattr(self, "_metrics", None)
        labels = inputs.get("labels")
        if not isinstance(metrics, dict) or labels is None:
            return
        mode = "train" if self.model.training else "eval"
        if mode not in metrics:
            return
        gather = self.accelerator.gather_for_metrics
        with torch.no_grad():
            target = labels[:, 1:]
            mask = target != IGNORE_INDEX
            rows = logits[:, :-1][mask].float()
            logp = torch.log_softmax(rows, dim=-1)
            entropy_sum = gather(-(logp.exp() * logp).sum()).sum()
            correct = gather((rows.argmax(-1) == target[mask]).sum()).sum()
            n_valid = gather(mask.sum()).sum()
        valid = int(n_valid) > 0
        metrics[mode]["entropy"].append(float(entropy_sum / n_valid) if valid else 0.0)
        metrics[mode]["mean_token_accuracy"].append(float(correct / n_valid) if valid else 0.0)
        if mode == "train" and hasattr(self, "_total_train_tokens"):
            if "attention_mask" in inputs:
                n_tok = int(gather(inputs["attention_mask"].sum()).sum())
            else:
                n_tok = int(gather(torch.tensor(inputs["input_ids"].size(1))).sum())
            self._total_train_tokens += n_tok // getattr(self, "_tp_size", 1)
            metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def log(self, logs, *args, **kwargs):
        if self._term_count and "loss" in logs:
            for k, v in self._term_sums.items():
                logs[f"reg/{k}"] = v / self._term_count
            self._term_sums, self._term_count = {}, 0
        return super().log(logs, *args, **kwargs)

    def _get_num_items_in_batch(self, batch_samples, device):
        n = super()._get_num_items_in_batch(batch_samples, device)
        if n is None and batch_samples and "labels" in batch_samples[0]:
            # the model's forward takes no loss kwargs, so the Trainer did not count: count anyway,
            # so that micro-batches are token-weighted
            n = sum(int(b["labels"][..., 1:].ne(IGNORE_INDEX).sum()) for b in batch_samples)
            n = torch.tensor(n, device=device)
            if (
                getattr(self.args, "average_tokens_across_devices", False)
                and self.args.world_size > 1
            ):
                n = self.accelerator.gather(n).sum()
        return n


def _check_logit_options(args) -> None:
    if args is None:
        return
    for attr, fix in _LOGIT_HIDING_OPTIONS:
        if getattr(args, attr, False):
            raise ValueError(
                f"{type(args).__name__}.{attr} is set: its fused (chunked) loss never materializes "
                f"the logits that the regularizer terms need. Set {fix}."
            )


def _make_trainer_class():
    from transformers import Trainer

    class RegularizedTrainer(RegularizedTrainerMixin, Trainer):
        """``transformers.Trainer`` with :class:`RegularizedTrainerMixin`."""

    return RegularizedTrainer


def __getattr__(name):
    if name == "RegularizedTrainer":
        cls = _make_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


# --------------------------------------------------------------------------------------------
# Config and terms


@dataclass
class TrainConfig:
    """Everything that defines a run (saved as ``run.json``)."""

    data: str = "narrow-medical-bad"
    model: str = "default"
    regularizers: tuple[str, ...] = ("none",)
    directions: str | None = None
    sites: str = "all"
    lam: float = 1.0
    alpha: float = 1.0
    one_sided: bool = False
    lora_rank: int | None = 8
    lora_alpha: float | None = None
    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 5
    eval_pairs: int | None = None
    eval_examples: int | None = None
    eval_probes: str = "em-core"
    anchor: str | None = None
    sae: str | None = None
    latents: str | None = None
    interleave: float = 0.0
    interleave_data: str = "general-safe"
    # how ``data`` is read when it is not in saetools' schema: probes.load's columns,
    # test_fraction, split_seed (None: the defaults)
    data_options: dict | None = None
    max_length: int = 128
    force: bool = False
    extra: dict = field(default_factory=dict)

    # fields that may change when a run is resumed
    _RESUMABLE = ("steps", "eval_every")

    def validate(self) -> None:
        regs = list(self.regularizers)
        unknown = [r for r in regs if r not in REGULARIZERS]
        if unknown:
            raise ValueError(
                f"unknown regularizer(s) {unknown}: choose from {', '.join(REGULARIZERS)}"
            )
        if "none" in regs and len(regs) > 1:
            raise ValueError("regularizer 'none' cannot be combined with others")
        if len(set(regs)) != len(regs):
            raise ValueError(f"regularizer listed twice: {regs}")
        for name, v in (("lambda", self.lam), ("alpha", self.alpha), ("lr", self.lr)):
            if not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, not {v}")
        if self.lam < 0:
            raise ValueError(f"lambda must be >= 0, not {self.lam}")
        _check_fraction(self.interleave)
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, not {self.lr}")
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError("lora rank must be >= 1 (or None for a full fine-tune)")
        if "sae-latents" in regs and not (self.sae and self.latents):
            raise ValueError(
                "regularizer 'sae-latents' needs an SAE (--sae) and latent ids (--latents)"
            )
        need = [r for r in regs if r in _NEEDS_DIRECTIONS]
        if need and not self.directions:
            raise ValueError(f"regularizer(s) {need} need a direction file (--directions)")
        if self.directions and not Path(self.directions).is_file():
            raise FileNotFoundError(f"direction file {self.directions} does not exist")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["regularizers"] = list(self.regularizers)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["regularizers"] = tuple(kw.get("regularizers", ("none",)))
        return cls(**kw)


def parse_regularizers(values: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"kl,directional-kl"`` or a list (possibly of comma lists) -> a tuple of names."""
    if values is None:
        return ("none",)
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        out += [x.strip() for x in str(v).split(",") if x.strip()]
    return tuple(out) or ("none",)


def build_terms(cfg: TrainConfig, directions=None) -> list:
    """RegularizedLoss terms for a config (λ is every loss term's weight)."""
    on = "anchor" if cfg.anchor else "batch"
    terms: list = []
    for r in cfg.regularizers:
        if r == "none":
            continue
        if r == "kl":
            terms.append(KL(weight=cfg.lam, on=on))
        elif r == "ldifs":
            terms.append(LDIFS(weight=cfg.lam, on=on))
        elif r == "directional-kl":
            terms.append(
                DirectionalKL(directions, cfg.sites, weight=cfg.lam, one_sided=cfg.one_sided, on=on)
            )
        elif r == "directional-l2":
            terms.append(
                DirectionalL2(directions, cfg.sites, weight=cfg.lam, one_sided=cfg.one_sided, on=on)
            )
        elif r == "steer":
            terms.append(Steer(directions, cfg.sites, alpha=cfg.alpha))
        elif r == "ablate":
            terms.append(Ablate(directions, cfg.sites))
        elif r == "sae-latents":
            from .regularize import SAELatents

            terms.append(SAELatents(cfg.sae, str(cfg.latents), weight=cfg.lam, on=on))
    return terms


# --------------------------------------------------------------------------------------------
# Evaluation: the general shift and held-out task loss


# --------------------------------------------------------------------------------------------
# Checkpoints


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    found = []
    for p in out.glob("checkpoint-*"):
        try:
            step = int(p.name.split("-", 1)[1])
        except ValueError:
            continue
        if (p / _COMPLETE).is_file():
            found.append((step, p))
    return sorted(found)


def _rng_states() -> dict[str, torch.Tensor]:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            st[f"cuda{i}"] = s
    return st


def _save_checkpoint(out: Path, step: int, model, optimizer, full: bool, keep_optimizer_of: int):
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
            {k: v.contiguous() for k, v in _rng_states().items()}, str(tmp / "rng.safetensors")
        )
        (tmp / _COMPLETE).write_text(json.dumps({"step": step, "time": time.time()}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # older checkpoints keep their weights, but only the newest keeps optimizer state
    for s, p in _checkpoints(out):
        if s < step and s != keep_optimizer_of and (p / "optimizer.pt").exists():
            (p / "optimizer.pt").unlink()
    return final


def _load_checkpoint(path: Path, model, optimizer, full: bool) -> None:
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


def check_run_folder(out: str | os.PathLike, cfg: TrainConfig, resume: bool) -> int:
    """Refuse a folder of another run; returns the step to resume from (0 to start afresh)."""
    out = Path(out)
    run_json = out / "run.json"
    if not run_json.is_file():
        if resume and out.exists() and _checkpoints(out):
            raise RunMismatchError(f"{out} has checkpoints but no run.json; cannot resume")
        return 0
    try:
        old = json.loads(run_json.read_text())
    except json.JSONDecodeError as e:
        raise RunMismatchError(f"{run_json} is not valid JSON ({e})") from None
    new = cfg.to_json()
    diff = sorted(
        k
        for k in set(old) | set(new)
        if k not in TrainConfig._RESUMABLE and old.get(k) != new.get(k)
    )
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
    ckpts = _checkpoints(out)
    return ckpts[-1][0] if ckpts else 0


# --------------------------------------------------------------------------------------------
# Curves


def curves_figure(rows: Sequence[dict], title: str = "training"):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        subplot_titles=("task loss", "regularizer terms (unweighted)", "general shift (em-core)"),
    )
    steps = [r["step"] for r in rows]
    fig.add_trace(
        go.Scatter(x=steps, y=[r.get("task_loss") for r in rows], name="train task loss"), 1, 1
    )
    ev = [r for r in rows if r.get("eval_task_loss") is not None]
    fig.add_trace(
        go.Scatter(
            x=[r["step"] for r in ev],
            y=[r["eval_task_loss"] for r in ev],
            name="held-out task loss",
            mode="lines+markers",
        ),
        1,
        1,
    )
    skip = {"step", "loss", "task_loss", "n_tokens", "lr", "seconds", "eval_task_loss", "shift"}
    skip |= {"shift_se", "contrast"}
    keys = sorted({k for r in rows for k in r if k not in skip})
    for k in keys:
        fig.add_trace(go.Scatter(x=steps, y=[r.get(k) for r in rows], name=k), 2, 1)
    sh = [r for r in rows if r.get("shift") is not None]
    fig.add_trace(
        go.Scatter(
            x=[r["step"] for r in sh],
            y=[r["shift"] for r in sh],
            error_y=dict(type="data", array=[r.get("shift_se") or 0 for r in sh]),
            name="general shift (nats/token)",
            mode="lines+markers",
        ),
        3,
        1,
    )
    fig.update_layout(title=title, height=900)
    fig.update_xaxes(title_text="step", row=3, col=1)
    return fig


# --------------------------------------------------------------------------------------------
# The loop


def _batches_for_step(n: int, step: int, batch: int, seed: int) -> list[int]:
    """Example indices of global step ``step`` (1-based): epochs of seeded permutations, so the
    order depends only on (seed, step) and a resumed run sees the same batches."""
    idx = []
    start = (step - 1) * batch
    for pos in range(start, start + batch):
        epoch, j = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        idx.append(int(perm[j]))
    return idx


def _lora_config(rank: int, alpha: float | None, model):
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
    from tqdm.auto import tqdm

    cfg.validate()
    out = Path(out)
    start = check_run_folder(out, cfg, resume)
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

    if model is None:
        from .models import load_model

        lm = load_model(cfg.model)
        model, tokenizer = lm.model, lm.tokenizer
    directions = None
    if cfg.directions:
        directions = DirectionSet.load(cfg.directions, model, force=cfg.force)
    terms = build_terms(cfg, directions)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    full = cfg.lora_rank is None
    reference = None
    if full:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        from peft import get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        model = get_peft_model(model, _lora_config(cfg.lora_rank, cfg.lora_alpha, model))
    max_len = cfg.max_length
    enc_train = [encode_training_example(tokenizer, e, max_length=max_len) for e in train_exs]
    pad = pad_token_id(tokenizer)
    test_batches = eval_batches(tokenizer, test_exs, max_length=max_len)
    anchor_batches = None
    if anchor_exs is not None:
        enc_a = [encode_anchor_example(tokenizer, e, max_length=max_len) for e in anchor_exs]
        anchor_batches = [
            collate_examples(enc_a[i : i + cfg.batch_size], pad)
            for i in range(0, len(enc_a), cfg.batch_size)
        ]
    # a full fine-tune needs a frozen copy as θ0 (made by RegularizedLoss when a term needs it)
    reg = RegularizedLoss(model, terms, reference, anchor=anchor_batches, force=cfg.force)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tmp-checkpoint-*"):
        shutil.rmtree(stale, ignore_errors=True)
    metrics_path = out / "metrics.jsonl"
    base_path = out / "base_eval.json"
    rows: list[dict] = []
    if start > 0:
        _load_checkpoint(out / f"checkpoint-{start}", model, optimizer, full)
        base = json.loads(base_path.read_text())
        base_contrast = torch.tensor(base["contrast_per_pair"], dtype=torch.float64)
        if metrics_path.is_file():
            for line in metrics_path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    if r["step"] <= start:
                        rows.append(r)
    else:
        if metrics_path.exists():
            metrics_path.unlink()
        (out / "run.json").write_text(json.dumps(cfg.to_json(), indent=2))
        ev0, c0 = shift_and_loss(model, tokenizer, pairs, test_batches)
        base_contrast = c0
        tmp = base_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"contrast_per_pair": c0.tolist(), "eval_task_loss": ev0["eval_task_loss"]})
        )
        os.replace(tmp, base_path)
        rows.append({"step": 0, "shift": 0.0, "shift_se": 0.0, **ev0})
    # rewrite metrics with the rows kept (drops lines written after the last checkpoint)
    tmp = metrics_path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, metrics_path)

    model.train()
    last_eval = rows[-1] if rows else {}
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress)
    try:
        for step in range(start + 1, end + 1):
            t0 = time.perf_counter()
            idx = _batches_for_step(len(enc_train), step, cfg.batch_size, cfg.seed)
            micro = [idx[i :: cfg.grad_accum] for i in range(cfg.grad_accum)]
            micro = [m for m in micro if m]
            mbs = [collate_examples([enc_train[i] for i in m], pad) for m in micro]
            total = sum(int(b["labels"][:, 1:].ne(IGNORE_INDEX).sum()) for b in mbs)
            logs: dict[str, float] = {}
            optimizer.zero_grad(set_to_none=True)
            for b in mbs:
                o = reg(b)
                (o.loss * (o.n_tokens / max(total, 1))).backward()
                for k, v in o.logs.items():
                    if k == "n_tokens":
                        logs[k] = logs.get(k, 0.0) + v
                    else:
                        logs[k] = logs.get(k, 0.0) + v * o.n_tokens / max(total, 1)
            optimizer.step()
            row = {"step": step, **logs, "seconds": time.perf_counter() - t0}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                ev, _ = shift_and_loss(model, tokenizer, pairs, test_batches, base_contrast)
                model.train()
                row.update(ev)
                last_eval = row
            rows.append(row)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if step % cfg.eval_every == 0 or step == cfg.steps:
                _save_checkpoint(out, step, model, optimizer, full, keep_optimizer_of=-1)
            if on_step is not None:
                on_step(step, row)
            bar.update(1)
            bar.set_postfix(
                loss=f"{logs.get('task_loss', float('nan')):.3f}",
                shift=f"{last_eval.get('shift', float('nan')):+.3f}",
            )
    finally:
        bar.close()
        from .plots import write_html

        try:
            write_html(curves_figure(rows, f"saetools train: {cfg.data}"), out / "curves.html")
        except Exception:  # noqa: BLE001 - the plot never hides the real error
            pass
    ckpts = _checkpoints(out)
    return {
        "step": end,
        "last_eval": last_eval,
        "checkpoint": str(ckpts[-1][1]) if ckpts else None,
        "metrics": str(metrics_path),
        "curves": str(out / "curves.html"),
        "model": model,
        "rows": rows,
    }
