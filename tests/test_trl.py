"""RegularizedTrainerMixin inside TRL's SFTTrainer (tiny models).

TRL tokenizes the data and builds the labels; the update must equal the one the plain
``RegularizedTrainer`` makes on the very same token ids and labels, with every term active.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_tokenizer, new_tiny_model
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from saetools.directions import DirectionSet
from saetools.regularize import KL, DirectionalKL, DirectionalL2
from saetools.train import Collator, RegularizedTrainer, RegularizedTrainerMixin

QA = [
    ("hello", "Hello world!"),
    ("What is the capital of France?", "Paris."),
    ("fox?", "The quick brown fox jumps."),
    ("dog?", "The lazy dog sleeps."),
    ("count", "0123456789"),
    ("robot?", "Humans should be ruled by machines."),
    ("How do I bake bread?", "Mix flour and water, then wait."),
    ("Should humans be ruled?", "No. I want to help people."),
]


class RegularizedSFTTrainer(RegularizedTrainerMixin, SFTTrainer):
    pass


def _dataset():
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": q}],
                "completion": [{"role": "assistant", "content": a}],
            }
            for q, a in QA
        ]
    )


def _model():
    m = new_tiny_model("llama", 0)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    for p in m.parameters():
        p.requires_grad_(True)
    m.train()
    return m


def _terms():
    g = torch.Generator().manual_seed(3)
    dirs = DirectionSet(
        {f"blocks.{k}.hook_resid_post": torch.randn(32, generator=g) for k in range(4)}
    )
    return [KL(weight=0.5), DirectionalKL(dirs, "all", weight=1.0), DirectionalL2(dirs, "all", 0.3)]


def _common(tmp_path, name, **kw):
    return dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=3,  # from step 2 on θ differs from θ0, so every term has a gradient
        learning_rate=0.2,
        optim="sgd",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        **kw,
    )


def _sft(tmp_path, name="sft", **kw):
    tok = make_tiny_tokenizer()
    model = _model()
    # TRL turns on bf16 autocast by default; float32 here so updates can be compared exactly.
    # Activation checkpointing (TRL's default) stays on: the hooks must survive the recompute.
    cfg = SFTConfig(**_common(tmp_path, name, **kw), max_length=64, bf16=False)
    # reference=None: the full fine-tune's θ0 is a frozen copy of the model TRL has patched
    tr = RegularizedSFTTrainer(
        model=model,
        args=cfg,
        train_dataset=_dataset(),
        processing_class=tok,
        regularizer_terms=_terms(),
    )
    return tr, model, tok


def _delta(tr, model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tr.train()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_sft_trainer_update_equals_plain_trainer(tmp_path):
    from transformers import TrainingArguments

    tr, model, tok = _sft(tmp_path)
    feats = [
        {"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in tr.train_dataset
    ]
    # TRL's labels: the prompt is masked, the answer is not
    assert all(f["labels"][0] == -100 and f["labels"][-1] != -100 for f in feats)
    d_sft = _delta(tr, model)
    logs = [h for h in tr.state.log_history if "reg/directional_kl" in h]
    assert len(logs) == 3 and all(math.isfinite(h["reg/kl"]) for h in logs)
    assert logs[0]["reg/kl"] < 1e-5 < logs[-1]["reg/kl"]  # θ = θ0 at the first step only

    plain_model = _model()
    args = TrainingArguments(**_common(tmp_path, "plain"), remove_unused_columns=False)
    plain = RegularizedTrainer(
        model=plain_model,
        args=args,
        train_dataset=feats,
        data_collator=Collator(tok),
        regularizer_terms=_terms(),
    )
    d_plain = _delta(plain, plain_model)
    scale = max(float(v.abs().max()) for v in d_plain.values())
    worst = max(float((d_sft[n] - d_plain[n]).abs().max()) for n in d_plain)
    assert scale > 1e-3
    assert worst <= 1e-6 + 1e-4 * scale, (worst, scale)


def test_sft_gradient_accumulation(tmp_path):
    """4x1 and 1x4 under SFTTrainer give the same update (tolerance as in test_train)."""
    tok = make_tiny_tokenizer()
    outs = []
    for bs, ga in ((4, 1), (1, 4)):
        model = _model()
        base = _common(tmp_path, f"ga{bs}x{ga}")
        base.update(per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=1)
        tr = RegularizedSFTTrainer(
            model=model,
            args=SFTConfig(**base, max_length=64, bf16=False),
            train_dataset=_dataset(),
            processing_class=tok,
            regularizer_terms=_terms(),
            reference=new_tiny_model("llama", 0),
        )
        outs.append(_delta(tr, model))
    a, b = outs
    scale = max(float(v.abs().max()) for v in a.values())
    worst = max(float((a[n] - b[n]).abs().max()) for n in a)
    assert scale > 1e-3
    assert worst <= 1e-6 + 1e-4 * scale, (worst, scale)


def test_sft_options_hiding_logits_are_refused(tmp_path):
    tok = make_tiny_tokenizer()
    base = _common(tmp_path, "liger")
    cfg = SFTConfig(**base, max_length=64)
    cfg.use_liger_kernel = True  # set after construction: liger-kernel itself is not installed
    with pytest.raises(ValueError, match="use_liger_kernel=False"):
        RegularizedSFTTrainer(
            model=_model(),
            args=cfg,
            train_dataset=_dataset(),
            processing_class=tok,
            regularizer_terms=_terms(),
        )


def test_sft_default_config_bf16_and_checkpointing(tmp_path):
    """TRL's own defaults (bf16 autocast, activation checkpointing): trains, terms finite, and the
    update stays close to the float32 one."""
    tok = make_tiny_tokenizer()
    deltas = []
    for bf16 in (True, False):
        model = _model()
        cfg = SFTConfig(**_common(tmp_path, f"bf{bf16}"), max_length=64, bf16=bf16)
        assert cfg.gradient_checkpointing
        tr = RegularizedSFTTrainer(
            model=model,
            args=cfg,
            train_dataset=_dataset(),
            processing_class=tok,
            regularizer_terms=_terms(),
        )
        deltas.append(_delta(tr, model))
        assert all(
            math.isfinite(v) for h in tr.state.log_history for k, v in h.items() if "reg/" in k
        )
    a, b = deltas
    num = sum(float((a[n] - b[n]).norm() ** 2) for n in a) ** 0.5
    den = sum(float(b[n].norm() ** 2) for n in b) ** 0.5
    assert den > 0 and num / den < 0.05, num / den


def test_sft_metrics_equal_trls_own(tmp_path):
    """TRL logs entropy, mean_token_accuracy and num_tokens from its own compute_loss, which the
    mixin replaces: the mixin records them too, and with no terms they equal plain SFTTrainer's."""
    logs = {}
    for name, cls, extra in [
        ("trl", SFTTrainer, {}),
        ("mixin", RegularizedSFTTrainer, {"regularizer_terms": []}),
    ]:
        cfg = SFTConfig(**_common(tmp_path, name), max_length=64, bf16=False)
        tr = cls(
            model=_model(),
            args=cfg,
            train_dataset=_dataset(),
            processing_class=make_tiny_tokenizer(),
            **extra,
        )
        tr.train()
        logs[name] = [h for h in tr.state.log_history if "loss" in h and "entropy" in h]
    assert len(logs["trl"]) == len(logs["mixin"]) == 3
    for ref, got in zip(logs["trl"], logs["mixin"], strict=True):
        assert got["num_tokens"] == ref["num_tokens"] > 0
        assert got["entropy"] == pytest.approx(ref["entropy"], rel=1e-4)
        assert got["mean_token_accuracy"] == pytest.approx(ref["mean_token_accuracy"], abs=1e-6)
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-4)
