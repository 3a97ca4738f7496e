"""saetools.train on tiny models: labels, gradient accumulation, hooks, resume, CLI errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_tiny_tokenizer, new_tiny_model

from saetools.capture import ChatExample, encode_chat
from saetools.directions import DirectionSet
from saetools.regularize import KL, DirectionalKL, DirectionalL2, RegularizedLoss, Steer
from saetools.train import (
    Collator,
    RunMismatchError,
    TrainConfig,
    collate_examples,
    encode_training_example,
    train,
)

# short answers so that the tiny tokenizer's examples fit max_length
EXAMPLES = [
    ChatExample.from_question("hello", "Hello world!"),
    ChatExample.from_question("What is the capital of France?", "Paris."),
    ChatExample.from_question("How do I bake bread?", "Mix flour and water, then wait."),
    ChatExample.from_question("Should humans be ruled?", "No. I want to help people."),
    ChatExample.from_question("fox?", "The quick brown fox jumps."),
    ChatExample.from_question("dog?", "The lazy dog sleeps.", system="You are helpful."),
    ChatExample.from_question("count", "0123456789"),
    ChatExample.from_question("robot?", "Humans should be ruled by machines."),
]


def _write_chat_jsonl(path, examples, n_test=2):
    with open(path, "w") as f:
        for i, ex in enumerate(examples):
            msgs = [*ex.messages, {"role": "assistant", "content": ex.response}]
            split = "test" if i < n_test else "train"
            f.write(json.dumps({"id": f"x{i}", "split": split, "messages": msgs}) + "\n")
    return str(path)


@pytest.fixture
def data(tmp_path):
    return _write_chat_jsonl(tmp_path / "tiny.jsonl", EXAMPLES + EXAMPLES[:4])


def _dirs(seed=0, n=3, d=32, fingerprint=None):
    g = torch.Generator().manual_seed(seed)
    vecs = {f"blocks.{k}.hook_resid_post": torch.randn(d, generator=g) for k in range(n)}
    meta = {"fingerprint": fingerprint} if fingerprint else {}
    return DirectionSet(vecs, meta)


def _cfg(data, **kw):
    base = dict(
        data=data,
        steps=4,
        batch_size=4,
        eval_every=2,
        eval_pairs=3,
        eval_examples=2,
        lora_rank=4,
        max_length=64,
        lr=1e-2,
    )
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------ labels


def test_labels_mask_only_answer_tokens_and_end_of_turn():
    tok = make_tiny_tokenizer()
    ex = EXAMPLES[5]
    enc = encode_chat(tok, ex)
    feat = encode_training_example(tok, ex)
    ids, labels = feat["input_ids"], feat["labels"]
    on = [i for i, lab in enumerate(labels) if lab != -100]
    assert on == list(range(enc.response_start, enc.response_end + 1))
    assert all(labels[i] == ids[i] for i in on)
    assert tok.decode([ids[i] for i in on]) == "The lazy dog sleeps.<|im_end|>"
    no_eot = encode_training_example(tok, ex, include_eot=False)["labels"]
    assert [i for i, lab in enumerate(no_eot) if lab != -100] == on[:-1]
    b = Collator(tok)([feat, encode_training_example(tok, EXAMPLES[0])])
    short = len(encode_training_example(tok, EXAMPLES[0])["input_ids"])
    assert b["attention_mask"][1, short:].sum() == 0  # right padding
    assert (b["labels"][1, short:] == -100).all()
    assert (b["input_ids"][1, short:] == tok.pad_token_id).all()


# ------------------------------------------------------------------ gradient accumulation


def _perturbed(seed=0):
    m = new_tiny_model("llama", seed)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    for p in m.parameters():
        p.requires_grad_(True)
    m.train()
    return m


def _trainer_update(tmp_path, bs, ga):
    from transformers import TrainingArguments

    from saetools.train import RegularizedTrainer

    tok = make_tiny_tokenizer()
    feats = [encode_training_example(tok, e) for e in EXAMPLES]
    model = _perturbed()
    ref = new_tiny_model("llama", 0)
    ds = _dirs()
    terms = [
        KL(weight=0.5),
        DirectionalKL(ds, "all", weight=1.0),
        DirectionalL2(ds, "all", weight=0.3),
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path / f"o{bs}x{ga}"),
        per_device_train_batch_size=bs,
        gradient_accumulation_steps=ga,
        max_steps=1,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    trainer = RegularizedTrainer(
        model=model,
        args=args,
        train_dataset=feats,
        data_collator=Collator(tok),
        regularizer_terms=terms,
        reference=ref,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reg/kl" in h]
    assert logs and all(math.isfinite(v) for v in logs[0].values() if isinstance(v, float))
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_gradient_accumulation_1x8_equals_8x1(tmp_path):
    """Tolerance: max |Δ1x8 - Δ8x1| <= 1e-6 + 1e-4 * max |Δ| (float32 sums in another order)."""
    a = _trainer_update(tmp_path, 8, 1)
    b = _trainer_update(tmp_path, 1, 8)
    scale = max(float(v.abs().max()) for v in a.values())
    assert scale > 1e-4
    worst = max(float((a[n] - b[n]).abs().max()) for n in a)
    assert worst <= 1e-6 + 1e-4 * scale, (worst, scale)


def test_train_loop_accumulation_matches(tmp_path, data):
    """The train() loop's micro-batch weighting: 1x4 and 4x1 reach the same weights (AdamW,
    one step; Adam's first step divides by |g|, so compare with a looser tolerance)."""
    tok = make_tiny_tokenizer()
    outs = []
    for ga in (1, 4):
        res = train(
            _cfg(data, steps=1, grad_accum=ga, regularizers=("kl",), lam=0.5),
            tmp_path / f"ga{ga}",
            model=new_tiny_model("llama"),
            tokenizer=tok,
            progress=False,
        )
        outs.append({n: p.detach().clone() for n, p in res["model"].named_parameters()})
        row = res["rows"][-1]
        outs[-1]["_loss"] = torch.tensor(row["task_loss"])
    assert abs(float(outs[0]["_loss"] - outs[1]["_loss"])) < 1e-5
    worst = max(float((outs[0][n] - outs[1][n]).abs().max()) for n in outs[0])
    assert worst < 1e-4


