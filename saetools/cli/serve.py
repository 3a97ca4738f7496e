"""``saetools serve``: an OpenAI-compatible HTTP server for the model, optionally steered."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .common import add_model_options, load_model_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model (optionally steered) over an OpenAI-compatible HTTP API",
        description=(
            "Serve /v1/chat/completions and /v1/models for the model (with an optional adapter), "
            "batching requests that arrive together. Requests may steer per request through the "
            "'saetools' body field; --site/--op/--alpha set a default steering for requests that "
            "carry none. See docs/serve.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_options(p)
    d = p.add_argument_group("directions and default steering")
    d.add_argument(
        "--directions",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="a direction file requests may steer with, named by NAME (default: the file's stem); "
        "repeat for several",
    )
    d.add_argument(
        "--site",
        default=None,
        help="default steering: site(s) ('all', a comma list or ranges) of the first --directions file",
    )
    d.add_argument("--op", default="add", choices=["add", "ablate", "clamp"])
    d.add_argument("--alpha", default="1", help="a number or site=alpha,site=alpha")
    d.add_argument(
        "--alpha-scale",
        default="abs",
        choices=["abs", "norm"],
        help="norm: the default steering's alpha is a fraction of the site's mean residual norm "
        '(requests choose their own with "alpha_scale")',
    )
    d.add_argument("--value", default=None, help="clamp value: a number, 'aligned' or 'misaligned'")
    d.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    v = d.add_mutually_exclusive_group()
    v.add_argument("--unit", dest="unit", action="store_true", default=True)
    v.add_argument("--raw", dest="unit", action="store_false")
    d.add_argument(
        "--force", action="store_true", help="load direction files made for another model"
    )
    sg = p.add_argument_group("SAEs (requests clamp their latents with saetools.clamp)")
    sg.add_argument(
        "--sae",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="an SAE folder (sae-lens format) or release:sae_id to load; repeat for several",
    )
    sg.add_argument(
        "--clamp-latent",
        action="append",
        default=None,
        metavar="ID=VALUE",
        help="default clamp of the first --sae's latents (repeat, or 123=0,456=5), for requests "
        "with neither saetools.steer nor saetools.clamp",
    )
    _add_server_options(p)
    _add_limit_options(p)
    p.set_defaults(func=run_serve)


def _add_server_options(p) -> None:
    """Where to listen, who may ask, how rows are batched, logging."""
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--served-model-name",
        default=None,
        help="the model id clients send (default: the model's id; 'default' is accepted too)",
    )
    s.add_argument(
        "--api-key",
        default=os.environ.get("SAETOOLS_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $SAETOOLS_API_KEY; none: no check)",
    )
    s.add_argument("--max-batch", type=int, default=16, help="most rows decoded together")
    s.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long the worker waits for more requests after the first one",
    )
    s.add_argument(
        "--default-max-tokens",
        type=int,
        default=512,
        help="max_tokens for requests that give none (capped by the context)",
    )
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    s.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def _add_limit_options(p) -> None:
    """What one request may cost (docs/serve.md, "Limits")."""
    s = p.add_argument_group("limits per request (see docs/serve.md, Limits)")
    s.add_argument("--max-n", type=int, default=16, help="largest n a request may ask for")
    s.add_argument(
        "--max-queue",
        type=int,
        default=1024,
        help="most rows waiting for the model; a request beyond it gets 429 (0: unbounded)",
    )
    s.add_argument(
        "--max-request-tokens",
        type=int,
        default=65536,
        help="most work one request may ask for: the prompt tokens plus max_tokens of every "
        "choice, tokens with returned logprobs counting 1 + their alternatives; more is a 400 "
        "(0: unbounded)",
    )
    s.add_argument(
        "--max-body-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="largest request body; a larger one gets 413 before it is parsed (0: unbounded)",
    )
    s.add_argument(
        "--max-steer-magnitude",
        type=float,
        default=1e6,
        help="largest steering a request (or the default steering) may ask for: |alpha| x "
        "|vector| of add, |value| of clamp, SAE latent clamp values",
    )


def _named(specs: list[str], flag: str, default_name, expected: str) -> dict[str, str]:
    """``["X", "NAME=X"]`` -> ``{name: X}``; ``default_name(X)`` names the bare ones."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = spec, default_name(spec)
        if not name or not path:
            raise ValueError(f"{flag} {spec!r}: expected {expected}")
        if name in out:
            raise ValueError(f"{flag}: the name {name!r} is given twice")
        out[name] = path
    return out


