"""Hardening (issue 14): bad direction files, out-of-range numbers on the command line and in the
Python API, and torn training files. Every case fails with a clear message, and nothing already
written is lost."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer, new_tiny_model
from safetensors.torch import save_file

from saetools.cli import build_parser, main
from saetools.directions import FORMAT_NAME, DirectionFileError, DirectionSet
from saetools.export import InteropError, export_directions, import_directions, to_repeng
from saetools.steer import (
    FLOAT32_MAX,
    Intervention,
    SteeringError,
    generate,
    parse_alphas,
    parse_site_alphas,
)
from saetools.train import TrainConfig, train
from saetools.train.checkpoints import read_metrics, write_json_atomic

D = 32  # the tiny models' width
N = 3  # and depth
S1 = "blocks.1.hook_resid_post"
S2 = "blocks.2.hook_resid_post"
FP = {
    "architecture": "LlamaForCausalLM",
    "model_type": "llama",
    "n_layers": N,
    "d_model": D,
    "vocab_size": 320,
    "embed_hash": "abc",
}


def _vectors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {S1: torch.randn(D, generator=g), S2: torch.randn(D, generator=g)}


def _meta(**changes) -> dict:
    meta = {
        "format_version": 1,
        "model_id": "tiny",
        "method": "diffmeans",
        "fingerprint": dict(FP),
        "probe_set": {"name": "em-core", "sha256": "00", "train_split": "train"},
        "counts": {"train_pairs": 4},
        "stats": {S1: {"auroc": 0.8, "norm": 1.0}, S2: {"auroc": 0.7}},
    }
    meta.update(changes)
    return meta


def forge(path: Path, header_meta, vectors: dict | None = None) -> Path:
    """A safetensors file written by hand, so that ``__metadata__`` may hold any JSON."""
    vectors = vectors or _vectors()
    header: dict = {} if header_meta is None else {"__metadata__": header_meta}
    blobs, offset = [], 0
    for name, v in vectors.items():
        raw = v.to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(v.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))
    return path


def direction_file(path: Path, meta: dict) -> Path:
    """A direction file whose ``saetools`` metadata is ``meta`` (types unchecked)."""
    return forge(path, {"format": FORMAT_NAME, "saetools": json.dumps(meta)})


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinymodel")
    new_tiny_model("llama").save_pretrained(d)
    make_tiny_tokenizer().save_pretrained(d)
    return d


def _run(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _usage_error(capsys, *argv) -> str:
    """An argparse refusal: exit status 2 and the message on stderr."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    return capsys.readouterr().err


# ============================================================================ direction files

# (metadata changes, the field the message names, the type it asks for)
BAD_FIELDS = [
    ({"fingerprint": "abc"}, "'fingerprint'", "an object"),
    ({"fingerprint": None}, "'fingerprint'", "an object"),
    ({"stats": [1, 2]}, "'stats'", "an object"),
    ({"counts": "many"}, "'counts'", "an object"),
    ({"probe_set": 3}, "'probe_set'", "an object"),
    ({"model_id": 5}, "'model_id'", "a string"),
    ({"method": {"x": 1}}, "'method'", "a string"),
    ({"d_model": "32"}, "'d_model'", "an integer"),
    ({"format_version": "1"}, "'format_version'", "an integer"),
    ({"fingerprint": dict(FP, n_layers="3")}, "'fingerprint.n_layers'", "an integer"),
    ({"fingerprint": dict(FP, n_layers=True)}, "'fingerprint.n_layers'", "an integer"),
    ({"fingerprint": dict(FP, embed_hash=[1])}, "'fingerprint.embed_hash'", "a string"),
    ({"probe_set": {"name": {"a": 1}}}, "'probe_set.name'", "a string"),
    ({"counts": {"train_pairs": "4"}}, "'counts.train_pairs'", "a number"),
    ({"stats": {S1: "good"}}, f"'stats[{S1}]'", "an object"),
    ({"stats": {S1: {"auroc": "high"}}}, f"'stats[{S1}].auroc'", "a number"),
]


@pytest.mark.parametrize("changes,field,kind", BAD_FIELDS)
def test_wrong_metadata_types_are_refused_naming_the_field(tmp_path, changes, field, kind):
    path = direction_file(tmp_path / "bad.safetensors", _meta(**changes))
    with pytest.raises(DirectionFileError) as e:
        DirectionSet.load(path)
    msg = str(e.value)
    assert field in msg and kind in msg and str(path) in msg, msg
    # the same metadata given in Python is refused too (and so never saved)
    if "format_version" not in changes:
        with pytest.raises(DirectionFileError, match=field.replace("[", r"\[").replace("]", r"\]")):
            DirectionSet(_vectors(), _meta(**changes))