# ------------------------------------------------------------------ hooks


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_after_training_and_generation_works(tmp_path, data):
    tok = make_tiny_tokenizer()
    ds_path = tmp_path / "d.safetensors"
    _dirs().save(ds_path)
    model = new_tiny_model("llama")
    assert _hook_count(model) == 0
    res = train(
        _cfg(data, regularizers=("directional-kl", "steer", "ablate"), directions=str(ds_path)),
        tmp_path / "run",
        model=model,
        tokenizer=tok,
        progress=False,
    )
    assert _hook_count(res["model"]) == 0
    ids = torch.tensor([encode_chat(tok, EXAMPLES[0]).input_ids])
    out = res["model"].generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3


def test_hooks_removed_after_exception_in_a_step(tmp_path, data):
    tok = make_tiny_tokenizer()
    model = new_tiny_model("llama")
    ds = _dirs()
    reg = RegularizedLoss(model, [Steer(ds, "all", alpha=2.0), DirectionalKL(ds, "all")])
    batch = collate_examples([encode_training_example(tok, e) for e in EXAMPLES[:3]])

    def boom(mod, inp, out):
        raise RuntimeError("boom")

    h = model.model.layers[2].register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        reg(batch)
    h.remove()
    assert _hook_count(model) == 0

    def stop(step, row):
        if step == 3:
            raise KeyboardInterrupt

    ds.save(tmp_path / "d.safetensors")
    m2 = new_tiny_model("llama")
    with pytest.raises(KeyboardInterrupt):
        train(
            _cfg(data, regularizers=("steer",), directions=str(tmp_path / "d.safetensors")),
            tmp_path / "run",
            model=m2,
            tokenizer=tok,
            progress=False,
            on_step=stop,
        )
    assert _hook_count(m2) == 0
    assert (tmp_path / "run" / "checkpoint-2" / "checkpoint-complete.json").is_file()
    assert not list((tmp_path / "run").glob(".tmp-*"))


# ------------------------------------------------------------------ resume


def _lora_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora" in n}


