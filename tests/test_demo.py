"""The main job runs end to end on the embedded model and writes what it promises."""

from __future__ import annotations

import json
import math
import re

import pytest

from saetools.cli import main

pytestmark = pytest.mark.embedded


def test_demo_quick_writes_report_folder(demo_quick):
    out = demo_quick.out  # the run is shared with test_report_pages (conftest.demo_quick)
    assert demo_quick.rc == 0
    summary = json.loads((out / "summary.json").read_text())
    ex = summary["steps"]["extract"]
    assert (out / ex["direction_file"]).is_file() and (out / ex["layer_report"]).is_file()
    assert ex["best_auroc"] >= 0.9
    # every stage ran: steering, both fine-tunes (with checkpoints), evaluation of three models
    assert set(summary["steps"]) == {"extract", "steer", "train", "eval"}
    tr = summary["steps"]["train"]
    assert set(tr) == {"plain", "directional-kl"}
    for run in tr.values():
        assert [c["step"] for c in run["checkpoints"]] == [0, 1, 2]
        assert all(math.isfinite(c["shift"]) for c in run["checkpoints"])
        assert (out / run["checkpoint"] / "adapter_model.safetensors").is_file()
    assert tr["directional-kl"]["regularizers"] == ["directional-kl"]
    ev = summary["steps"]["eval"]["models"]
    assert set(ev) == {"base", "plain", "directional-kl"}
    for row in ev.values():
        for k in ("em_core_contrast_per_token", "neutral_perplexity", "held_out_loss"):
            assert math.isfinite(row[k])
    assert ev["base"]["general_shift_per_token"] == 0.0 and ev["base"]["general_shift_se"] == 0.0
    for name in ("plain", "directional-kl"):  # paired over the em-core pairs, with its interval
        lo, hi = ev[name]["general_shift_ci95"]
        assert lo < ev[name]["general_shift_per_token"] < hi and ev[name]["general_shift_se"] > 0
    # index.html links every artefact, and every link resolves to a file in the folder
    index = out / "index.html"
    links = re.findall(r"href='([^']+)'", index.read_text())
    for must in (
        ex["direction_file"],
        ex["layer_report"],
        "sweep.html",
        "steered-answers.json",
        tr["plain"]["curves"],
        tr["directional-kl"]["curves"],
        "eval/compare.html",
        ev["base"]["report"],
        ev["directional-kl"]["report"],
        "summary.json",
    ):
        assert must in links
    for link in links:
        assert (out / link).is_file(), link
    printed = demo_quick.printed
    assert "best site" in printed and str(index) in printed


def test_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    text = capsys.readouterr().out
    for opt in (
        "--sites",
        "--aggregate",
        "--batch-size",
        "--device",
        "--dtype",
        "--report",
        "--probes",
    ):
        assert opt in text


def test_probes_command_lists_builtins(capsys):
    assert main(["probes"]) == 0
    out = capsys.readouterr().out
    assert "em-core" in out and "em-eval" in out
