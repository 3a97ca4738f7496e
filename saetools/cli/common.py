"""Options shared by several subcommands, and helpers to act on them."""

from __future__ import annotations

import argparse
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
    g.add_argument(
        "--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default: cpu)"
    )
    g.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights and activation dtype (default: float32)",
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