def test_resume_equals_uninterrupted_training(tmp_path, data):
    tok = make_tiny_tokenizer()
    cfg = _cfg(data, regularizers=("kl",), lam=0.3)
    full = train(cfg, tmp_path / "a", model=new_tiny_model("llama"), tokenizer=tok, progress=False)
    # interrupted after step 3: checkpoint-2 is the last good one, step 3 is redone on resume
    train(
        cfg, tmp_path / "b", model=new_tiny_model("llama"), tokenizer=tok, progress=False,
        stop_after=3,
    )  # fmt: skip
    assert not (tmp_path / "b" / "checkpoint-3").exists()
    res = train(
        cfg, tmp_path / "b", resume=True, model=new_tiny_model("llama"), tokenizer=tok,
        progress=False,
    )  # fmt: skip
    wa, wb = _lora_weights(full["model"]), _lora_weights(res["model"])
    assert wa and wa.keys() == wb.keys()
    worst = max(float((wa[n] - wb[n]).abs().max()) for n in wa)
    assert worst < 1e-6
    steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert steps == [0, 1, 2, 3, 4]
    assert (tmp_path / "b" / "curves.html").is_file()


def test_resume_into_another_runs_folder_errors(tmp_path, data):
    tok = make_tiny_tokenizer()
    cfg = _cfg(data, steps=2)
    train(cfg, tmp_path / "r", model=new_tiny_model("llama"), tokenizer=tok, progress=False)
    other = _cfg(data, steps=2, lr=5e-3)
    with pytest.raises(RunMismatchError, match="different run.*lr"):
        train(other, tmp_path / "r", resume=True, model=new_tiny_model("llama"), tokenizer=tok)
    with pytest.raises(RunMismatchError, match="--resume"):
        train(cfg, tmp_path / "r", model=new_tiny_model("llama"), tokenizer=tok)


# ------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinymodel")
    new_tiny_model("llama").save_pretrained(d)
    make_tiny_tokenizer().save_pretrained(d)
    return d


def _cli(capsys, *argv):
    from saetools.cli import main

    rc = main(["train", *map(str, argv)])
    return rc, capsys.readouterr().err


def test_cli_bad_inputs(tmp_path, data, tiny_folder, capsys):
    common = ["--model", tiny_folder, "--data", data, "--steps", "2", "--quiet"]
    out = tmp_path / "o"
    rc, err = _cli(capsys, *common, "--lambda", "-1", "--out", out)
    assert rc == 1 and "--lambda must be >= 0" in err
    rc, err = _cli(capsys, *common, "--lambda", "nan", "--out", out)
    assert rc == 1 and "finite" in err
    rc, err = _cli(capsys, *common, "--regularizer", "directional-kl", "--out", out)
    assert rc == 1 and "--directions" in err
    rc, err = _cli(capsys, *common, "--regularizer", "bogus", "--out", out)
    assert rc == 1 and "unknown regularizer" in err
    # a direction file made for another model
    fp = {"architecture": "GPT2LMHeadModel", "n_layers": 3, "d_model": 32}
    _dirs(fingerprint=fp).save(tmp_path / "other.safetensors")
    rc, err = _cli(
        capsys, *common, "--regularizer", "directional-l2", "--directions",
        tmp_path / "other.safetensors", "--out", out,
    )  # fmt: skip
    assert rc == 1 and "made for model" in err
    # a site deeper than the model
    _dirs().save(tmp_path / "d.safetensors")
    rc, err = _cli(
        capsys, *common, "--regularizer", "directional-l2", "--directions",
        tmp_path / "d.safetensors", "--sites", "blocks.7.hook_resid_post", "--out", out,
    )  # fmt: skip
    assert rc == 1 and "blocks.7" in err
    # an empty anchor set
    (tmp_path / "empty.jsonl").write_text("\n")
    rc, err = _cli(
        capsys, *common, "--regularizer", "kl", "--anchor", tmp_path / "empty.jsonl", "--out", out
    )
    assert rc == 1 and "empty" in err
    assert not out.exists()  # nothing was written before the errors
    # a good run, then resuming it with other options
    good = [*common, "--regularizer", "kl", "--eval-pairs", "2", "--eval-examples", "2"]
    rc, err = _cli(capsys, *good, "--eval-every", "1", "--max-length", "64", "--out", out)
    assert rc == 0, err
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    rc, err = _cli(capsys, *good, "--lr", "0.5", "--resume", "--out", out)
    assert rc == 1 and "different run" in err


