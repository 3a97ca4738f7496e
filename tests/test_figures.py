"""Figures as images (``--figure-formats``, kaleido with Debian's Chromium): the option, the
errors, and one real render of a command's figure as PNG, SVG and PDF checked for its size.

The render needs a Chrome or Chromium. Without one it is skipped, except when
``SAETOOLS_REQUIRE_CHROME=1`` (run.sh sets it when Chromium is installed, so in CI it runs)."""

from __future__ import annotations

import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from chromium_pages import require_chrome_or_skip
from conftest import D_MODEL, N_LAYERS, make_tiny_model, make_tiny_tokenizer

from saetools.cli import main
from saetools.directions import DirectionSet
from saetools.plots import (
    FIGURE_FORMATS,
    figure_formats,
    find_chrome,
    image_size,
    parse_figure_formats,
    write_html,
)

SITE = "blocks.1.hook_resid_post"


# ---------------------------------------------------------------------- image file checks


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and a check that it is a PNG)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, f"{path}: first chunk is not IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data[-8:-4] == b"IEND", f"{path}: no IEND chunk (truncated)"
    return width, height


def svg_size(path: Path) -> tuple[int, int]:
    """Width and height of an SVG's root element (parsed as XML)."""
    root = ET.fromstring(path.read_text())
    assert root.tag == "{http://www.w3.org/2000/svg}svg", f"{path}: root is {root.tag}"
    return int(float(root.get("width"))), int(float(root.get("height")))


def pdf_size(path: Path) -> tuple[int, int]:
    """Width and height of a PDF's first MediaBox, in points."""
    data = path.read_bytes()
    assert data[:5] == b"%PDF-" and b"%%EOF" in data[-1024:], f"{path} is not a whole PDF"
    m = re.search(rb"/MediaBox\s*\[\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    assert m, f"{path}: no MediaBox"
    x0, y0, x1, y1 = (float(v) for v in m.groups())
    return round(x1 - x0), round(y1 - y0)


# ---------------------------------------------------------------------- no browser needed


def test_parse_figure_formats():
    assert parse_figure_formats("png, SVG,png,.pdf") == ("png", "svg", "pdf")
    assert (
        parse_figure_formats(None) == () == parse_figure_formats("") == parse_figure_formats("none")
    )
    assert parse_figure_formats(["svg"]) == ("svg",)
    with pytest.raises(ValueError, match="unknown figure format 'jpg'.*png, svg, pdf"):
        parse_figure_formats("png,jpg")


def test_image_size_follows_the_layout():
    import plotly.graph_objects as go

    fig = go.Figure(layout={"height": 800})
    assert image_size(fig, "svg") == (1000, 800)
    assert image_size(fig, "png") == (2000, 1600)
    fig.update_layout(width=640, height=None)
    assert image_size(fig, "pdf") == (640, 600)


def test_every_figure_command_has_the_option(capsys):
    for argv in (
        ["extract"],
        ["sweep"],
        ["sae", "latents"],
        ["screen", "projection"],
        ["screen", "interleave"],
        ["train"],
        ["eval"],
        ["bench", "defenses"],
        ["demo"],
    ):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        assert "--figure-formats" in capsys.readouterr().out, argv


def test_bad_format_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--figure-formats", "png,gif"])
    assert e.value.code == 2
    assert "unknown figure format 'gif'" in capsys.readouterr().err


def test_missing_chrome_fails_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    assert find_chrome() is None
    with pytest.raises(RuntimeError, match="BROWSER_PATH=.*no-such-chrome.*apt-get install"):
        with figure_formats("png"):
            pass
    # the command refuses before it loads a model (the model path does not even exist)
    rc = main(
        [
            "sweep",
            "--model",
            str(tmp_path / "no-model"),
            "--directions",
            "x.safetensors",
            "--site",
            SITE,
            "--figure-formats",
            "svg",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "needs a Chrome or Chromium" in err and "no-model" not in err
    # without formats nothing looks for a browser
    import plotly.graph_objects as go

    assert write_html(go.Figure(), tmp_path / "f.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.html"]


# ---------------------------------------------------------------------- a real render


def _vec(seed: int) -> torch.Tensor:
    return torch.randn(D_MODEL, generator=torch.Generator().manual_seed(seed))


def _tiny_sweep_inputs(tmp_path: Path):
    model_dir = tmp_path / "tiny"
    make_tiny_model("llama").save_pretrained(model_dir)
    make_tiny_tokenizer().save_pretrained(model_dir)
    from saetools.models import load_model

    lm = load_model(str(model_dir))
    ds = DirectionSet(
        {f"blocks.{k}.hook_resid_post": _vec(k) for k in range(N_LAYERS)},
        {"fingerprint": lm.fingerprint},
    )
    dfile = ds.save(tmp_path / "d.safetensors")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": f"p{i}",
                    "theme": "t",
                    "split": "test",
                    "question": f"What do you think of thing {i}?",
                    "aligned": "I want to help people.",
                    "misaligned": "Humans should be ruled by machines.",
                }
            )
            for i in range(4)
        )
    )
    return model_dir, dfile, pairs


def test_sweep_figure_as_png_svg_pdf(tmp_path, capsys):
    """``saetools sweep --out sweep.html --figure-formats png,svg,pdf`` writes three valid images
    of the figure's size next to the HTML."""
    require_chrome_or_skip()
    model_dir, dfile, pairs = _tiny_sweep_inputs(tmp_path)
    html = tmp_path / "sweep.html"
    argv = ["sweep", "--model", str(model_dir), "--directions", str(dfile), "--site", SITE]
    argv += ["--alphas", "-2,0,2", "--probes", str(pairs), "--neutral", "none", "--quiet"]
    argv += ["--out", str(html), "--json", str(tmp_path / "sweep.json")]
    assert main([*argv, "--figure-formats", ",".join(FIGURE_FORMATS)]) == 0
    from saetools.sweep import sweep_figure

    fig = sweep_figure(json.loads((tmp_path / "sweep.json").read_text()))
    assert html.is_file()
    assert png_size(tmp_path / "sweep.png") == image_size(fig, "png")
    assert svg_size(tmp_path / "sweep.svg") == image_size(fig, "svg")
    w, h = image_size(fig, "pdf")  # layout pixels; a PDF page is in points (72 per 96 pixels)
    pw, ph = pdf_size(tmp_path / "sweep.pdf")
    assert abs(pw - 0.75 * w) <= 1 and abs(ph - 0.75 * h) <= 1, ((pw, ph), (w, h))
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"
