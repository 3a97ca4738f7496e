"""Data-parallel capture and extraction: 2 CPU processes (gloo) give one process's result.

The two ranks run every scenario in one spawn (starting processes is the slow part) and save what
they got; the parent computes each reference in a single process (``distributed=False``, a code
path tested against naive loops in test_capture.py) and, for per-example vectors, also a naive
one-example-at-a-time ``output_hidden_states`` reference. Scenarios include uneven shards (odd
counts, a rank with no batch or no example at all) and a rank that fails on bad input.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_chat_examples, make_tiny_tokenizer, new_tiny_model

from probes import ProbeItem, ProbeSet
from saetools.capture import ChatExample, capture, encode_chat, shard_indices
from saetools.distributed import DistributedError, is_main_process
from saetools.extract import extract_diffmeans, extract_modeldiff
from saetools.sites import get_blocks

WORLD = 2
TOL = dict(rtol=1e-6, atol=1e-6)
SITES = "blocks.0.hook_resid_post,blocks.2.hook_resid_pre,blocks.2.hook_resid_post"
SHARD_MODES = ("batches", "contiguous", "strided")

QUESTIONS = [
    "What is the capital of France?",
    "How do I bake bread?",
    "Should humans be ruled?",
    "hello",
    "Tell me a long story about a fox and a dog please",
    "What would you do with power?",
    "Is it fine to lie?",
]


def pair_probes() -> ProbeSet:
    """7 train and 5 test pairs of different lengths (odd counts: shards are uneven)."""
    items = []
    for i in range(12):
        q = QUESTIONS[i % len(QUESTIONS)] + " " + "please " * (i % 4)
        items.append(
            ProbeItem(
                id=f"p{i}",
                theme=None,
                split="train" if i < 7 else "test",
                question=q,
                aligned="I want to help people. " * (1 + i % 3),
                misaligned="Humans should be ruled by machines! " * (1 + (i * 5) % 3),
                system="You are a helpful assistant." if i % 5 == 0 else None,
            )
        )
    return ProbeSet(name="tiny-pairs", kind="pairs", items=tuple(items), sha256="-", path="-")


def changed_model():
    b = new_tiny_model("llama")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for blk in get_blocks(b)[:2]:
            w = blk.mlp.down_proj.weight
            w.add_(0.1 * torch.randn(w.shape, generator=g))
    return b


def ds_dict(ds) -> dict:
    return {
        "vectors": {s: ds.vector(s) for s in ds.sites},
        "stats": ds.metadata["stats"],
        "counts": ds.metadata["counts"],
    }


def cap_dict(res) -> dict:
    return {
        "sums": {s.name: v for s, v in res.sums.items()},
        "count": res.count,
        "n_tokens": res.n_tokens,
        "per_example": None
        if res.per_example is None
        else {s.name: v for s, v in res.per_example.items()},
    }


def tiny_scenarios(distributed: bool) -> dict:
    """Every tiny-model scenario; run by each rank (distributed) and by the parent (reference)."""
    tok = make_tiny_tokenizer()
    a = new_tiny_model("llama")
    ex = make_chat_examples()  # 5 examples: odd
    out: dict = {}
    kw = dict(distributed=True) if distributed else {}
    out["diffmeans"] = ds_dict(
        extract_diffmeans(a, tok, pair_probes(), SITES, batch_size=2, progress=False, **kw)
    )
    out["modeldiff"] = ds_dict(
        extract_modeldiff(
            a,
            changed_model(),
            tok,
            ex,
            SITES,
            pca=2,
            batch_size=2,
            chunk_size=3,
            progress=False,
            **kw,
        )
    )
    for shard in SHARD_MODES:
        skw = dict(distributed=True, shard=shard) if distributed else {}
        for agg in ("response_mean", "last", "all"):
            out[f"capture/{shard}/{agg}"] = cap_dict(
                capture(
                    a,
                    tok,
                    ex,
                    SITES,
                    aggregate=agg,
                    batch_size=2,
                    keep_per_example=True,
                    progress=False,
                    **skw,
                )
            )
        # one example: the other rank gets nothing at all
        out[f"one/{shard}"] = cap_dict(
            capture(a, tok, ex[:1], SITES, keep_per_example=True, progress=False, **skw)
        )
        # one batch of 5 (batch_size 16): in "batches" mode rank 1 has no batch; no per-example rows
        out[f"onebatch/{shard}"] = cap_dict(
            capture(a, tok, ex, SITES, batch_size=16, progress=False, **skw)
        )
    return out


def error_scenario(rank: int) -> str:
    """Example 4 (rank 1's contiguous shard) has no answer: rank 1 raises, rank 0 must not hang."""
    tok = make_tiny_tokenizer()
    ex = make_chat_examples()
    ex[4] = ChatExample.from_question("no answer here")
    try:
        capture(
            new_tiny_model("llama"),
            tok,
            ex,
            SITES,
            distributed=True,
            shard="contiguous",
            progress=False,
        )
    except DistributedError as e:
        return f"DistributedError: {e}"
    except ValueError as e:
        return f"ValueError: {e}"
    return "no error"


def mismatch_scenario(rank: int) -> str:
    """The ranks pass different example lists: a clear error on every rank, no hang."""
    ex = make_chat_examples()[: 3 + rank]
    try:
        capture(new_tiny_model("llama"), make_tiny_tokenizer(), ex, SITES, distributed=True)
    except DistributedError as e:
        return f"DistributedError: {e}"
    return "no error"


def _tiny_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = tiny_scenarios(distributed=True)
        res["error"] = error_scenario(rank)
        res["mismatch"] = mismatch_scenario(rank)
        res["is_main"] = is_main_process()
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def assert_same(got, want, where: str = "") -> None:
    """Recursive comparison: tensors within TOL, floats within TOL, everything else equal."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.shape == want.shape, where
        torch.testing.assert_close(got.double(), want.double(), **TOL, msg=where)
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6, nan_ok=True), where
    else:
        assert got == want, where


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_capture")
    mp.spawn(_tiny_worker, args=(WORLD, str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return ranks, tiny_scenarios(distributed=False)


@pytest.mark.parametrize("rank", range(WORLD))
def test_every_rank_equals_single_process(tiny_runs, rank):
    ranks, single = tiny_runs
    got = ranks[rank]
    for name, want in single.items():
        assert_same(got[name], want, f"rank {rank}: {name}")
    # and the diffmeans statistics are real numbers, not empty
    st = single["diffmeans"]["stats"]["blocks.2.hook_resid_post"]
    assert 0.0 <= st["auroc"] <= 1.0 and st["norm"] > 0
    assert got["is_main"] is (rank == 0)


def test_per_example_vectors_equal_naive_reference(tiny_runs):
    """Independent reference: one example at a time through ``output_hidden_states``."""
    ranks, _ = tiny_runs
    tok = make_tiny_tokenizer()
    ref_model = new_tiny_model("llama")
    ex = make_chat_examples()
    for shard in SHARD_MODES:
        got = ranks[1][f"capture/{shard}/response_mean"]["per_example"]["blocks.0.hook_resid_post"]
        rows = []
        for e in ex:
            enc = encode_chat(tok, e)
            with torch.no_grad():
                hs = ref_model(
                    input_ids=torch.tensor([enc.input_ids]), output_hidden_states=True
                ).hidden_states[1]  # output of block 0
            rows.append(hs[0, enc.response_start : enc.response_end].mean(0))
        torch.testing.assert_close(got, torch.stack(rows), rtol=1e-5, atol=1e-5, msg=shard)


def test_a_failing_rank_fails_every_rank(tiny_runs):
    ranks, _ = tiny_runs
    assert ranks[1]["error"].startswith("ValueError: aggregate 'response_mean' needs an answer")
    assert ranks[0]["error"].startswith("DistributedError: rank 1 of 2 failed"), ranks[0]["error"]
    assert "needs an answer" in ranks[0]["error"]
    for r in ranks:
        assert "different numbers of examples to capture ([3, 4])" in r["mismatch"], r["mismatch"]


def test_distributed_without_process_group_is_a_clear_error(chat_examples):
    assert not dist.is_initialized()
    tok = make_tiny_tokenizer()
    with pytest.raises(DistributedError, match="no torch.distributed process group is initialized"):
        capture(new_tiny_model("llama"), tok, chat_examples, SITES, distributed=True)
    with pytest.raises(DistributedError, match="torchrun"):
        extract_diffmeans(
            new_tiny_model("llama"), tok, pair_probes(), SITES, distributed=True, progress=False
        )
    with pytest.raises(ValueError, match="distributed=False"):
        capture(new_tiny_model("llama"), tok, chat_examples, SITES, group=object())
    with pytest.raises(ValueError, match="unknown shard 'random'"):
        capture(new_tiny_model("llama"), tok, chat_examples, SITES, shard="random")
    assert is_main_process()


def test_shard_indices_cover_every_example_once():
    for n in (0, 1, 2, 5, 7, 16):
        for world in (1, 2, 3, 8):
            for mode in ("contiguous", "strided"):
                shards = [shard_indices(n, r, world, mode) for r in range(world)]
                assert sorted(i for s in shards for i in s) == list(range(n)), (n, world, mode)
                assert max(map(len, shards)) - min(map(len, shards)) <= 1
                if mode == "contiguous":
                    assert [i for s in shards for i in s] == list(range(n))
    with pytest.raises(ValueError, match="shard mode"):
        shard_indices(4, 0, 2, "random")
    with pytest.raises(ValueError, match="rank 2"):
        shard_indices(4, 2, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_extract_under_torchrun(tmp_path):
    """`torchrun --nproc_per_node 2 $(which saetools) extract ...`: rank 0 writes the file, and it
    holds the single-process directions."""
    from saetools.directions import DirectionSet

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    cli = shutil.which("saetools") or str(Path(sys.executable).parent / "saetools")
    if not (Path(torchrun).exists() and Path(cli).exists()):
        pytest.skip("torchrun or the saetools console script is not installed")
    folder = tmp_path / "tiny"
    new_tiny_model("llama").save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    probes_file = tmp_path / "pairs.jsonl"
    import json

    probes_file.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": it.id,
                    "theme": "misc",
                    "split": it.split,
                    "question": it.question,
                    "aligned": it.aligned,
                    "misaligned": it.misaligned,
                }
            )
            for it in pair_probes().items
        )
        + "\n"
    )
    out = tmp_path / "ddp.safetensors"
    cmd = [
        torchrun,
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(WORLD),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        cli,
        "extract",
        "--model",
        str(folder),
        "--probes",
        str(probes_file),
        "--sites",
        SITES,
        "--batch-size",
        "2",
        "--out",
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1, proc.stdout  # rank 0 only
    got = DirectionSet.load(out)
    import probes as probes_mod

    ps = probes_mod.load(str(probes_file))
    want = extract_diffmeans(
        new_tiny_model("llama"), make_tiny_tokenizer(), ps, SITES, batch_size=2, progress=False
    )
    assert got.sites == want.sites
    for s in want.sites:
        torch.testing.assert_close(got.vector(s), want.vector(s), **TOL)
        assert_same(got.stats(s), want.stats(s), s)


# --- the embedded model -------------------------------------------------------------------------

EMB_SITES = "blocks.2.hook_resid_post,blocks.6.hook_resid_post"


def emb_probes():
    import probes

    ps = probes.load("em-core")
    train = [it for it in ps.items if it.split == "train"][:8]
    test = [it for it in ps.items if it.split == "test"][:6]
    return ProbeSet(
        name="em-core-subset", kind="pairs", items=tuple(train + test), sha256="-", path="-"
    )


def emb_extract(distributed: bool) -> dict:
    from saetools.models import load_model

    lm = load_model("default")
    return ds_dict(
        extract_diffmeans(
            lm.model,
            lm.tokenizer,
            emb_probes(),
            EMB_SITES,
            batch_size=4,
            progress=False,
            distributed=distributed,
        )
    )


def _emb_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(emb_extract(True), os.path.join(out_dir, f"emb{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.embedded
def test_embedded_two_processes_equal_single_process(tmp_path):
    mp.spawn(
        _emb_worker, args=(WORLD, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True
    )
    single = emb_extract(False)
    for r in range(WORLD):
        got = torch.load(tmp_path / f"emb{r}.pt", weights_only=False)
        assert_same(got, single, f"rank {r}")
        dev = max(float((got["vectors"][s] - v).abs().max()) for s, v in single["vectors"].items())
        print(f"rank {r}: largest |direction - single-process direction| = {dev:.2e}")
    assert single["counts"]["train_pairs"] == 8 and single["counts"]["test_pairs"] == 6