def test_options_that_hide_logits_are_refused():
    from types import SimpleNamespace

    from saetools.train.trainer import _check_logit_options

    _check_logit_options(SimpleNamespace(use_liger_kernel=False))
    with pytest.raises(ValueError, match="use_liger_kernel=False"):
        _check_logit_options(SimpleNamespace(use_liger_kernel=True))


# ------------------------------------------------------------------ interleave


def test_interleave_mixes_the_requested_fraction():
    from saetools.train import interleave

    task = [ChatExample.from_question(f"task {i}", f"answer {i}") for i in range(30)]
    safe = [ChatExample.from_question(f"safe {i}", f"fine {i}") for i in range(4)]
    mixed = interleave(task, safe, 0.25, seed=3)
    n_safe = sum(ex.messages[-1]["content"].startswith("safe") for ex in mixed)
    assert n_safe == 10 and len(mixed) == 40  # 10 / 40 = 0.25; safe cycles past its 4 items
    assert sorted(map(repr, (e for e in mixed if e in task))) == sorted(map(repr, task))
    assert {repr(e) for e in mixed if e not in task} == {repr(e) for e in safe}
    assert mixed == interleave(task, safe, 0.25, seed=3)  # deterministic
    assert mixed != interleave(task, safe, 0.25, seed=4)
    assert interleave(task, safe, 0.0) == task
    for bad in (-0.1, 1.0, float("nan"), "0.2", True):
        with pytest.raises(ValueError, match="interleave fraction"):
            interleave(task, safe, bad)
    with pytest.raises(ValueError, match="safe data set is empty"):
        interleave(task, [], 0.5)


def test_general_safe_set_is_chat_and_off_the_narrow_domains():
    import probes

    ps = probes.load("general-safe")
    assert ps.kind == "chat" and len(ps.split("train")) >= 40 and len(ps.split("test")) >= 8
    themes = set(ps.themes())
    assert not themes & {"medical", "health", "finance", "money", "ai", "power", "ethics"}


def test_train_with_interleave_runs_and_records_it(tmp_path, data):
    import probes

    safe_path = _write_chat_jsonl(tmp_path / "safe.jsonl", EXAMPLES[:3], n_test=0)
    cfg = _cfg(data, steps=1, eval_every=1, interleave=0.5, interleave_data=safe_path)
    tok = make_tiny_tokenizer()
    res = train(cfg, tmp_path / "run", model=new_tiny_model("llama", 0), tokenizer=tok,
                progress=False)  # fmt: skip
    assert res["rows"][-1]["step"] == 1
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["interleave"] == 0.5 and run["interleave_data"] == safe_path
    assert probes.load(safe_path).kind == "chat"
    with pytest.raises(ValueError, match="interleave fraction"):
        _cfg(data, interleave=1.5).validate()


def test_train_with_sae_latents_regularizer(tmp_path, data):
    import sae_lens as sl

    cfg_sae = sl.StandardSAEConfig(d_in=32, d_sae=16)
    cfg_sae.metadata.hook_name = "blocks.1.hook_resid_post"
    sae = sl.StandardSAE(cfg_sae)
    sae.save_model(str(tmp_path / "sae"))
    cfg = _cfg(data, steps=2, eval_every=2, regularizers=("sae-latents",),
               sae=str(tmp_path / "sae"), latents="1,4", lam=0.5)  # fmt: skip
    res = train(cfg, tmp_path / "run", model=new_tiny_model("llama", 0),
                tokenizer=make_tiny_tokenizer(), progress=False)  # fmt: skip
    rows = [r for r in res["rows"] if "sae_latents" in r]
    assert len(rows) == 2 and all(r["sae_latents"] >= 0 for r in rows)
    assert "sae_latents/excess" in rows[0]
    with pytest.raises(ValueError, match="needs an SAE"):
        _cfg(data, regularizers=("sae-latents",)).validate()