def _sae_specs(specs: list[str]) -> dict[str, str]:
    """``["PATH", "name=PATH", "release:id"]`` -> ``{name: spec}`` (name: the folder's name)."""
    return _named(
        specs,
        "--sae",
        lambda s: Path(s).name if Path(s).exists() else s.rsplit(":", 1)[-1],
        "PATH, NAME=PATH or release:sae_id",
    )


def _direction_files(specs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, path in _named(
        specs, "--directions", lambda s: Path(s).stem, "FILE or NAME=FILE"
    ).items():
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"direction file {p} does not exist")
        out[name] = p
    return out


def _check_numbers(args) -> None:
    """Refuse server settings out of their range before loading anything."""
    for name, val in (
        ("--max-queue", args.max_queue),
        ("--max-request-tokens", args.max_request_tokens),
        ("--max-body-bytes", args.max_body_bytes),
    ):
        if val < 0:
            raise ValueError(f"{name} must be >= 0 (0: unbounded)")
    if not 0 < args.max_steer_magnitude < float("inf"):
        raise ValueError("--max-steer-magnitude must be a positive finite number")
    for name, val in (("--max-batch", args.max_batch), ("--max-n", args.max_n)):
        if val < 1:
            raise ValueError(f"{name} must be >= 1")
    if args.default_max_tokens < 1:
        raise ValueError("--default-max-tokens must be >= 1")


def _config(args, model_id: str):
    """The server's settings from the command line (``model_id``: the loaded model's id)."""
    from ..serve import ServeConfig

    name = args.served_model_name or model_id
    return ServeConfig(
        model_name=name,
        aliases=tuple(a for a in (args.model, "default") if a != name),
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        default_max_tokens=args.default_max_tokens,
        max_n=args.max_n,
        max_queue=args.max_queue or None,
        api_key=args.api_key or None,
        max_request_tokens=args.max_request_tokens or None,
        max_body_bytes=args.max_body_bytes or None,
        max_steer_magnitude=args.max_steer_magnitude,
    )


def _log_to_stderr(level: str) -> None:
    """The server's own log (failures with their request ids, start-up warnings) on stderr."""
    log = logging.getLogger("saetools.serve")
    if not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(h)
    log.setLevel(level.upper())


def run_serve(args) -> int:
    import torch

    from ..directions import DirectionSet
    from ..serve import ChatServer, serve
    from ..steer import SteeringError, interventions_from_directions, parse_site_alphas

    files = _direction_files(args.directions)
    alpha = parse_site_alphas(args.alpha)
    if args.site and not files:
        raise SteeringError("--site needs a --directions file to take the vectors from")
    if args.site and args.op == "clamp" and args.value is None:
        raise SteeringError("--op clamp needs --value")
    _check_numbers(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    sae_specs = _sae_specs(args.sae)
    if args.clamp_latent and not sae_specs:
        raise SteeringError("--clamp-latent needs an --sae")
    clamps = None
    if args.clamp_latent:
        from ..sae import parse_clamps

        clamps = parse_clamps(args.clamp_latent)
    lm = load_model_from_args(args)
    saes = {}
    if sae_specs:
        from ..sae import LatentClamp, load_sae

        saes = {
            name: load_sae(spec, model=lm.model, device=lm.device)
            for name, spec in sae_specs.items()
        }
    directions = {
        name: DirectionSet.load(path, model=lm.model, force=args.force)
        for name, path in files.items()
    }
    default = []
    if args.site:
        value = args.value
        if value is not None:
            try:
                value = float(value)
            except ValueError:
                pass
        default = interventions_from_directions(
            next(iter(directions.values())),
            args.site,
            args.op,
            alpha,
            value=value,
            unit=args.unit,
            positions=args.positions,
            n_layers=lm.n_layers,
            alpha_scale=args.alpha_scale,
        )
    if clamps:
        first = next(iter(saes.values()))
        default = list(default) + [
            LatentClamp(first, list(clamps), list(clamps.values()), positions=args.positions)
        ]
    config = _config(args, lm.model_id)
    name = config.model_name
    _log_to_stderr(args.log_level)
    server = ChatServer(
        lm.model,
        lm.tokenizer,
        config,
        directions=directions,
        saes=saes,
        default_steering=default,
    )
    desc = ", ".join(f"{iv.op} {iv.site}" for iv in default[:3]) or "none"
    print(
        f"saetools serve: {name} on http://{args.host}:{args.port}/v1 "
        f"(directions: {', '.join(directions) or 'none'}; SAEs: {', '.join(saes) or 'none'}; "
        f"default steering: {desc})",
        flush=True,
    )
    serve(server, args.host, args.port, log_level=args.log_level)
    return 0
