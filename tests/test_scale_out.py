"""Scale-out on the CPU: bfloat16 models, models dispatched by accelerate, and multi-process training
(accelerate launch, the HF Trainer, FSDP2) against one process.

What needs a GPU (CUDA bf16 against CPU fp32 on the embedded model, a model split over ``cpu`` and
``cuda``) is in tests/test_cuda.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import D_MODEL, make_chat_examples, make_tiny_tokenizer, new_tiny_model

from saetools.capture import capture
from saetools.directions import DirectionSet
from saetools.regularize import (
    KL,
    LDIFS,
    Ablate,
    DirectionalKL,
    DirectionalL2,
    RegularizedLoss,
    SAELatents,
    Steer,
)
from saetools.sites import parse_site
from saetools.steer import Intervention, steer

SITES = ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post")


def _batch(seed: int = 0, b: int = 3, t: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 300, (b, t), generator=g)
    attn = torch.ones(b, t, dtype=torch.long)
    attn[1, -4:] = 0
    ids[attn == 0] = 0
    labels = ids.clone()
    labels[:, :5] = -100
    labels[attn == 0] = -100
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def _lora(model, seed=0, scale=0.3):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return pm


def _sae(site: str = SITES[0], d_sae: int = 48):
    import sae_lens as sl

    cfg = sl.StandardSAEConfig(d_in=D_MODEL, d_sae=d_sae, apply_b_dec_to_input=True)
    cfg.metadata.hook_name = site
    sae = sl.StandardSAE(cfg)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_MODEL, d_sae, generator=g) * 0.4)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.W_dec.copy_(torch.randn(d_sae, D_MODEL, generator=g) * 0.2)
    return sae


def _directions() -> DirectionSet:
    g = torch.Generator().manual_seed(5)
    return DirectionSet({s: torch.randn(D_MODEL, generator=g) for s in SITES}, {})


def _terms(ds, sae) -> dict[str, list]:
    return {
        "kl": [KL()],
        "directional-kl": [DirectionalKL(ds)],
        "directional-l2": [DirectionalL2(ds)],
        "ldifs": [LDIFS(sites=list(SITES))],
        "sae-latents": [SAELatents(sae, [1, 5, 7, 30])],
        "steer": [Steer(ds, alpha=2.0)],
        "ablate": [Ablate(ds)],
    }


# ------------------------------------------------------------------------ bfloat16


def test_bf16_regularizers_match_fp32():
    """Every regularizer on a bfloat16 LoRA model: values within bf16 tolerance of float32, exact
    zeros with a zero adapter, finite gradients; the bases, the SAE and θ0 follow the model."""
    fp = _lora(new_tiny_model("llama"))
    bf = copy.deepcopy(fp).to(torch.bfloat16)
    ds, sae = _directions(), _sae()
    batch = _batch(1)
    for name, terms in _terms(ds, sae).items():
        out32 = RegularizedLoss(fp, terms)(batch)
        out16 = RegularizedLoss(bf, terms)(batch)
        for k, v in out32.logs.items():
            assert out16.logs[k] == pytest.approx(v, rel=3e-2, abs=3e-3), (name, k)
        for t in terms:
            if t.name in out32.terms:
                assert out32.logs[t.name] > 1e-3, (name, out32.logs)
        out16.loss.backward()
        grads = [p.grad for n, p in bf.named_parameters() if "lora_" in n]
        assert all(g is not None and g.dtype == torch.bfloat16 for g in grads)
        assert all(torch.isfinite(g).all() for g in grads)
        bf.zero_grad(set_to_none=True)
    # θ = θ0 (adapter B = 0): every term is exactly zero in bfloat16 too
    zero = _lora(new_tiny_model("llama"), scale=0.0).to(torch.bfloat16)
    for name, terms in _terms(ds, sae).items():
        out = RegularizedLoss(zero, terms)(batch)
        assert all(v.item() == 0.0 for v in out.terms.values()), (name, out.logs)


def test_bf16_capture_sums_float64_and_steer_match_fp32():
    fp = new_tiny_model("llama")
    bf = copy.deepcopy(fp).to(torch.bfloat16)
    tok, exs = make_chat_examples_and_tokenizer()
    r32 = capture(fp, tok, exs, list(SITES), progress=False)
    r16 = capture(bf, tok, exs, list(SITES), progress=False)
    for s in r16.sites:
        assert r16.sums[s].dtype == torch.float64 and r16.sums[s].device.type == "cpu"
        a, b = r16.mean(s).double(), r32.mean(s).double()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999
        assert (a - b).norm() / b.norm() < 2e-2
    # steering: the change a steer makes to the logits agrees between bf16 and fp32
    ds = _directions()
    ivs = [Intervention(SITES[0], ds.vector(SITES[0]), "add", alpha=3.0)]
    kw = {k: v for k, v in _batch(2).items() if k != "labels"}
    effects = []
    for m in (fp, bf):
        with torch.no_grad():
            plain = m(**kw).logits.double()
            with steer(m, ivs):
                steered = m(**kw).logits.double()
        effects.append(steered - plain)
    assert effects[1].abs().max() > 0.05
    cos = torch.nn.functional.cosine_similarity(effects[0].flatten(), effects[1].flatten(), dim=0)
    assert cos > 0.99


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_capture_accumulates_in_float64_whatever_the_model_dtype(dtype):
    """The sums over examples (and tokens) are float64 sums of the reduced rows, not float32 or
    model-dtype sums cast afterwards: they equal the float64 sum of the kept rows to 1e-12, which a
    float32 accumulation of the same rows misses (checked here, so the test can fail)."""
    model = new_tiny_model("llama").to(dtype)
    tok, exs = make_chat_examples_and_tokenizer()
    for aggregate in ("all", "response_mean"):
        res = capture(
            model, tok, exs * 3, [SITES[0]], aggregate=aggregate, batch_size=3,
            keep_per_example=True, progress=False,
        )  # fmt: skip
        site = res.sites[0]
        rows = res.per_example[site]
        assert res.sums[site].dtype == torch.float64 and rows.dtype == torch.float32
        ref = rows.double().sum(0)
        scale = ref.abs().max()
        assert (res.sums[site] - ref).abs().max() <= 1e-12 * scale, aggregate
        if aggregate == "response_mean":
            assert (rows.sum(0).double() - ref).abs().max() > 1e-9 * scale


def make_chat_examples_and_tokenizer():
    return make_tiny_tokenizer(), make_chat_examples()


# ------------------------------------------------------------------------ accelerate dispatch


def _cpu_device_map(model) -> dict[str, str]:
    """Every block, the embeddings, the final norm and the head as their own dispatch unit."""
    m = model.model
    units = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu"}
    units.update({f"model.layers.{i}": "cpu" for i in range(len(m.layers))})
    units["lm_head"] = "cpu"
    return units


def test_dispatched_model_steers_captures_and_regularizes_like_the_plain_one():
    """A model dispatched by accelerate block by block (``dispatch_model``, the machinery of
    ``device_map="auto"``: each unit's forward wrapped by a hook that moves its inputs to the
    unit's device). On one CPU every unit is on ``cpu``, so this checks that saetools' hooks, the
    chunked head and θ0 compose with accelerate's hooks, not a real move between devices (that is
    the ``cuda`` test in tests/test_cuda.py)."""
    from accelerate import dispatch_model

    plain = new_tiny_model("llama")
    dispatched = dispatch_model(
        copy.deepcopy(plain), _cpu_device_map(plain), main_device="cpu", force_hooks=True
    )
    assert hasattr(dispatched.model.layers[1], "_hf_hook")
    tok, exs = make_chat_examples_and_tokenizer()
    ds = _directions()
    kw = {k: v for k, v in _batch(3).items() if k != "labels"}
    ivs = [Intervention(SITES[0], ds.vector(SITES[0]), "add", alpha=3.0)]
    res = []
    for m in (plain, dispatched):
        with torch.no_grad(), steer(m, ivs):
            logits = m(**kw).logits
        cap = capture(m, tok, exs, list(SITES), progress=False)
        ref = new_tiny_model("llama", seed=1)  # θ0 other than θ: every term nonzero
        out = RegularizedLoss(
            m, [KL(), DirectionalKL(ds), DirectionalL2(ds)], reference=ref, logit_chunk=4
        )(_batch(4))
        res.append((logits, cap, out))
    torch.testing.assert_close(res[1][0], res[0][0])
    for s in res[0][1].sites:
        torch.testing.assert_close(res[1][1].sums[s], res[0][1].sums[s])
    assert all(v > 1e-4 for v in res[0][2].terms.values()), res[0][2].logs
    for k, v in res[0][2].logs.items():
        assert res[1][2].logs[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    assert parse_site(SITES[0], 3) in res[0][1].sites


def test_offloaded_model_regularizes_like_the_plain_one():
    """Weights offloaded by accelerate (``cpu_offload``: parameters on ``meta``, moved in at each
    forward): the batch goes to the execution device, not to ``meta``."""
    from accelerate import cpu_offload

    plain = new_tiny_model("llama")
    offloaded = cpu_offload(copy.deepcopy(plain), execution_device="cpu")
    ds = _directions()
    outs = [
        RegularizedLoss(m, [KL(), DirectionalKL(ds)], reference=new_tiny_model("llama", seed=1))(
            _batch(5)
        )
        for m in (plain, offloaded)
    ]
    for k, v in outs[0].logs.items():
        assert outs[1].logs[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


# ------------------------------------------------------------------------ accelerate launch

ACCELERATE_TIMEOUT = 900  # seconds for one launch of 2 processes on a loaded 2-core machine


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path) -> dict:
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{root}:{root / 'tests'}",
        SAETOOLS_SKIP_LLAMACPP="1",
        OMP_NUM_THREADS="1",
        HF_HOME=str(tmp_path / "hf_home"),  # no accelerate default config from elsewhere
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def _launch(tmp_path, argv: list[str], processes: int) -> None:
    """``argv`` (a script and its arguments) in 1 process, or under ``accelerate launch
    --multi_gpu --num_processes N`` (torchrun underneath; on a machine without GPUs every rank uses
    gloo on the CPU; ``--cpu`` would start one process, or use ``mpirun``)."""
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    if processes == 1:
        cmd = [sys.executable, *argv]
    else:
        cmd = [
            str(bin_dir / "accelerate"), "launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), *argv,
        ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=ACCELERATE_TIMEOUT
    )
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _chat_data(path) -> str:
    import json

    exs = make_chat_examples() * 2
    with open(path, "w") as f:
        for i, ex in enumerate(exs):
            msgs = [*ex.messages, {"role": "assistant", "content": ex.response}]
            split = "test" if i < 2 else "train"
            f.write(json.dumps({"id": f"x{i}", "split": split, "messages": msgs}) + "\n")
    return str(path)


def _safetensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_close_weights(a: dict, b: dict, step: float) -> None:
    """Within 0.5% of one optimizer step (``step``: the largest change one step can make, AdamW's
    learning rate): Adam divides each gradient coordinate by its own magnitude, so the float32
    noise of other batch shapes (a rank holds 2 rows, not 4) in a near-zero gradient (lora_A at
    step 2, while lora_B is still about one learning rate) moves it by up to ~1e-3 of a step."""
    assert set(a) == set(b) and a
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 5e-3 * step, (worst, step)


def test_saetools_train_under_accelerate_launch_equals_one_process(tmp_path):
    """``accelerate launch --num_processes 2 saetools train`` with directional KL: the same final
    adapter and the same logged losses as one process (the global batch of 4 split 2 + 2)."""
    import json
    import sys
    from pathlib import Path

    folder = tmp_path / "tiny"
    new_tiny_model("llama").save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    data = _chat_data(tmp_path / "data.jsonl")
    g = torch.Generator().manual_seed(0)
    ds = DirectionSet(
        {f"blocks.{k}.hook_resid_post": torch.randn(D_MODEL, generator=g) for k in range(3)}, {}
    )
    ds.save(tmp_path / "dirs.safetensors")
    saetools = str(Path(sys.executable).parent / "saetools")
    common = [
        "train", "--model", str(folder), "--data", data, "--regularizer", "directional-kl",
        "--directions", str(tmp_path / "dirs.safetensors"), "--lambda", "2",
        "--steps", "2", "--batch-size", "4", "--grad-accum", "2", "--eval-every", "2",
        "--eval-pairs", "2", "--eval-examples", "2", "--lora-rank", "4", "--max-length", "64",
        "--lr", "1e-2", "--quiet",
    ]  # fmt: skip
    _launch(tmp_path, [saetools, *common, "--out", str(tmp_path / "one")], 1)
    _launch(tmp_path, [saetools, *common, "--out", str(tmp_path / "two")], 2)
    one = _safetensors(tmp_path / "one" / "checkpoint-2" / "adapter_model.safetensors")
    two = _safetensors(tmp_path / "two" / "checkpoint-2" / "adapter_model.safetensors")
    _assert_close_weights(one, two, step=1e-2)
    rows = [
        [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("one", "two")
    ]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [0, 1, 2]
    for a, b in zip(rows[0][1:], rows[1][1:], strict=True):
        for k in ("loss", "task_loss", "directional_kl", "n_tokens"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k
    assert rows[0][1]["directional_kl"] > 0 or rows[0][2]["directional_kl"] > 0
    assert not list((tmp_path / "two").glob(".tmp-checkpoint-*"))


TRAINER_SCRIPT = """
import json
import sys

