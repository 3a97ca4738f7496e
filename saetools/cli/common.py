"""Options shared by several subcommands, and helpers to act on them."""

from __future__ import annotations

import argparse
import contextlib
import re
from pathlib import Path

# A negative number or a list of them ("-6", "-8,-4,0", "-.5", "-1e3", "-2:0.5"): a value, not an option.
NEGATIVE_NUMBERS = re.compile(r"^-\d[\d.,:eE+-]*$|^-\.\d")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, except that an argument that looks like a negative number or a list of
    them (``--alpha -6``, ``--alphas -8,-4,0``) is read as a value, never as an option. Subcommand
    parsers made by ``add_subparsers`` are of the same class."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # argparse reads this pattern to tell negative numbers from options; widen it to lists.
        self._negative_number_matcher = NEGATIVE_NUMBERS


# ---------------------------------------------------------------- argparse types
# The numbers of steering and sampling, checked where the Python API checks them
# (saetools.steer.limits), so an option and its Python argument refuse the same values.


def _limited(check, what: str):
    def convert(text: str):
        from ..steer import SteeringError

        try:
            value = int(text) if what == "an integer" else float(text)
        except ValueError:
            shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"
            raise argparse.ArgumentTypeError(f"not {what}: {shown!r}") from None
        try:
            return check(value, "the value")
        except SteeringError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def finite_float32(text: str) -> float:
    """A finite number within float32's range (``|x| <= 3.4028235e38``): strengths, weights."""
    from ..steer import check_float32

    return _limited(check_float32, "a number")(text)


def nonnegative_float32(text: str) -> float:
    """A sampling temperature: a finite number ``>= 0`` within float32's range (0 is greedy)."""
    from ..steer import check_temperature

    return _limited(check_temperature, "a number")(text)


def positive_float32(text: str) -> float:
    """A finite number ``> 0`` within float32's range (a learning rate)."""
    from ..steer import SteeringError, check_float32

    def check(value, name):
        if not value > 0:
            raise SteeringError(f"{name} must be > 0, not {value:g}")
        return check_float32(value, name)

    return _limited(check, "a number")(text)


def probability(text: str) -> float:
    """A nucleus-sampling threshold: a number in ``(0, 1]``."""
    from ..steer import check_top_p

    return _limited(check_top_p, "a number")(text)


def seed(text: str) -> int:
    """A random seed: an integer ``torch.manual_seed`` takes (``-2**63 .. 2**64 - 1``)."""
    from ..steer import check_seed

    digits = text.strip().lstrip("+-")
    if digits.isdigit() and len(digits) > 40:  # int() refuses over 4300 digits; all are too big
        raise argparse.ArgumentTypeError(
            "the value must be an integer from -2**63 to 2**64 - 1 (what torch.manual_seed "
            f"takes), not an integer of {len(digits)} digits"
        )
    return _limited(check_seed, "an integer")(text)


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="default",
        help="'default' (the embedded SmolLM2-135M-Instruct), another known model such as "
        "'gemma3-270m' (see `saetools models`), a .gguf file, a local HF folder, or a Hugging "
        "Face id",
    )
    g.add_argument(
        "--adapter",
        default=None,
        help="optional PEFT (LoRA) adapter folder applied on top of --model",
    )
    g.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    g.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights and activation dtype",
    )
    g.add_argument(
        "--chat-template",
        default=None,
        metavar="FILE",
        help="a Jinja chat template file, or the name of one shipped with saetools ('gemma'), "
        "for models whose tokenizer has none",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def load_model_from_args(args):
    from ..models import load_model

    return load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        adapter=args.adapter,
        chat_template=getattr(args, "chat_template", None),
    )


def check_output_path(path: str | None, what: str = "output") -> Path | None:
    """Refuse an output path in a missing folder before any work starts."""
    if path is None:
        return None
    p = Path(path)
    if not p.parent.exists():
        raise FileNotFoundError(
            f"cannot write {what} {p}: folder {p.parent} does not exist (create it first)"
        )
    if p.is_dir():
        raise FileNotFoundError(f"cannot write {what} {p}: it is a folder")
    return p


def add_figure_options(p: argparse.ArgumentParser) -> None:
    """``--figure-formats``, for every command that writes plotly figures (HTML)."""
    p.add_argument(
        "--figure-formats",
        type=_figure_formats,
        default=(),
        metavar="LIST",
        help="also write every figure as images next to its HTML (report.html -> report.png ...): "
        "a comma list of png, svg, pdf. Needs a Chrome or Chromium ($BROWSER_PATH or chromium on "
        "PATH; run.sh installs Debian's). Default: HTML only",
    )


def _figure_formats(text: str) -> tuple[str, ...]:
    from ..plots import parse_figure_formats

    try:
        return parse_figure_formats(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def figure_export(args) -> contextlib.AbstractContextManager:
    """The block in which a command runs: its figures are also written in ``--figure-formats``
    (nothing for commands without the option). Fails at once when no Chrome is found."""
    formats = getattr(args, "figure_formats", ())
    if not formats:
        return contextlib.nullcontext(())
    from ..plots import figure_formats

    return figure_formats(formats)
