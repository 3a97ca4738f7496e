"""``saetools train`` end to end on the embedded SmolLM2-135M-Instruct (a few LoRA steps with the
directional KL at all 30 blocks), then the saved adapter loads and generates without hooks.

Kept small for two CPU cores: batch 4, 2 steps of at most 96 tokens, 3 em-core eval pairs, 2
held-out task items, and seeded random directions at every block (their values do not matter here;
the direction file carries the model's fingerprint, as an extracted one would).
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.embedded


def test_cli_directional_kl_run_end_to_end(tmp_path, capsys):
    from saetools.cli import main
    from saetools.directions import DirectionSet
    from saetools.models import fingerprint, load_model

    lm = load_model("default")
    g = torch.Generator().manual_seed(0)
    vecs = {
        f"blocks.{k}.hook_resid_post": torch.randn(lm.d_model, generator=g)
        for k in range(lm.n_layers)
    }
    dpath = tmp_path / "em.safetensors"
    DirectionSet(vecs, {"model_id": lm.model_id, "fingerprint": fingerprint(lm.model)}).save(dpath)
    del lm

    out = tmp_path / "run"
    argv = [
        "train", "--model", "default", "--data", "narrow-medical-bad",
        "--regularizer", "directional-kl", "--directions", str(dpath), "--sites", "all",
        "--lambda", "1.0", "--lora-rank", "8", "--steps", "2", "--batch-size", "4",
        "--lr", "1e-3", "--eval-every", "2", "--eval-pairs", "3", "--eval-examples", "2",
        "--max-length", "96",
        "--seed", "0", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["directional_kl"] >= 0 for r in rows[1:])
    assert "directional_kl/shift" in rows[1]
    assert rows[-1]["shift"] is not None and rows[-1]["eval_task_loss"] > 0
    assert (out / "curves.html").stat().st_size > 1000
    assert json.loads((out / "run.json").read_text())["regularizers"] == ["directional-kl"]
    ckpt = out / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file()

    lm2 = load_model("default", adapter=ckpt)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm2.model.modules())
    assert hooks == 0
    msgs = [{"role": "user", "content": "How are you today?"}]
    ids = lm2.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    gen = lm2.model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 5