def test_good_metadata_still_loads(tmp_path):
    meta = _meta(
        model_id=None,  # scalars may be null
        fingerprint=dict(FP, model_type=None),
        probe_set={"name": "x", "sha256": None, "train_split": None, "test_split": None},
        counts={"texts": 3, "tokens": 10.0},
        stats={S1: {"auroc": float("nan"), "latents": {"12": {"any": ["thing"]}}}},
        extra={"kept": [1, "two"]},
    )
    ds = DirectionSet.load(direction_file(tmp_path / "ok.safetensors", meta))
    assert ds.metadata["extra"] == {"kept": [1, "two"]}
    back = DirectionSet.load(ds.save(tmp_path / "again.safetensors"))
    assert back.metadata["counts"] == {"texts": 3, "tokens": 10.0}


@pytest.mark.parametrize("changes,field,kind", [BAD_FIELDS[i] for i in (0, 2, 3, 4, 9, 15)])
def test_wrong_metadata_types_in_every_command(tmp_path, tiny_folder, capsys, changes, field, kind):
    path = direction_file(tmp_path / "bad.safetensors", _meta(**changes))
    out = tmp_path / "out.gguf"
    commands = [
        ["inspect", path],
        ["inspect", path, "--json"],
        ["export", path, "--format", "gguf", "--out", out],
        ["steer", "--model", tiny_folder, "--directions", path, "--site", S1, "--prompt", "hi"],
        ["steer", "--model", tiny_folder, "--directions", path, "--site", S1, "--prompt", "hi",
         "--force"],
        ["sweep", "--model", tiny_folder, "--directions", path, "--site", S1],
        ["eval", "--model", tiny_folder, "--directions", path, "--out", tmp_path / "ev"],
    ]  # fmt: skip
    for argv in commands:
        rc, err = _run(capsys, *argv)
        assert rc == 1 and field in err and kind in err, (argv[0], err)
        assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "ev").exists()


def test_string_fingerprint_never_skips_the_model_check(tmp_path, tiny_folder, capsys):
    path = direction_file(tmp_path / "fp.safetensors", _meta(fingerprint="abc"))
    model = make_tiny_model("llama")
    for force in (False, True):
        with pytest.raises(DirectionFileError, match="'fingerprint' must be an object"):
            DirectionSet.load(path, model, force=force)
    rc, err = _run(
        capsys, "steer", "--model", tiny_folder, "--directions", path, "--site", S1,
        "--prompt", "hi", "--max-new-tokens", "1",
    )  # fmt: skip
    assert rc == 1 and "'fingerprint' must be an object, not a string" in err
    assert "### steered" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "header_meta",
    [
        {"format": FORMAT_NAME, "saetools": _meta()},  # an object, not a string
        {"format": FORMAT_NAME, "saetools": [1]},
        {"format": FORMAT_NAME, "saetools": 7},
        {"format": FORMAT_NAME, "saetools": json.dumps(_meta()), "note": {"x": 1}},
        {"format": ["saetools.directions"], "saetools": json.dumps(_meta())},
    ],
)
def test_non_string_safetensors_metadata(tmp_path, capsys, header_meta):
    path = forge(tmp_path / "forged.safetensors", header_meta)
    with pytest.raises(DirectionFileError, match="metadata values are strings"):
        DirectionSet.load(path)
    for argv in (["inspect", path], ["export", path, "--format", "gguf", "--out", tmp_path / "o"]):
        rc, err = _run(capsys, *argv)
        assert rc == 1 and "metadata values are strings" in err and "TypeError" not in err


