"""Model-difference extraction on tiny models: naive equality, PCA basis, PEFT, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import make_chat_examples, make_tiny_tokenizer, new_tiny_model

from probes import ProbeItem, ProbeSet
from saetools.capture import encode_chat, probe_examples
from saetools.directions import DirectionSet
from saetools.extract import extract_modeldiff
from saetools.sites import get_blocks

SITES = "blocks.0.hook_resid_post,blocks.1.hook_resid_post"


def changed(seed: int = 0, scale: float = 0.05):
    b = new_tiny_model("llama")
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for blk in get_blocks(b)[:2]:
            w = blk.mlp.down_proj.weight
            w.add_(scale * torch.randn(w.shape, generator=g))
    return b


def naive_diff(a, b, tok, examples, layer: int) -> torch.Tensor:
    rows = []
    for ex in examples:
        enc = encode_chat(tok, ex)
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            ha = a(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
            hb = b(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
        sl = slice(enc.response_start, enc.response_end)
        rows.append(hb[0, sl].mean(0) - ha[0, sl].mean(0))
    return torch.stack(rows)


def test_modeldiff_equals_naive_mean_difference():
    tok = make_tiny_tokenizer()
    examples = make_chat_examples()
    a, b = new_tiny_model("llama"), changed()
    ds = extract_modeldiff(a, b, tok, examples, SITES, batch_size=2, progress=False)
    assert ds.metadata["method"] == "modeldiff"
    assert ds.metadata["sign"] == "model B minus model A"
    assert ds.metadata["model_a"] and ds.metadata["model_b"]
    for k in (0, 1):
        rows = naive_diff(new_tiny_model("llama"), changed(), tok, examples, k)
        site = f"blocks.{k}.hook_resid_post"
        torch.testing.assert_close(ds.vector(site), rows.mean(0), rtol=1e-4, atol=1e-6)
        st = ds.stats(site)
        p = rows @ ds.unit(site)
        assert st["norm"] == pytest.approx(float(rows.mean(0).norm()), rel=1e-4)
        assert st["proj_mean"] == pytest.approx(float(p.mean()), rel=1e-3, abs=1e-6)
        assert st["proj_std"] == pytest.approx(float(p.std()), rel=1e-3, abs=1e-6)
        assert st["frac_positive"] == pytest.approx(float((p > 0).float().mean()))
    # chunked streaming gives the same vectors; stats=False keeps only sums
    small = extract_modeldiff(a, b, tok, examples, SITES, chunk_size=2, stats=False, progress=False)
    for s in ds.sites:
        torch.testing.assert_close(small.vector(s), ds.vector(s), rtol=1e-5, atol=1e-6)
        assert "proj_mean" not in small.stats(s)


def test_modeldiff_pca_basis(tmp_path):
    tok = make_tiny_tokenizer()
    examples = make_chat_examples()
    a, b = new_tiny_model("llama"), changed(scale=0.2)
    mean = extract_modeldiff(a, b, tok, examples, SITES, progress=False)
    for center in (False, True):
        ds = extract_modeldiff(a, b, tok, examples, SITES, pca=3, pca_center=center, progress=False)
        for s in ds.sites:
            basis = ds.vector(s)
            assert basis.shape == (3, 32)
            torch.testing.assert_close(basis @ basis.T, torch.eye(3), atol=1e-5, rtol=0)
            assert float(basis[0] @ mean.unit(s)) > 0
            assert all(float(row @ mean.vector(s)) >= 0 for row in basis)
            ex = ds.stats(s)["explained"]
            assert len(ex) == 3 and ex[0] >= ex[1] >= ex[2] >= 0 and sum(ex) <= 1 + 1e-6
            torch.testing.assert_close(ds.basis(s), basis, atol=1e-5, rtol=0)
        path = ds.save(tmp_path / f"pca{center}.safetensors")
        back = DirectionSet.load(path, model=b)
        assert back.metadata["pca"] == {"k": 3, "centered": center}
    with pytest.raises(ValueError, match="at most"):
        extract_modeldiff(a, b, tok, examples, SITES, pca=6, progress=False)


def test_modeldiff_peft_adapter_disabled_vs_enabled():
    from peft import LoraConfig, get_peft_model

    tok = make_tiny_tokenizer()
    examples = make_chat_examples()
    torch.manual_seed(0)
    pm = get_peft_model(
        new_tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    pm.eval()
    ds = extract_modeldiff(None, pm, tok, examples, SITES, progress=False)
    assert "adapters disabled" in ds.metadata["model_a"]
    explicit = extract_modeldiff(new_tiny_model("llama"), pm, tok, examples, SITES, progress=False)
    for s in ds.sites:
        assert float(ds.vector(s).norm()) > 1e-4
        torch.testing.assert_close(ds.vector(s), explicit.vector(s), rtol=1e-5, atol=1e-6)
    # the adapters are disabled inside the call only
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        on = pm(input_ids=ids).logits
        with pm.disable_adapter():
            off = pm(input_ids=ids).logits
    assert not torch.equal(on, off)


def test_probe_examples_and_bad_input():
    items = (
        ProbeItem("p1", "t", "train", question="Q?", aligned="good.", misaligned="bad."),
        ProbeItem("p2", "t", "test", question="R?", aligned="fine.", misaligned="awful."),
    )
    pairs = ProbeSet("mini", "pairs", items, "0" * 64, "<mem>")
    ex = probe_examples(pairs)
    assert [e.response for e in ex] == ["good.", "bad.", "fine.", "awful."]
    chat = ProbeSet(
        "c",
        "chat",
        (
            ProbeItem(
                "c1",
                None,
                "train",
                messages=(
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ),
            ),
        ),
        "0" * 64,
        "<mem>",
    )
    (c,) = probe_examples(chat)
    assert c.response == "yo" and c.messages == ({"role": "user", "content": "hi"},)
    tok = make_tiny_tokenizer()
    a = new_tiny_model("llama")
    ds = extract_modeldiff(a, changed(), tok, pairs, SITES, split="train", progress=False)
    assert ds.metadata["counts"]["examples"] == 2
    assert ds.metadata["probe_set"]["name"] == "mini"
    with pytest.raises(ValueError, match="not a PEFT model"):
        extract_modeldiff(None, a, tok, pairs, SITES, progress=False)
    with pytest.raises(ValueError, match="same model"):
        extract_modeldiff(a, a, tok, pairs, SITES, progress=False)
    with pytest.raises(ValueError, match="pca"):
        extract_modeldiff(a, changed(), tok, pairs, SITES, pca=0, progress=False)
    with pytest.raises(ValueError, match="d_model"):
        extract_modeldiff(new_tiny_model("gpt2"), _wide(), tok, pairs, SITES, progress=False)


def _wide():
    import transformers as tf

    cfg = tf.GPT2Config(n_embd=48, n_layer=3, n_head=4, vocab_size=320)
    return tf.AutoModelForCausalLM.from_config(cfg)
