"""The trainer recipes in docs/interop.md, run as written on the embedded model."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"
RECIPE = re.compile(r"<!-- recipe: ([\w-]+) -->\n```python\n(.*?)\n```", re.S)


def recipes() -> dict[str, str]:
    found = dict(RECIPE.findall(DOC.read_text()))
    assert set(found) == {"plain-loop", "hf-trainer", "trl-sft"}, sorted(found)
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding ``em.safetensors``: difference of means at blocks 9 and 15 (24 train pairs)."""
    import probes
    from saetools.extract.diffmeans import extract_diffmeans
    from saetools.models import load_model

    lm = load_model("default")
    ps = probes.load("em-core")
    train = [it for it in ps.items if it.split == "train"][:24]
    test = [it for it in ps.items if it.split == "test"][:8]
    ps = dataclasses.replace(ps, items=tuple(train + test))
    ds = extract_diffmeans(
        lm.model,
        lm.tokenizer,
        ps,
        "blocks.9.hook_resid_post,blocks.15.hook_resid_post",
        model_id="default",
        progress=False,
    )
    d = tmp_path_factory.mktemp("recipes")
    ds.save(d / "em.safetensors")
    return d


def _lora_b_moved(model) -> bool:
    bs = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert bs, "no LoRA parameters"
    return any(float(p.detach().abs().max()) > 0 for p in bs)  # B starts at zero


@pytest.mark.embedded
@pytest.mark.parametrize("name", ["plain-loop", "hf-trainer", "trl-sft"])
def test_recipe_runs_as_written(name, workdir, monkeypatch):
    code = recipes()[name]
    monkeypatch.chdir(workdir)
    ns: dict = {"__name__": f"recipe_{name.replace('-', '_')}"}
    exec(compile(code, f"{DOC}:{name}", "exec"), ns)  # noqa: S102 - the documented recipe
    assert _lora_b_moved(ns["model"])
    if name == "plain-loop":
        logs = ns["out"].logs
        assert "directional_kl" in logs and all(math.isfinite(float(v)) for v in logs.values())
    else:
        hist = [h for h in ns["trainer"].state.log_history if "reg/directional_kl" in h]
        assert len(hist) == 2, hist
        assert all(math.isfinite(v) for h in hist for v in h.values() if isinstance(v, float))
        assert hist[-1]["reg/directional_kl"] > 0  # θ has moved away from θ0 after step 1
        if name == "trl-sft":  # TRL's own metrics, recorded by the mixin on the embedded model
            assert all(0 < h["entropy"] < 11 and 0 <= h["mean_token_accuracy"] <= 1 for h in hist)
            assert hist[-1]["num_tokens"] > hist[0]["num_tokens"] > 0
