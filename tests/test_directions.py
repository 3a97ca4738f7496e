"""DirectionSet: save/load round trips, refusal of bad files, model checks, derived vectors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from saetools.directions import FORMAT_NAME, FORMAT_VERSION, DirectionFileError, DirectionSet
from saetools.models import fingerprint

D = 16
S0, S1, S2 = (f"blocks.{k}.hook_resid_post" for k in range(3))


def make_set(seed: int = 0, **meta) -> DirectionSet:
    g = torch.Generator().manual_seed(seed)
    vectors = {
        S0: torch.randn(D, generator=g),
        S1: torch.randn(D, generator=g) * 5,
        S2: torch.randn(3, D, generator=g),  # a 3-dimensional basis
    }
    metadata = {
        "model_id": "tiny/llama",
        "method": "diffmeans",
        "aggregation": "response_mean",
        "counts": {"pos": 10, "neg": 12},
        "stats": {S0: {"auroc": 0.7, "norm": 1.5}, S1: {"auroc": 0.9}, S2: {"auroc": 0.8}},
        "fingerprint": {
            "architecture": "LlamaForCausalLM",
            "n_layers": 3,
            "d_model": D,
            "vocab_size": 320,
            "embed_hash": "abc123",
        },
    }
    metadata.update(meta)
    return DirectionSet(vectors, metadata)


def write_raw(path, tensors, meta: dict | None, fmt: str = FORMAT_NAME):
    """A safetensors file with a hand-made saetools header (to forge bad files)."""
    header = None if meta is None else {"format": fmt, "saetools": json.dumps(meta)}
    save_file(tensors, str(path), metadata=header)
    return path


# ------------------------------------------------------------------------------------ round trip


def test_round_trip_identical(tmp_path):
    ds = make_set()
    path = ds.save(tmp_path / "dirs.safetensors")
    assert path == tmp_path / "dirs.safetensors"
    back = DirectionSet.load(path)
    assert back.sites == ds.sites
    for s in ds.sites:
        assert torch.equal(back.vector(s), ds.vector(s))
        assert back.vector(s).dtype == torch.float32
    assert back.vector(S2).shape == (3, D)
    assert back.metadata == ds.metadata
    assert back.metadata["format_version"] == FORMAT_VERSION
    assert back.metadata["d_model"] == D
    assert "saetools_version" in back.metadata
    assert back.metadata["counts"] == {"pos": 10, "neg": 12}
    assert back.stats(S1) == {"auroc": 0.9}
    # the file is a plain safetensors file with the documented header
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert meta["format"] == FORMAT_NAME
        assert json.loads(meta["saetools"])["model_id"] == "tiny/llama"
        assert set(f.keys()) == set(ds.sites)


def test_input_tensors_are_copied_and_converted(tmp_path):
    v = torch.randn(D, dtype=torch.float64)
    shared = torch.randn(D)
    ds = DirectionSet({S0: v, S1: shared, S2: shared})  # the same tensor at two sites
    assert ds.vector(S0).dtype == torch.float32
    shared[0] = 1e6  # changing the caller's tensor must not change the set
    assert ds.vector(S1)[0] != 1e6
    back = DirectionSet.load(ds.save(tmp_path / "shared.safetensors"))
    assert torch.equal(back.vector(S1), back.vector(S2))


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "d.safetensors"
    make_set().save(path)
    make_set(seed=1).save(path)  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["d.safetensors"]
    before = path.read_bytes()

    import safetensors.torch

    def broken_save(*args, **kwargs):
        with open(args[1], "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        make_set(seed=2).save(path)
    assert sorted(os.listdir(tmp_path)) == ["d.safetensors"]
    assert path.read_bytes() == before


# ------------------------------------------------------------------------------------ bad files


def test_missing_file(tmp_path):
    with pytest.raises(DirectionFileError, match="does not exist"):
        DirectionSet.load(tmp_path / "nope.safetensors")
    with pytest.raises(DirectionFileError, match="does not exist"):
        DirectionSet.load(tmp_path)  # a folder is not a file


def test_output_folder_missing(tmp_path):
    target = tmp_path / "no" / "such" / "d.safetensors"
    with pytest.raises(DirectionFileError, match="does not exist") as e:
        make_set().save(target)
    assert str(target.parent) in str(e.value)


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes(tmp_path, seed):
    g = torch.Generator().manual_seed(seed)
    path = tmp_path / "junk.safetensors"
    path.write_bytes(bytes(torch.randint(0, 256, (300,), generator=g, dtype=torch.uint8).tolist()))
    with pytest.raises(DirectionFileError, match="not a safetensors file"):
        DirectionSet.load(path)


@pytest.mark.parametrize(
    "content", [b"", b"abc", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json here}"]
)
def test_tiny_or_garbled_files(tmp_path, content):
    path = tmp_path / "small.safetensors"
    path.write_bytes(content)
    with pytest.raises(DirectionFileError, match="truncated|not a safetensors file|corrupt"):
        DirectionSet.load(path)


def test_header_that_is_json_but_not_safetensors(tmp_path):
    for header in (
        [1, 2],
        {"x": 1},
        {"x": {"dtype": "F32"}},
        {"x": {"data_offsets": "ab"}},
        {"__metadata__": "format"},
    ):
        raw = json.dumps(header).encode()
        path = tmp_path / "odd.safetensors"
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 64)
        with pytest.raises(DirectionFileError, match="safetensors"):
            DirectionSet.load(path)


def test_truncated_file(tmp_path):
    path = make_set().save(tmp_path / "d.safetensors")
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 7, 12):
        path.write_bytes(data[:cut])
        with pytest.raises(DirectionFileError, match="truncated") as e:
            DirectionSet.load(path)
        assert str(path) in str(e.value)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({S0: torch.randn(D)}, str(path))
    with pytest.raises(DirectionFileError, match="not a saetools direction file"):
        DirectionSet.load(path)
    save_file({S0: torch.randn(D)}, str(path), metadata={"format": "pt"})
    with pytest.raises(DirectionFileError, match="not a saetools direction file"):
        DirectionSet.load(path)


def test_bad_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(
        {S0: torch.randn(D)}, str(path), metadata={"format": FORMAT_NAME, "saetools": "{oops"}
    )
    with pytest.raises(DirectionFileError, match="not valid JSON"):
        DirectionSet.load(path)
    save_file({S0: torch.randn(D)}, str(path), metadata={"format": FORMAT_NAME, "saetools": "[1]"})
    with pytest.raises(DirectionFileError, match="not a JSON object"):
        DirectionSet.load(path)
    write_raw(path, {S0: torch.randn(D)}, {"format_version": FORMAT_VERSION + 1})
    with pytest.raises(DirectionFileError, match="Upgrade saetools"):
        DirectionSet.load(path)
    write_raw(path, {S0: torch.randn(D)}, {})
    with pytest.raises(DirectionFileError, match="format version"):
        DirectionSet.load(path)
    write_raw(path, {S0: torch.randn(D)}, {"format_version": 1, "d_model": D + 1})
    with pytest.raises(DirectionFileError, match="d_model"):
        DirectionSet.load(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32])
def test_non_float32_tensor(tmp_path, dtype):
    path = write_raw(
        tmp_path / "h.safetensors",
        {S0: torch.ones(D), S1: torch.ones(D).to(dtype)},
        {"format_version": FORMAT_VERSION},
    )
    with pytest.raises(DirectionFileError, match=rf"{S1}.*expected float32"):
        DirectionSet.load(path)


def test_nan_vector(tmp_path):
    v = torch.randn(D)
    v[2] = float("nan")
    path = write_raw(tmp_path / "n.safetensors", {S0: v}, {"format_version": FORMAT_VERSION})
    with pytest.raises(DirectionFileError, match=rf"{S0} contains NaN"):
        DirectionSet.load(path)
    with pytest.raises(DirectionFileError, match="NaN or infinite"):
        DirectionSet({S0: v})
    with pytest.raises(DirectionFileError, match="NaN or infinite"):
        DirectionSet({S0: torch.full((2, D), float("inf"))})


def test_bad_shapes():
    with pytest.raises(DirectionFileError, match="at least one site"):
        DirectionSet({})
    for bad in (torch.randn(2, 3, D), torch.tensor(1.0), torch.zeros(0), [1.0, 2.0]):
        with pytest.raises(DirectionFileError, match=r"\[d\] or \[k, d\]"):
            DirectionSet({S0: bad})
    with pytest.raises(DirectionFileError, match="different widths"):
        DirectionSet({S0: torch.randn(D), S1: torch.randn(D + 1)})


# ------------------------------------------------------------------------------------ model checks


def test_check_model_fingerprint(tmp_path):
    ds = make_set()
    fp = dict(ds.metadata["fingerprint"])
    ds.check_model(fp)  # same model: fine
    other = dict(fp, embed_hash="fff000", n_layers=4)
    with pytest.raises(DirectionFileError) as e:
        ds.check_model(other)
    msg = str(e.value)
    assert "embed_hash" in msg and "abc123" in msg and "fff000" in msg
    assert "n_layers" in msg and "tiny/llama" in msg and "force" in msg
    ds.check_model(other, force=True)
    # through load
    path = ds.save(tmp_path / "d.safetensors")
    with pytest.raises(DirectionFileError, match="embed_hash"):
        DirectionSet.load(path, other)
    assert DirectionSet.load(path, other, force=True).sites == ds.sites


def test_check_model_d_model_never_forced():
    ds = make_set()
    wide = dict(ds.metadata["fingerprint"], d_model=D * 2)
    with pytest.raises(DirectionFileError, match=rf"d_model: file {D}, model {2 * D}"):
        ds.check_model(wide)
    with pytest.raises(DirectionFileError, match="even with force"):
        ds.check_model(wide, force=True)
    # no recorded fingerprint: only the width is checked
    bare = DirectionSet({S0: torch.randn(D)})
    bare.check_model({"d_model": D, "embed_hash": "zzz"})
    with pytest.raises(DirectionFileError, match="even with force"):
        bare.check_model({"d_model": D + 1}, force=True)


def test_check_model_with_a_real_model(tiny_model, tmp_path):
    llama, qwen = tiny_model("llama"), tiny_model("qwen2")
    d = llama.config.hidden_size
    ds = DirectionSet({S0: torch.randn(d)}, {"model_id": "tiny", "fingerprint": fingerprint(llama)})
    ds.check_model(llama)
    path = ds.save(tmp_path / "d.safetensors")
    assert DirectionSet.load(path, llama).sites == [S0]
    with pytest.raises(DirectionFileError, match="architecture"):
        DirectionSet.load(path, qwen)
    DirectionSet.load(path, qwen, force=True)
    gpt2 = tiny_model("gpt2")
    narrow = DirectionSet({S0: torch.randn(d + 8)})
    with pytest.raises(DirectionFileError, match="even with force"):
        narrow.check_model(gpt2, force=True)


# ------------------------------------------------------------------------------------ derived vectors


def test_unit_and_basis():
    ds = make_set()
    for s in ds.sites:
        u = ds.unit(s)
        first = ds.vector(s) if ds.vector(s).ndim == 1 else ds.vector(s)[0]
        torch.testing.assert_close(u, first / first.norm())
        assert abs(float(u.norm()) - 1) < 1e-6
    b = ds.basis(S2)
    torch.testing.assert_close(b @ b.T, torch.eye(3), atol=1e-5, rtol=0)
    assert ds.basis(S0).shape == (1, D)
    with pytest.raises(KeyError, match=rf"no vector for site blocks.7.*{S0}"):
        ds.vector("blocks.7.hook_resid_post")


def test_unit_refuses_zero_vector():
    ds = DirectionSet({S0: torch.zeros(D), S1: torch.stack([torch.zeros(D), torch.ones(D)])})
    with pytest.raises(DirectionFileError, match="zero vector"):
        ds.unit(S0)
    with pytest.raises(DirectionFileError, match="zero vector"):
        ds.unit(S1)
    with pytest.raises(DirectionFileError, match=S0):
        ds.basis(S0)


def test_cosine():
    a = make_set(0)
    assert a.cosine(a) == pytest.approx({s: 1.0 for s in a.sites})
    g = torch.Generator().manual_seed(5)
    v0 = torch.randn(D, generator=g)
    b = DirectionSet({S0: -3 * a.vector(S0), S1: v0, "blocks.9.hook_resid_post": v0})
    cos = a.cosine(b)
    assert set(cos) == {S0, S1}
    assert cos[S0] == pytest.approx(-1.0, abs=1e-6)
    want = float(a.vector(S1) @ v0 / (a.vector(S1).norm() * v0.norm()))
    assert cos[S1] == pytest.approx(want, abs=1e-6)
    with pytest.raises(DirectionFileError, match="share no site"):
        a.cosine(DirectionSet({"blocks.9.hook_resid_post": v0}))


def test_best_site_and_subset():
    ds = make_set()
    assert ds.best_site() == S1
    assert ds.best_site("norm") == S0
    with pytest.raises(DirectionFileError, match="no site has the statistic 'd'"):
        ds.best_site("d")
    nan = make_set(stats={S0: {"auroc": float("nan")}, S1: {"auroc": 0.6}})
    assert nan.best_site() == S1
    sub = ds.subset([S0, S2])
    assert sub.sites == [S0, S2] and set(sub.metadata["stats"]) == {S0, S2}
    assert S1 in ds and S1 not in sub
    assert torch.equal(sub.vector(S2), ds.vector(S2))