import torch
from conftest import D_MODEL, make_chat_examples, make_tiny_tokenizer, new_tiny_model
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import TrainingArguments

from saetools.directions import DirectionSet
from saetools.regularize import DirectionalKL
from saetools.train import Collator, RegularizedTrainer, encode_training_example

out, per_device = sys.argv[1], int(sys.argv[2])
tok = make_tiny_tokenizer()
feats = [encode_training_example(tok, e) for e in make_chat_examples() * 2][:8]
torch.manual_seed(0)
cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
model = get_peft_model(new_tiny_model("llama"), cfg)
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
ds = DirectionSet({f"blocks.{k}.hook_resid_post": torch.randn(D_MODEL, generator=g) for k in range(3)}, {})
args = TrainingArguments(
    output_dir=out + ".trainer", per_device_train_batch_size=per_device, max_steps=2,
    learning_rate=0.1, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
    weight_decay=0.0, max_grad_norm=0.0, report_to=[], save_strategy="no", logging_steps=1,
    use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0, seed=0,
    disable_tqdm=True, train_sampling_strategy="sequential",
)
trainer = RegularizedTrainer(
    model=model, args=args, train_dataset=feats, data_collator=Collator(tok),
    regularizer_terms=[DirectionalKL(ds, "all", weight=2.0)],
)
trainer.train()
if trainer.is_world_process_zero():
    delta = {n: (p.detach() - before[n]).contiguous() for n, p in model.named_parameters() if n in before}
    save_file(delta, out)
    logs = [h for h in trainer.state.log_history if "reg/directional_kl" in h]
    with open(out + ".json", "w") as f:
        json.dump({"logs": logs, "world": trainer.args.world_size}, f)
