"""``saetools export`` and ``saetools import``: direction files to and from other tools' formats."""

from __future__ import annotations

import sys
import warnings

from .common import add_model_options, check_output_path, finite_float32, load_model_from_args

_FORMATS = ("gguf", "repeng", "steering-vectors", "pt", "concept-ablation")


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a direction file as a llama.cpp/repeng GGUF, persona .pt, steering-vectors, ...",
        description=(
            "Write a saetools direction file in another tool's format. gguf/repeng: llama.cpp control "
            "vector (blocks.k.hook_resid_post -> direction.k; block 0's output cannot be written). "
            "steering-vectors: {k: vector}, decoder_block. pt: persona-vector tensor "
            "[n_layers+1, d] indexed like hidden_states. concept-ablation: {module_path: Q [d, n]}. "
            "Vectors are unit vectors times --alpha unless --raw. See docs/interop.md."
        ),
    )
    p.add_argument("file", help="saetools direction file (.safetensors)")
    p.add_argument("--format", required=True, choices=_FORMATS)
    p.add_argument("--out", required=True, metavar="FILE", help="file to write")
    p.add_argument(
        "--alpha",
        type=finite_float32,
        default=1.0,
        help="scale baked into the vectors (default 1): the file at strength 1 steers like "
        "`saetools steer --alpha ALPHA`",
    )
    p.add_argument(
        "--alpha-scale",
        default="abs",
        choices=["abs", "norm"],
        help="norm: --alpha is a fraction of each site's mean residual norm recorded in the file",
    )
    p.add_argument(
        "--raw", action="store_true", help="write raw stored vectors (times --alpha), not unit ones"
    )
    p.add_argument(
        "--sites",
        default=None,
        help="comma-separated sites or ranges (blocks.5-20.hook_resid_post); default: every site of "
        "the file, skipping (with a warning) those the format cannot hold",
    )
    p.add_argument(
        "--model-hint",
        default=None,
        help="GGUF controlvector.model_hint (default: llama.cpp's name for the file's model_type, "
        "e.g. gemma3 for gemma3_text; else 'llama')",
    )
    p.add_argument(
        "--n-layers",
        type=int,
        default=None,
        help="blocks of the model (pt format; default: from the file's fingerprint)",
    )
    p.add_argument(
        "--module-prefix",
        default=None,
        help="concept-ablation decoder-layer path prefix (default: model.layers)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="optional: check the file against this model ('default', a folder or an HF id)",
    )
    p.add_argument("--force", action="store_true", help="export even if --model differs")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=run_export)

    q = sub.add_parser(
        "import",
        help="read a llama.cpp/repeng GGUF, persona .pt, steering-vectors or concept-ablation file",
        description=(
            "Convert another tool's direction file into a saetools direction file, with the layer "
            "indices mapped to sites (direction.k / layer k -> blocks.k.hook_resid_post; persona .pt "
            "row 0 -> blocks.0.hook_resid_pre, row k+1 -> blocks.k.hook_resid_post). Widths and layer "
            "indices are checked against --model ('--model none' skips the checks)."
        ),
    )
    q.add_argument("file", help="the other tool's file")
    q.add_argument(
        "--format", default=None, choices=_FORMATS, help="default: from the extension/metadata"
    )
    q.add_argument("--out", required=True, metavar="FILE", help="direction file to write")
    add_model_options(q)
    q.set_defaults(func=run_import)


def _show_warnings(caught) -> None:
    for w in caught:
        print(f"saetools: warning: {w.message}", file=sys.stderr)


def run_export(args) -> int:
    from ..directions import DirectionSet
    from ..export import export_directions

    out = check_output_path(args.out, "export")
    ds = DirectionSet.load(args.file)
    model = None
    if args.model:
        from ..models import load_model

        model = load_model(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_directions(
            ds,
            out,
            args.format,
            alpha=args.alpha,
            raw=args.raw,
            sites=args.sites,
            model=model,
            force=args.force,
            model_hint=args.model_hint,
            n_layers=args.n_layers,
            module_prefix=args.module_prefix,
            alpha_scale=args.alpha_scale,
        )
    _show_warnings(caught)
    print(f"wrote {path} ({args.format})")
    return 0


def run_import(args) -> int:
    from ..export import import_directions

    out = check_output_path(args.out, "direction file")
    model = None if args.model == "none" else load_model_from_args(args)
    ds = import_directions(args.file, args.format, model=model)
    ds.save(out)
    print(f"wrote {out}: {len(ds.sites)} site(s): {', '.join(ds.sites)}")
    return 0
