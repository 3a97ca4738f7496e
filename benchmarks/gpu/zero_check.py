"""DeepSpeed ZeRO-2/3 with RegularizedLoss against one plain process (a manual check).

A full fine-tune of the tiny test model (tests/test_ddp.py's setup: θ0 a frozen model, whole on
each rank; terms KL, DirectionalL2, DirectionalKL, LDIFS), one SGD step. Under DeepSpeed each of 2
ranks computes half of the batch through the engine (``engine.backward``, ``engine.step``); the
updated weights, gathered on rank 0, are compared with one process's on the whole batch.

DeepSpeed is not a saetools dependency: install it in a throwaway venv that sees the project's
packages, then run the two steps (CPU: DeepSpeed's CPU accelerator, gloo)::

    python -m venv /tmp/dsvenv
    python -c "import site; print(site.getsitepackages()[0])" \\
        > "$(/tmp/dsvenv/bin/python -c 'import site; print(site.getsitepackages()[0])')/main.pth"
    /tmp/dsvenv/bin/pip install deepspeed
    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu ZERO_STAGE=3 PYTHONPATH=$PWD \\
        /tmp/dsvenv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        benchmarks/gpu/zero_check.py
    ZERO_STAGE=3 PYTHONPATH=$PWD /tmp/dsvenv/bin/python benchmarks/gpu/zero_check.py

``LOGIT_CHUNK=none`` runs the full-logits form. Note ``"gradient_clipping": 0.0``: with
DeepSpeed's default clipping the update is rescaled (by 0.36 on this batch) and does not match.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_ddp import _setup  # noqa: E402

from saetools.regularize import RegularizedLoss  # noqa: E402

STAGE = int(os.environ.get("ZERO_STAGE", "3"))
CHUNK = os.environ.get("LOGIT_CHUNK", "256")
CHUNK = None if CHUNK == "none" else int(CHUNK)
OUT = Path(os.environ.get("ZERO_OUT", "/tmp")) / f"zero{STAGE}.pt"


def single():
    model, reference, terms, batch = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = RegularizedLoss(model, terms, reference=reference, logit_chunk=CHUNK)(batch)
    out.loss.backward()
    opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, out.logs


def distributed() -> None:
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    model, reference, terms, batch = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": STAGE},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,
        "steps_per_print": 1000,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    reg = RegularizedLoss(engine, terms, reference=reference, logit_chunk=CHUNK)
    half = {k: v[rank * 2 : rank * 2 + 2] for k, v in batch.items()}
    out = reg(half)
    engine.backward(out.loss)
    engine.step()
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=STAGE == 3):
        state = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    if rank == 0:
        torch.save(state, OUT)


def main() -> None:
    if os.environ.get("WORLD_SIZE"):
        distributed()
        return
    want, logs = single()
    got = torch.load(OUT, weights_only=True)
    init = dict(_setup()[0].named_parameters())
    update = max(float((want[n] - init[n].detach()).abs().max()) for n in want)
    worst = max(float((got[n] - want[n]).abs().max()) for n in want)
    print(f"ZeRO-{STAGE}, logit_chunk {CHUNK}: max |weights (2 ranks) - weights (1 process)| ")
    print(f"  {worst:.3e} (largest update {update:.3e}); terms {logs}")


if __name__ == "__main__":
    main()