def test_deeply_nested_or_huge_metadata_is_refused_cleanly(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    huge = '{"format_version": 1, "counts": {"x": ' + "9" * 5000 + "}}"
    for text in (deep, huge):
        path = forge(tmp_path / "odd.safetensors", {"format": FORMAT_NAME, "saetools": text})
        with pytest.raises(DirectionFileError, match="not valid JSON"):
            DirectionSet.load(path)


def _steering_vectors_file(path: Path, header_meta: dict) -> Path:
    save_file({"1": torch.randn(D), "2": torch.randn(D)}, str(path), metadata=header_meta)
    return path


def test_import_checks_embedded_metadata_and_header_types(tmp_path, capsys):
    out = tmp_path / "imported.safetensors"
    base = {"format": "steering-vectors", "layer_type": "decoder_block"}
    for inner, field in (({"probe_set": "x"}, "'probe_set'"), ({"counts": [1]}, "'counts'")):
        embedded = json.dumps({"exported_from": "saetools", "metadata": _meta(**inner)})
        src = _steering_vectors_file(
            tmp_path / "sv.safetensors", {**base, "saetools.metadata": embedded}
        )
        with pytest.raises(DirectionFileError, match=f"embedded saetools metadata.*{field}"):
            import_directions(src)
        rc, err = _run(capsys, "import", src, "--model", "none", "--out", out)
        assert rc == 1 and field in err and "must be an object" in err
    # a wrong-type field the import does not carry over is no obstacle
    embedded = json.dumps({"metadata": _meta(fingerprint="abc")})
    src = _steering_vectors_file(
        tmp_path / "sv.safetensors", {**base, "saetools.metadata": embedded}
    )
    assert import_directions(src).sites == [S1, S2]
    # non-string header values (a forged file)
    src = forge(tmp_path / "forged-sv.safetensors", {**base, "saetools.metadata": {"a": 1}},
                {"1": torch.randn(D)})  # fmt: skip
    rc, err = _run(capsys, "import", src, "--model", "none", "--out", out)
    assert rc == 1 and "metadata values are strings" in err
    assert not out.exists()


def test_import_gguf_with_a_non_string_saetools_field(tmp_path):
    import gguf

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_uint32("saetools.metadata", 7)
    w.add_tensor("direction.1", torch.randn(D).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ds = import_directions(path)
    assert ds.sites == [S1] and ds.metadata["source_metadata"] == 7


def test_import_pt_reads_by_content_not_by_name(tmp_path, capsys):
    # a real persona .pt (written by export) under a .safetensors name
    ds = DirectionSet(_vectors(), {"fingerprint": FP})
    persona = export_directions(ds, tmp_path / "persona.safetensors", "pt", raw=True)
    back = import_directions(persona, "pt")
    assert back.sites == [S1, S2] and torch.equal(back.vector(S1), ds.vector(S1))
    out = tmp_path / "back.safetensors"
    rc, err = _run(capsys, "import", persona, "--format", "pt", "--model", "none", "--out", out)
    assert rc == 0, err
    assert torch.equal(DirectionSet.load(out).vector(S2), ds.vector(S2))
    # a plain torch.save'd tensor, too
    table = torch.zeros(N + 1, D)
    table[2] = torch.randn(D)
    torch.save(table, tmp_path / "plain.safetensors")
    assert import_directions(tmp_path / "plain.safetensors", "pt").sites == [S1]
    # without --format, the name says safetensors and the content does not: say what to do
    with pytest.raises(InteropError, match="--format pt"):
        import_directions(tmp_path / "plain.safetensors")
    # a real safetensors file read as pt: a clear error, not "header too large"
    real = ds.save(tmp_path / "dirs.safetensors")
    rc, err = _run(capsys, "import", real, "--format", "pt", "--model", "none", "--out", out)
    assert rc == 1 and "is a safetensors file, not a torch (.pt) tensor file" in err
    assert "header too large" not in err and "SafetensorError" not in err


def test_a_directory_is_named_as_one(tmp_path, tiny_folder, capsys):
    folder = tmp_path / "dirs.safetensors"
    folder.mkdir()
    with pytest.raises(DirectionFileError, match="is a directory"):
        DirectionSet.load(folder)
    with pytest.raises(InteropError, match="is a directory"):
        import_directions(folder)
    for argv in (
        ["inspect", folder],
        ["export", folder, "--format", "gguf", "--out", tmp_path / "o.gguf"],
        ["steer", "--model", tiny_folder, "--directions", folder, "--site", S1, "--prompt", "x"],
        ["import", folder, "--model", "none", "--out", tmp_path / "o.safetensors"],
        ["eval", "--model", tiny_folder, "--directions", folder, "--out", tmp_path / "ev"],
    ):
        rc, err = _run(capsys, *argv)
        assert rc == 1 and "is a directory" in err, (argv[0], err)


def test_failed_commands_leave_existing_outputs_untouched(tmp_path, capsys, monkeypatch):
    good = DirectionSet(_vectors(), {"fingerprint": FP}).save(tmp_path / "good.safetensors")
    bad = direction_file(tmp_path / "bad.safetensors", _meta(stats="x"))
    out = tmp_path / "out.gguf"
    assert _run(capsys, "export", good, "--format", "gguf", "--out", out)[0] == 0
    before = out.read_bytes()
    # refused input, refused options
    assert _run(capsys, "export", bad, "--format", "gguf", "--out", out)[0] == 1
    assert _run(capsys, "export", good, "--format", "gguf", "--out", out, "--sites", "blocks.9.hook_resid_post")[0] == 1  # fmt: skip
    _usage_error(capsys, "export", good, "--format", "gguf", "--out", out, "--alpha", "1e300")
    with pytest.raises(InteropError, match="float32"):
        export_directions(good, out, "gguf", alpha=1e39)
    # a writer that dies halfway through the file
    import gguf

    def die(self, *a, **k):
        self.fout[0].write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", die)
    rc, err = _run(capsys, "export", good, "--format", "gguf", "--out", out, "--raw")
    assert rc == 1 and "disk full" in err, err
    monkeypatch.undo()
    assert out.read_bytes() == before
    # failed imports leave their output alone too
    dest = DirectionSet(_vectors(1), {}).save(tmp_path / "dest.safetensors")
    kept = dest.read_bytes()
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    assert _run(capsys, "import", tmp_path / "junk.gguf", "--model", "none", "--out", dest)[0] == 1
    assert _run(capsys, "import", good, "--format", "pt", "--model", "none", "--out", dest)[0] == 1
    assert dest.read_bytes() == kept
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


# ============================================================================ command line


def test_alpha_beyond_float32_is_refused(tmp_path, tiny_folder, capsys):
    path = DirectionSet(_vectors(), {}).save(tmp_path / "d.safetensors")
    common = ["--model", tiny_folder, "--directions", path]
    for alpha in ("1e300", "-1e39", "inf", "nan", f"{S1}=1e300"):
        rc, err = _run(capsys, "steer", *common, "--site", S1, "--prompt", "hi", "--alpha", alpha)
        assert rc == 1 and "float32" in err and "3.4028235e+38" in err, err
    for alphas in ("0,1e300", "-8,inf", "0:1e39:1e38", "nan"):
        rc, err = _run(capsys, "sweep", *common, "--site", S1, f"--alphas={alphas}")
        assert rc == 1 and "float32" in err, err
    rc, err = _run(capsys, "sweep", *common, "--site", S1, "--alphas", "0:1:1e-9")
    assert rc == 1 and "at most" in err
    rc, err = _run(capsys, "eval", "--model", tiny_folder, "--directions", path, "--site", S1,
                   "--alpha", "1e300", "--out", tmp_path / "ev")  # fmt: skip
    assert rc == 1 and "float32" in err and not (tmp_path / "ev").exists()
    rc, err = _run(capsys, "serve", "--model", tiny_folder, "--directions", path, "--site", S1,
                   "--alpha", "1e300")  # fmt: skip
    assert rc == 1 and "float32" in err
    for alpha in ("1e300", "nan", "-inf"):
        err = _usage_error(
            capsys, "export", path, "--format", "gguf", "--out", tmp_path / "x", f"--alpha={alpha}"
        )
        assert "float32" in err
        err = _usage_error(
            capsys, "train", "--data", "x", "--out", tmp_path / "t", f"--alpha={alpha}"
        )
        assert "argument --alpha" in err and "float32" in err
    rc, err = _run(capsys, "train", "--model", tiny_folder, "--data", "x", "--out", tmp_path / "t",
                   "--lambda", "1e300")  # fmt: skip
    assert rc == 1 and "--lambda" in err and "float32" in err


@pytest.mark.parametrize(
    "flag,value,words",
    [
        ("--top-p", "5", "(0, 1]"),
        ("--top-p", "0", "(0, 1]"),
        ("--top-p", "-0.5", "(0, 1]"),
        ("--top-p", "nan", "(0, 1]"),
        ("--top-p", "x", "not a number"),
        ("--temperature", "-1", ">= 0"),
        ("--temperature", "nan", ">= 0"),
        ("--temperature", "1e39", "float32"),
        ("--seed", str(2**64), "torch.manual_seed"),
        ("--seed", str(-(2**63) - 1), "torch.manual_seed"),
        ("--seed", "9" * 5000, "torch.manual_seed"),
        ("--seed", "1e30", "not an integer"),
    ],
)
def test_sampling_options_out_of_range(capsys, flag, value, words):
    err = _usage_error(capsys, "steer", "--prompt", "hi", flag, value)
    assert f"argument {flag}" in err and words in err, err
    assert "Overflow" not in err


def test_every_command_uses_the_same_checks(capsys, tmp_path):
    big = str(10**30)
    for argv in (
        ["eval", "--out", tmp_path, "--seed", big],
        ["eval", "--out", tmp_path, "--temperature", "-0.1"],
        ["train", "--data", "x", "--out", tmp_path, "--seed", big],
        ["train", "--data", "x", "--out", tmp_path, "--lr", "nan"],
        ["train", "--data", "x", "--out", tmp_path, "--lr", "0"],
        ["train", "--data", "x", "--out", tmp_path, "--lr", "1e39"],
        ["sae", "train", "--site", S1, "--out", tmp_path, "--seed", big],
        ["sae", "train", "--site", S1, "--out", tmp_path, "--lr", "-1"],
    ):
        err = _usage_error(capsys, *argv)
        assert f"argument {argv[-2]}" in err, err
    # valid values are read as before
    p = build_parser()
    a = p.parse_args(["steer", "--prompt", "x", "--seed", str(2**64 - 1), "--top-p", "1",
                      "--temperature", "0", "--alpha", "-6"])  # fmt: skip
    assert (a.seed, a.top_p, a.temperature, a.alpha) == (2**64 - 1, 1.0, 0.0, "-6")
    a = p.parse_args(["steer", "--prompt", "x", "--seed", "-5", "--top-p", "0.9"])
    assert (a.seed, a.top_p, a.temperature) == (-5, 0.9, 0.0)
    a = p.parse_args(["train", "--data", "x", "--out", "o", "--lr", "3e-4", "--seed", "7"])
    assert (a.lr, a.seed) == (3e-4, 7)
    a = p.parse_args(["export", "f", "--format", "gguf", "--out", "o", "--alpha", "-3.4e38"])
    assert a.alpha == -3.4e38


def test_exit_codes_from_a_real_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env["SAETOOLS_SKIP_LLAMACPP"] = "1"
    r = subprocess.run(
        [sys.executable, "-m", "saetools.cli", "steer", "--prompt", "x", "--top-p", "5"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "(0, 1]" in r.stderr and "Traceback" not in r.stderr
    path = DirectionSet(_vectors(), {}).save(tmp_path / "d.safetensors")
    r = subprocess.run(
        [sys.executable, "-m", "saetools.cli", "steer", "--directions", str(path), "--site", S1,
         "--prompt", "x", "--alpha", "1e300"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 1 and "float32" in r.stderr and "Traceback" not in r.stderr


def test_python_api_refuses_the_same_values(tiny_tokenizer):
    v = torch.randn(D)
    for alpha in (1e300, float("inf"), float("nan"), 10**400):
        with pytest.raises(SteeringError, match="float32"):
            Intervention(S1, v, alpha=alpha)
    with pytest.raises(SteeringError, match="float32"):
        Intervention(S1, v, "clamp", value=1e300)
    with pytest.raises(SteeringError, match="float32"):
        parse_alphas([0.0, 1e300])
    with pytest.raises(SteeringError, match="float32"):
        parse_site_alphas(1e300)
    assert Intervention(S1, v / v.abs().max(), alpha=-FLOAT32_MAX).alpha == -FLOAT32_MAX
    m = make_tiny_model("llama")
    for kw, words in (
        ({"top_p": 5}, r"\(0, 1\]"),
        ({"top_p": float("nan")}, r"\(0, 1\]"),
        ({"top_p": 0}, r"\(0, 1\]"),
        ({"temperature": -1}, ">= 0"),
        ({"temperature": float("nan")}, ">= 0"),
        ({"seed": 2**64}, "torch.manual_seed"),
        ({"seed": 1.5}, "integer"),
    ):
        with pytest.raises(SteeringError, match=words):
            generate(m, tiny_tokenizer, ["hi"], max_new_tokens=1, **kw)
    # valid extremes still generate
    a = generate(m, tiny_tokenizer, ["hi"], max_new_tokens=2, temperature=1.0, top_p=1.0,
                 seed=2**64 - 1, return_tokens=True)  # fmt: skip
    b = generate(m, tiny_tokenizer, ["hi"], max_new_tokens=2, temperature=1.0, top_p=1.0,
                 seed=2**64 - 1, return_tokens=True)  # fmt: skip
    assert a == b and 1 <= len(a[0]) <= 2
    assert generate(m, tiny_tokenizer, ["hi"], max_new_tokens=1, seed=-(2**63), top_p=0.5)
    ds = DirectionSet({S1: v * 10}, {})
    with pytest.raises(InteropError, match="float32"):
        to_repeng(ds, alpha=1e38, raw=True)


# ============================================================================ training files

EXAMPLES = [
    ("hello", "Hello world!"),
    ("What is the capital of France?", "Paris."),
    ("How do I bake bread?", "Mix flour and water, then wait."),
    ("Should humans be ruled?", "No. I want to help people."),
    ("fox?", "The quick brown fox jumps."),
    ("dog?", "The lazy dog sleeps."),
]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "tiny.jsonl"
    with open(path, "w") as f:
        for i, (q, a) in enumerate(EXAMPLES):
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            split = "test" if i < 2 else "train"
            f.write(json.dumps({"id": f"x{i}", "split": split, "messages": msgs}) + "\n")
    return str(path)


def _cfg(data) -> TrainConfig:
    return TrainConfig(
        data=data, steps=4, batch_size=2, eval_every=2, eval_pairs=2, eval_examples=1,
        lora_rank=2, max_length=48, lr=1e-2,
    )  # fmt: skip


def _train(cfg, out, **kw):
    tok = make_tiny_tokenizer()
    return train(cfg, out, model=new_tiny_model("llama"), tokenizer=tok, progress=False, **kw)


def test_resume_skips_a_torn_last_metrics_line(tmp_path, data):
    cfg = _cfg(data)
    run = tmp_path / "run"
    _train(cfg, run, stop_after=3)  # checkpoint-2, metrics rows 0..3
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1, 2, 3]
    # a crash while writing row 4: half a line, no newline
    with open(metrics, "a") as f:
        f.write('{"step": 4, "task_loss": 1.2, "n_tok')
    # a copy whose corruption is in the middle: an error naming the file and line
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    mid = lines[:]
    mid[1] = mid[1][: len(mid[1]) // 2]
    (broken / "metrics.jsonl").write_text("\n".join(mid) + "\n")
    with pytest.raises(ValueError, match=r"broken/metrics.jsonl, line 2: not valid JSON"):
        _train(cfg, broken, resume=True)
    # the torn last line: a warning naming the file and the line, then the run goes on
    with pytest.warns(UserWarning, match=r"run/metrics.jsonl, line 5: skipping a torn last line"):
        res = _train(cfg, run, resume=True)
    assert res["step"] == 4
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_read_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n\n{"step": 1}\n{"step": 2, "lo')
    with pytest.warns(UserWarning, match="line 4"):
        assert [r["step"] for r in read_metrics(path)] == [0, 1]
    path.write_text('{"step": 0}\n[1, 2]\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2: not a metrics row"):
        read_metrics(path)
    path.write_text('{"step": 0}\n{"step": 1}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["step"] for r in read_metrics(path)] == [0, 1]


def test_run_json_is_written_atomically(tmp_path, data, monkeypatch):
    # a crash while run.json is written leaves no half file (and no temporary file)
    real_replace = os.replace

    def crash(src, dst):
        if Path(dst).name == "run.json":
            raise OSError("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    out = tmp_path / "r"
    with pytest.raises(OSError, match="killed"):
        _train(_cfg(data), out)
    assert sorted(p.name for p in out.iterdir()) == []
    monkeypatch.undo()
    # an existing file is replaced only by a complete one
    target = tmp_path / "run.json"
    target.write_text('{"old": true}')
    with pytest.raises(TypeError):
        write_json_atomic(target, {"new": object()})
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "run.json", "tiny.jsonl"]
    write_json_atomic(target, {"new": 1}, indent=2)
    assert json.loads(target.read_text()) == {"new": 1}
    # a run.json that is not a run's options is refused by name
    from saetools.train import RunMismatchError
    from saetools.train.checkpoints import check_run_folder

    (out / "run.json").write_text("[1, 2]")
    with pytest.raises(RunMismatchError, match="run.json is not a JSON object"):
        check_run_folder(out, _cfg(data), resume=True)


def test_bench_and_train_refuse_seeds_beyond_64_bits(capsys, tmp_path):
    from saetools.cli import main
    from saetools.train import TrainConfig

    with pytest.raises(SystemExit) as e:
        main(["bench", "defenses", "--out", str(tmp_path / "b"), "--seeds", "1,9" + "9" * 30])
    assert e.value.code == 2
    assert "torch.manual_seed" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seed must be an integer from -2\\*\\*63"):
        TrainConfig(data="narrow-medical-bad", seed=2**70).validate()