"""


def test_hf_trainer_under_accelerate_launch_equals_one_process(tmp_path):
    """The HF Trainer recipe (``RegularizedTrainer``, LoRA, directional KL, SGD) under
    ``accelerate launch --num_processes 2`` with 2 examples per device makes the update of one
    process with 4 (sequential sampling: the same global batches)."""
    import json

    script = tmp_path / "trainer_run.py"
    script.write_text(TRAINER_SCRIPT)
    _launch(tmp_path, [str(script), str(tmp_path / "one.safetensors"), "4"], 1)
    _launch(tmp_path, [str(script), str(tmp_path / "two.safetensors"), "2"], 2)
    one = _safetensors(tmp_path / "one.safetensors")
    two = _safetensors(tmp_path / "two.safetensors")
    scale = max(float(v.abs().max()) for v in one.values())
    assert scale > 1e-4
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst <= 1e-6 + 1e-4 * scale, (worst, scale)  # SGD: the update is lr x the gradient
    meta = [json.loads((tmp_path / f"{x}.safetensors.json").read_text()) for x in ("one", "two")]
    assert meta[0]["world"] == 1 and meta[1]["world"] == 2
    assert len(meta[0]["logs"]) == len(meta[1]["logs"]) == 2
    assert meta[0]["logs"][1]["reg/directional_kl"] > 0
    # the logged terms are averaged over the processes (equal weights per process, not per token)
    for a, b in zip(meta[0]["logs"], meta[1]["logs"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["reg/task_loss"] == pytest.approx(a["reg/task_loss"], rel=2e-2)


# ------------------------------------------------------------------------ FSDP2


FSDP_MODES = ("whole", "sharded-full-pass", "sharded-early-stop")


def _fsdp_terms(mode: str, terms: list) -> list:
    if mode == "sharded-full-pass":
        return [KL(weight=0.5), LDIFS(weight=0.1)]
    if mode == "sharded-early-stop":
        return [LDIFS(weight=0.1, sites=["blocks.1.hook_resid_post"])]
    return terms


def _fsdp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Full fine-tune sharded with ``fully_shard`` (each block, then the root) over 2 CPU
    processes; each rank computes half of the batch, two iterations. θ0 whole on each rank with
    every term; θ0 sharded too with KL and LDIFS (a full θ0 pass), and with LDIFS at block 1 alone
    (a θ0 pass that stops after block 1). No reference: the clear error. (Direction terms with a
    sharded θ0 fail in the direction file's fingerprint check: docs/scaling.md.)"""
    import gc
    import os

    import torch.distributed as dist
    from test_ddp import _setup
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))

        def shard(m):
            for layer in m.model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(m, mesh=mesh)
            return m

        res = {}
        for mode in FSDP_MODES:
            model, reference, terms, batch = _setup()
            shard(model)
            if mode != "whole":
                shard(reference)
                terms = _fsdp_terms(mode, terms)
            reg = RegularizedLoss(model, terms, reference=reference)
            half = {k: v[rank * 2 : rank * 2 + 2] for k, v in batch.items()}
            for _ in range(2):
                model.zero_grad()
                reg(half).loss.backward()
            res[mode] = {
                n: p.grad.full_tensor().detach().clone() for n, p in model.named_parameters()
            }
            del reg
        try:
            RegularizedLoss(model, [KL()])
            res["error"] = ""
        except ValueError as e:
            res["error"] = str(e)
        if rank == 0:
            torch.save(res, os.path.join(out_dir, "fsdp.pt"))
        dist.barrier()
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_fsdp2_full_finetune_gradients_equal_single_process(tmp_path):
    import torch.multiprocessing as mp
    from test_ddp import _grads, _setup

    torch.set_num_threads(1)
    want = {}
    for mode in FSDP_MODES:
        model, reference, terms, batch = _setup()
        terms = _fsdp_terms(mode, terms)
        RegularizedLoss(model, terms, reference=reference)(batch).loss.backward()
        want[mode] = _grads(model)
    mp.spawn(_fsdp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "fsdp.pt", weights_only=True)
    for mode in FSDP_MODES:
        assert set(got[mode]) == set(want[mode]) and want[mode]
        for name, g in want[mode].items():
            torch.testing.assert_close(got[mode][name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert "sharded with FSDP" in got["error"] and "reference=" in got["error"]
