"""The main job runs end to end on the embedded model and writes what it promises."""

from __future__ import annotations

import json

import pytest

from saetools.cli import main

pytestmark = pytest.mark.embedded


def test_demo_quick_writes_report_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ex = summary["steps"]["extract"]
    assert (out / ex["direction_file"]).is_file() and (out / ex["layer_report"]).is_file()
    assert ex["best_auroc"] >= 0.9
    printed = capsys.readouterr().out
    assert "best site" in printed and str(out) in printed


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
