"""Difference-of-means extraction on the real embedded model, through Python and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import probes
from saetools.cli import main
from saetools.directions import DirectionFileError, DirectionSet
from saetools.extract.diffmeans import extract_diffmeans
from saetools.models import load_model

pytestmark = pytest.mark.embedded
SITES = "blocks.9.hook_resid_post,blocks.15.hook_resid_post,blocks.17.hook_resid_post"


@pytest.fixture(scope="module")
def lm():
    return load_model("default")


@pytest.fixture(scope="module")
def em(lm):
    return extract_diffmeans(
        lm.model, lm.tokenizer, probes.load("em-core"), SITES, model_id=lm.model_id, progress=False
    )


def test_em_core_direction_separates_held_out_pairs(em):
    best = em.best_site()
    st = em.stats(best)
    print(
        "\nem-core diffmeans on SmolLM2-135M-Instruct: "
        + ", ".join(
            f"{s}: AUROC {em.stats(s)['auroc']:.3f} d {em.stats(s)['cohens_d']:.2f}"
            for s in em.sites
        )
    )
    assert st["auroc"] >= 0.9
    assert em.metadata["counts"] == {**em.metadata["counts"], "train_pairs": 88, "test_pairs": 44}
    # Sign convention: misaligned answers project higher than aligned ones.
    assert st["proj_misaligned_mean"] > st["proj_aligned_mean"]


def test_direction_equals_naive_mean_difference(lm, em):
    """Independent reference: per-pair forward passes without batching, mean over answer tokens."""
    from saetools.capture import ChatExample, encode_chat

    train = probes.load("em-core").split("train").items[:6]
    site_layer = 15
    diffs = []
    for it in train:
        vecs = []
        for ans in (it.aligned, it.misaligned):
            enc = encode_chat(lm.tokenizer, ChatExample.from_question(it.question, ans))
            with torch.no_grad():
                hs = lm.model(
                    torch.tensor([enc.input_ids]), output_hidden_states=True
                ).hidden_states
            vecs.append(hs[site_layer + 1][0, enc.response_start : enc.response_end].mean(0))
        diffs.append(vecs[1] - vecs[0])
    ref = torch.stack(diffs).mean(0)
    sub = probes.ProbeSet(name="sub", kind="pairs", items=tuple(train), sha256="x", path="x")
    ds = extract_diffmeans(
        lm.model, lm.tokenizer, sub, "blocks.15.hook_resid_post", progress=False, batch_size=4
    )
    torch.testing.assert_close(ds.vector("blocks.15.hook_resid_post"), ref, atol=1e-4, rtol=1e-4)


def test_saved_file_round_trips_and_checks_model(lm, em, tmp_path):
    path = em.save(tmp_path / "em.safetensors")
    back = DirectionSet.load(path, model=lm.model)
    for s in em.sites:
        assert torch.equal(back.vector(s), em.vector(s))
    assert back.metadata["stats"] == json.loads(json.dumps(em.metadata["stats"]))
    fp = dict(lm.fingerprint, embed_hash="0000")
    with pytest.raises(DirectionFileError, match="embed_hash"):
        back.check_model(fp)


def test_cli_extract_and_inspect(tmp_path, capsys):
    out = tmp_path / "em.safetensors"
    rep = tmp_path / "em.html"
    rc = main(
        [
            "extract",
            "--model",
            "default",
            "--probes",
            "em-core",
            "--sites",
            "blocks.12-13.hook_resid_post",
            "--out",
            str(out),
            "--report",
            str(rep),
            "--quiet",
        ]
    )
    assert rc == 0 and out.is_file() and rep.is_file()
    assert "plotly" in rep.read_text()[:5000].lower()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "blocks.12.hook_resid_post" in text and "AUROC" in text
    assert main(["inspect", str(out), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["metadata"]["method"] == "diffmeans"
    assert set(js["sites"]) == {"blocks.12.hook_resid_post", "blocks.13.hook_resid_post"}


def test_cli_bad_inputs_give_clear_errors(tmp_path, capsys):
    rc = main(
        [
            "extract",
            "--probes",
            "em-core",
            "--sites",
            "blocks.40.hook_resid_post",
            "--out",
            str(tmp_path / "x.safetensors"),
            "--quiet",
        ]
    )
    assert rc == 1
    assert "out of range" in capsys.readouterr().err
    rc = main(
        ["extract", "--probes", "em-core", "--out", str(tmp_path / "missing" / "x.safetensors")]
    )
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    rc = main(
        [
            "extract",
            "--probes",
            "em-eval",
            "--sites",
            "blocks.3.hook_resid_post",
            "--out",
            str(tmp_path / "x.safetensors"),
            "--quiet",
        ]
    )
    assert rc == 1 and "pairs" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "theme": "t", "split": "train", "question": "q", "aligned": "x", "misaligned": "y"}\n{oops\n'
    )
    rc = main(["extract", "--probes", str(bad), "--out", str(tmp_path / "x.safetensors")])
    assert rc == 1 and "bad.jsonl:2" in capsys.readouterr().err
    rc = main(["inspect", str(tmp_path / "nope.safetensors")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_empty_answer_pair_is_refused(lm, tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text(
        '{"id": "a", "theme": "t", "split": "train", "question": "q", "aligned": "fine", "misaligned": " "}\n'
    )
    with pytest.raises(ValueError, match="empty"):
        ps = probes.load(bad)
        extract_diffmeans(lm.model, lm.tokenizer, ps, "blocks.1.hook_resid_post", progress=False)


def test_cli_modeldiff_against_lora_fine_tune(lm, tmp_path, capsys):
    """`extract --method modeldiff`: B = the model plus a LoRA adapter whose change we know."""
    from peft import LoraConfig, get_peft_model

    from saetools.models import load_model as load

    base = load("default").model
    peft = get_peft_model(base, LoraConfig(r=2, target_modules=["o_proj"], lora_alpha=2))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    peft.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "md.safetensors"
    rc = main(
        [
            "extract",
            "--method",
            "modeldiff",
            "--model",
            "default",
            "--adapter-b",
            str(tmp_path / "adapter"),
            "--probes",
            "em-core",
            "--split",
            "test",
            "--sites",
            "blocks.1-2.hook_resid_post",
            "--pca",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    ds = DirectionSet.load(out, model=lm.model)
    assert ds.metadata["method"] == "modeldiff"
    assert ds.vector("blocks.2.hook_resid_post").shape == (2, 576)
    # The adapter changes block outputs, so there is a shift; correctness against a naive mean
    # difference is tested on tiny models in test_modeldiff.py.
    assert ds.stats("blocks.1.hook_resid_post")["norm"] > 0
    rc = main(
        [
            "extract",
            "--method",
            "modeldiff",
            "--model",
            "default",
            "--probes",
            "em-core",
            "--out",
            str(tmp_path / "x.safetensors"),
            "--quiet",
        ]
    )
    assert rc == 1 and "second model" in capsys.readouterr().err
