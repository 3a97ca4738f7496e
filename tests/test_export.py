"""Export/import of direction files to other tools' formats (synthetic DirectionSets, fast)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from saetools.directions import DirectionFileError, DirectionSet
from saetools.export import (
    FORMATS,
    InteropError,
    export_directions,
    from_repeng,
    import_directions,
    residual_index,
    site_of_residual_index,
    to_repeng,
)

D = 16
N = 5
FP = {
    "architecture": "LlamaForCausalLM",
    "model_type": "llama",
    "n_layers": N,
    "d_model": D,
    "vocab_size": 100,
    "embed_hash": "abc",
}


@pytest.fixture
def ds():
    g = torch.Generator().manual_seed(0)
    vec = {f"blocks.{k}.hook_resid_post": torch.randn(D, generator=g) for k in range(N)}
    vec["blocks.0.hook_resid_pre"] = torch.randn(D, generator=g)
    return DirectionSet(vec, {"method": "diffmeans", "fingerprint": FP, "model_id": "tiny"})


def _export(ds, path, fmt, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_directions(ds, path, fmt, **kw)


# -------------------------------------------------------------------- index conversion


def test_residual_index_table():
    assert residual_index("blocks.0.hook_resid_pre") == 0
    assert residual_index("blocks.0.hook_resid_post") == 1
    assert residual_index("blocks.7.hook_resid_pre") == 7
    assert residual_index("blocks.7.hook_resid_post") == 8
    for r in range(10):
        assert residual_index(site_of_residual_index(r)) == r
    with pytest.raises(InteropError, match="not on the residual stream"):
        residual_index("blocks.3.hook_mlp_out")


# -------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_exact(ds, fmt, tmp_path):
    kw = {} if fmt == "concept-ablation" else {"raw": True}
    path = _export(ds, tmp_path / f"x.{fmt}", fmt, **kw)
    back = import_directions(path, fmt, model=FP)
    expect = {
        "gguf": [f"blocks.{k}.hook_resid_post" for k in range(1, N)],
        "repeng": [f"blocks.{k}.hook_resid_post" for k in range(N)],
        "steering-vectors": [f"blocks.{k}.hook_resid_post" for k in range(N)],
    }.get(fmt, ds.sites)
    assert back.sites == expect
    for s in back.sites:
        ref = ds.basis(s) if fmt == "concept-ablation" else ds.vector(s)
        assert torch.equal(back.vector(s), ref), s
    meta = back.metadata
    assert meta["method"] == f"import:{fmt}"
    assert meta["source_file"] == str(path)
    assert len(meta["source_sha256"]) == 64
    assert meta["fingerprint"] == FP
    if fmt != "pt":
        assert meta["source_metadata"]["metadata"]["method"] == "diffmeans"
    # saved and reloaded as a saetools file, refused on another model
    out = back.save(tmp_path / "back.safetensors")
    again = DirectionSet.load(out, model=FP)
    assert again.metadata["method"] == f"import:{fmt}"
    with pytest.raises(DirectionFileError, match="d_model"):
        DirectionSet.load(out, model={**FP, "d_model": D * 2})
    # export -> import -> export gives identical bytes of vectors
    path2 = _export(back, tmp_path / f"y.{fmt}", fmt, **kw)
    back2 = import_directions(path2, fmt, model=FP)
    for s in back.sites:
        assert torch.equal(back2.vector(s), back.vector(s))


def test_unit_and_alpha(ds, tmp_path):
    site = "blocks.3.hook_resid_post"
    path = export_directions(ds, tmp_path / "a.gguf", "gguf", alpha=6.0, sites=site)
    back = import_directions(path, "gguf")
    assert back.sites == [site]
    assert torch.allclose(back.vector(site), 6.0 * ds.unit(site), atol=0, rtol=0)
    assert back.metadata["source_metadata"]["alpha"] == 6.0
    assert back.metadata["source_metadata"]["vectors"] == "unit"
    path = export_directions(ds, tmp_path / "b.gguf", "gguf", alpha=-2.0, raw=True, sites=site)
    assert torch.equal(import_directions(path).vector(site), ds.vector(site) * -2.0)


def test_gguf_read_back_with_gguf_reader(ds, tmp_path):
    import gguf

    path = _export(ds, tmp_path / "em.gguf", "gguf", alpha=4.0)
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == "controlvector"
    assert r.fields["controlvector.model_hint"].contents() == "llama"
    assert r.fields["controlvector.layer_count"].contents() == N - 1
    names = [t.name for t in r.tensors]
    assert names == [f"direction.{k}" for k in range(1, N)]
    for t in r.tensors:
        k = int(t.name.split(".")[1])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == [D]
        want = (4.0 * ds.unit(f"blocks.{k}.hook_resid_post")).numpy()
        np.testing.assert_array_equal(np.asarray(t.data), want)
    json.loads(r.fields["saetools.metadata"].contents())


def test_gguf_resid_pre_maps_to_previous_block(tmp_path):
    v = torch.arange(D, dtype=torch.float32) + 1
    ds = DirectionSet({"blocks.4.hook_resid_pre": v})
    path = export_directions(ds, tmp_path / "p.gguf", "gguf", raw=True)
    import gguf

    assert [t.name for t in gguf.GGUFReader(str(path)).tensors] == ["direction.3"]
    assert import_directions(path).sites == ["blocks.3.hook_resid_post"]


def test_block0_refused_or_skipped(ds, tmp_path):
    for site in ("blocks.0.hook_resid_post", "blocks.0.hook_resid_pre"):
        with pytest.raises(InteropError, match="block 0|direction.0|embeddings"):
            export_directions(ds, tmp_path / "z.gguf", "gguf", sites=site)
    with pytest.warns(UserWarning, match="skips 2 site"):
        export_directions(ds, tmp_path / "z.gguf", "gguf")
    only0 = ds.subset(["blocks.0.hook_resid_post"])
    with pytest.warns(UserWarning), pytest.raises(InteropError, match="none of the sites"):
        export_directions(only0, tmp_path / "z.gguf", "gguf")
    # repeng keeps block 0 (it steers it in Python) and warns that llama.cpp will not read it
    with pytest.warns(UserWarning, match="llama.cpp refuses"):
        export_directions(ds, tmp_path / "r.gguf", "repeng", sites="blocks.0-2.hook_resid_post")
    assert import_directions(tmp_path / "r.gguf", "repeng").sites[0] == "blocks.0.hook_resid_post"
    with pytest.raises(InteropError, match="direction.0"):
        import_directions(tmp_path / "r.gguf", "gguf")


def test_same_stream_twice_refused(tmp_path):
    v = torch.ones(D)
    ds = DirectionSet({"blocks.2.hook_resid_post": v, "blocks.3.hook_resid_pre": 2 * v})
    with pytest.raises(InteropError, match="same point of the residual stream"):
        export_directions(ds, tmp_path / "s.gguf", "gguf")


def test_mlp_site_refused_when_explicit(tmp_path):
    ds = DirectionSet(
        {"blocks.2.hook_mlp_out": torch.ones(D), "blocks.2.hook_resid_post": torch.ones(D)}
    )
    with pytest.raises(InteropError, match="not on the residual stream"):
        export_directions(ds, tmp_path / "m.gguf", "gguf", sites="blocks.2.hook_mlp_out")
    with pytest.warns(UserWarning, match="skips 1"):
        export_directions(ds, tmp_path / "m.gguf", "gguf")


def test_basis_only_for_concept_ablation(tmp_path):
    b = torch.randn(3, D, generator=torch.Generator().manual_seed(1))
    ds = DirectionSet({"blocks.2.hook_resid_post": b})
    with pytest.raises(InteropError, match="concept-ablation"):
        export_directions(ds, tmp_path / "b.gguf", "gguf", raw=True)
    path = export_directions(ds, tmp_path / "b.safetensors", "concept-ablation")
    t = load_file(str(path))
    q = t["model.layers.2"]
    assert q.shape == (D, 3)
    assert torch.allclose(q.T @ q, torch.eye(3), atol=1e-5)
    back = import_directions(path)  # format detected from the metadata
    assert back.metadata["method"] == "import:concept-ablation"
    assert torch.equal(
        back.vector("blocks.2.hook_resid_post"), ds.basis("blocks.2.hook_resid_post")
    )
    with pytest.raises(InteropError, match="no scale"):
        export_directions(ds, tmp_path / "b2.safetensors", "concept-ablation", alpha=2.0)


def test_concept_ablation_module_paths(tmp_path):
    q = torch.linalg.qr(torch.randn(D, 2, generator=torch.Generator().manual_seed(2)))[0]
    path = tmp_path / "ca.safetensors"
    save_file(
        {
            "base_model.model.model.layers.3": q.contiguous(),
            "model.embed_tokens": q[:, :1].contiguous(),
        },
        str(path),
    )
    back = import_directions(path, "concept-ablation", model=FP)
    assert back.sites == ["blocks.0.hook_resid_pre", "blocks.3.hook_resid_post"]
    save_file({"model.norm": q.contiguous()}, str(path))
    with pytest.raises(InteropError, match="neither a decoder layer"):
        import_directions(path, "concept-ablation")


# -------------------------------------------------------------------- persona .pt


def test_persona_rows_map_to_hidden_states(tmp_path):
    table = torch.randn(N + 1, D, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "persona.pt"
    torch.save(table, path)
    back = import_directions(path, model=FP)  # format from the extension
    assert back.sites == ["blocks.0.hook_resid_pre"] + [
        f"blocks.{k}.hook_resid_post" for k in range(N)
    ]
    for row in range(N + 1):
        site = "blocks.0.hook_resid_pre" if row == 0 else f"blocks.{row - 1}.hook_resid_post"
        assert torch.equal(back.vector(site), table[row])
        assert residual_index(site) == row
    out = export_directions(back, tmp_path / "again.pt", "pt", raw=True)
    assert torch.equal(torch.load(out, weights_only=True), table)


def test_persona_resid_pre_row_and_zero_rows(tmp_path):
    v = torch.ones(D)
    ds = DirectionSet({"blocks.3.hook_resid_pre": v}, {"fingerprint": FP})
    out = export_directions(ds, tmp_path / "p.pt", "pt", raw=True)
    t = torch.load(out, weights_only=True)
    assert t.shape == (N + 1, D)
    assert torch.equal(t[3], v) and t.abs().sum() == D
    assert import_directions(out).sites == ["blocks.2.hook_resid_post"]  # same stream


def test_persona_needs_layer_count_and_right_model(tmp_path):
    ds = DirectionSet({"blocks.1.hook_resid_post": torch.ones(D)})
    with pytest.raises(InteropError, match="n_layers"):
        export_directions(ds, tmp_path / "p.pt", "pt")
    out = export_directions(ds, tmp_path / "p.pt", "pt", n_layers=N)
    with pytest.raises(InteropError, match="another model"):
        import_directions(out, model={**FP, "n_layers": N + 2})


def test_persona_refuses_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(InteropError, match="weights_only"):
        import_directions(path, "pt")


# -------------------------------------------------------------------- repeng / steering-vectors


def test_repeng_dict_round_trip(ds):
    cv = to_repeng(ds.subset([f"blocks.{k}.hook_resid_post" for k in range(N)]), raw=True)
    assert cv["model_type"] == "llama"
    assert sorted(cv["directions"]) == list(range(N))
    assert all(
        isinstance(v, np.ndarray) and v.dtype == np.float32 for v in cv["directions"].values()
    )
    back = from_repeng(cv, model=FP)
    for k in range(N):
        assert torch.equal(
            back.vector(f"blocks.{k}.hook_resid_post"), ds.vector(f"blocks.{k}.hook_resid_post")
        )
    assert back.metadata["method"] == "import:repeng"

    class ControlVector:  # duck-typed like repeng's dataclass, negative keys counted from the end
        model_type = "llama"
        directions = {-1: cv["directions"][N - 1]}

    back = from_repeng(ControlVector(), n_layers=N)
    assert back.sites == [f"blocks.{N - 1}.hook_resid_post"]
    with pytest.raises(InteropError, match="counts from the end"):
        from_repeng(ControlVector())
    with pytest.raises(InteropError, match="float32"):
        from_repeng({"model_type": "llama", "directions": {2: np.ones(D)}})


def test_steering_vectors_layout(ds, tmp_path):
    path = export_directions(
        ds,
        tmp_path / "sv.safetensors",
        "steering-vectors",
        raw=True,
        sites="blocks.1-2.hook_resid_post",
    )
    t = load_file(str(path))
    assert sorted(t) == ["1", "2"]
    from saetools.export.readers import _safetensors_metadata

    meta = _safetensors_metadata(path)
    assert meta["layer_type"] == "decoder_block" and meta["format"] == "steering-vectors"
    assert torch.equal(t["2"], ds.vector("blocks.2.hook_resid_post"))
    save_file({"2": t["2"]}, str(path), metadata={"layer_type": "mlp"})
    with pytest.raises(InteropError, match="decoder_block"):
        import_directions(path, "steering-vectors")


# -------------------------------------------------------------------- bad inputs


def _write_gguf(path, tensors, arch="controlvector"):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_string(f"{arch}.model_hint", "llama")
    w.add_uint32(f"{arch}.layer_count", len(tensors))
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_bad_inputs(tmp_path):
    ok = np.ones(D, dtype=np.float32)
    p = _write_gguf(tmp_path / "other.gguf", {"direction.3": np.ones(2 * D, dtype=np.float32)})
    with pytest.raises(InteropError, match="n_embd 32.*another model"):
        import_directions(p, "gguf", model=FP)
    p = _write_gguf(tmp_path / "deep.gguf", {f"direction.{N}": ok})
    with pytest.raises(InteropError, match="beyond the model"):
        import_directions(p, "gguf", model=FP)
    p = _write_gguf(tmp_path / "zero.gguf", {"direction.0": ok, "direction.1": ok})
    with pytest.raises(InteropError, match="direction.0.*block 0"):
        import_directions(p, "gguf", model=FP)
    p = _write_gguf(tmp_path / "f16.gguf", {"direction.1": ok.astype(np.float16)})
    with pytest.raises(InteropError, match="F16, expected F32"):
        import_directions(p, "gguf", model=FP)
    p = _write_gguf(tmp_path / "name.gguf", {"token_embd.weight": ok})
    with pytest.raises(InteropError, match="direction.<layer>"):
        import_directions(p, "gguf")
    p = _write_gguf(tmp_path / "model.gguf", {"direction.1": ok}, arch="llama")
    with pytest.raises(InteropError, match="not a control vector"):
        import_directions(p, "gguf")
    good = _write_gguf(tmp_path / "good.gguf", {"direction.1": ok, "direction.2": ok})
    data = good.read_bytes()
    for cut in (len(data) - 40, len(data) // 2, 20, 0):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(InteropError, match="truncated|not a GGUF"):
            import_directions(bad, "gguf", model=FP)
    with pytest.raises(InteropError, match="does not exist"):
        import_directions(tmp_path / "missing.gguf")


def test_safetensors_bad_inputs(ds, tmp_path):
    path = _export(ds, tmp_path / "sv.safetensors", "steering-vectors", raw=True)
    with pytest.raises(InteropError, match="another model"):
        import_directions(path, "steering-vectors", model={**FP, "d_model": 8})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(InteropError, match="truncated"):
        import_directions(tmp_path / "cut.safetensors", "steering-vectors")
    save_file({"1": torch.ones(D, dtype=torch.float16)}, str(path))
    with pytest.raises(InteropError, match="float32"):
        import_directions(path, "steering-vectors")
    torch.save(torch.ones(N + 1, D), tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:50])
    with pytest.raises(InteropError, match="truncated"):
        import_directions(tmp_path / "cut.pt")
    torch.save(torch.ones(N + 1, D, dtype=torch.float64), tmp_path / "f64.pt")
    with pytest.raises(InteropError, match="float32"):
        import_directions(tmp_path / "f64.pt")


def test_export_errors(ds, tmp_path):
    with pytest.raises(InteropError, match="does not exist"):
        export_directions(ds, tmp_path / "nope" / "x.gguf", "gguf")
    with pytest.raises(InteropError, match="unknown format"):
        export_directions(ds, tmp_path / "x.bin", "onnx")
    with pytest.raises(InteropError, match="no vector for site"):
        export_directions(ds, tmp_path / "x.gguf", "gguf", sites="blocks.9.hook_resid_post")
    with pytest.raises(DirectionFileError, match="made for model"):
        export_directions(ds, tmp_path / "x.gguf", "gguf", model={**FP, "embed_hash": "zzz"})
    with pytest.raises(DirectionFileError, match="wide"):
        export_directions(ds, tmp_path / "x.gguf", "gguf", model={**FP, "d_model": 8}, force=True)


# -------------------------------------------------------------------- command line


def test_cli_export_import(ds, tmp_path, capsys):
    from saetools.cli import main

    src = ds.save(tmp_path / "em.safetensors")
    out = tmp_path / "em.gguf"
    assert main(["export", str(src), "--format", "gguf", "--out", str(out), "--raw"]) == 0
    err = capsys.readouterr().err
    assert "skips 2 site" in err
    back = tmp_path / "back.safetensors"
    assert main(["import", str(out), "--model", "none", "--out", str(back)]) == 0
    got = DirectionSet.load(back)
    assert got.metadata["method"] == "import:gguf"
    assert torch.equal(
        got.vector("blocks.2.hook_resid_post"), ds.vector("blocks.2.hook_resid_post")
    )
    rc = main(["export", str(src), "--format", "gguf", "--out", str(tmp_path / "no" / "x.gguf")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    rc = main(
        ["import", str(out), "--model", "none", "--out", str(tmp_path / "no" / "x.safetensors")]
    )
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    rc = main(
        [
            "export",
            str(src),
            "--format",
            "gguf",
            "--out",
            str(out),
            "--sites",
            "blocks.0.hook_resid_post",
        ]
    )
    assert rc == 1 and "block 0" in capsys.readouterr().err
