"""The request side of the OpenAI wire protocol: parsing and validating ``/v1/chat/completions``
and ``/v1/completions`` bodies into typed requests, with OpenAI-style 4xx errors.

Every check on the *shape* of a request lives here, with the settings it is checked against
(:class:`ServeConfig`): the JSON body (nesting depth included), the sampling options, the messages
or prompts, the shape of the ``saetools`` steering extension field and of each of its items, the
context length. The limits on what a request may *cost* (body size, work per request, steering
magnitudes, the worker's queue) are in :mod:`saetools.serve.limits`.

Long file: it is the one home of every request check and the settings they use (both endpoints
and the ``saetools`` field share their helpers); split, a new check would have several homes.

What the checks do not know (the loaded direction files, the model's sites) is resolved by
:mod:`saetools.serve.steering`; token counts come from the tokenizer (:mod:`saetools.serve.app`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..steer import OPS, POSITIONS, Intervention

STEER_KEYS = {
    "site",
    "op",
    "alpha",
    "alpha_scale",
    "value",
    "direction",
    "vector",
    "unit",
    "positions",
}
CLAMP_KEYS = {"sae", "latents", "positions"}
IGNORED_IF_DEFAULT = {
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "audio": (None,),
    "prediction": (None,),
}


# --------------------------------------------------------------------------------------------
# Errors


class APIError(Exception):
    """An error returned to the client as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error``."""
    return APIError(400, message, param=param, code=code)


# --------------------------------------------------------------------------------------------
# Settings and parsed requests


@dataclass
class ServeConfig:
    """Server settings. ``model_name`` is the id in ``/v1/models``; ``aliases`` are accepted too."""

    model_name: str = "default"
    aliases: tuple[str, ...] = ()
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    default_max_tokens: int = 512
    max_n: int = 16
    max_top_logprobs: int = 20
    max_stop: int = 4
    api_key: str | None = None
    steer_cache: int = 256
    max_queue: int | None = 1024  # rows waiting for the worker; more gives 429 (None: unbounded)
    # the limits of saetools.serve.limits (None: unbounded)
    max_body_bytes: int | None = 4 * 1024 * 1024  # larger bodies get 413 before parsing
    max_request_tokens: int | None = 65536  # work per request, see limits.request_work
    max_steer_magnitude: float = 1e6  # |alpha| x |vector| of add, |value| of clamp, latent values


@dataclass(frozen=True)
class SamplingParams:
    """How one row is decoded. ``temperature=0`` is greedy; ``seed`` makes sampling reproducible.

    ``max_tokens=0`` scores the prompt only. ``prompt_logprobs=k`` (not None) reports every prompt
    token's log-probability given the tokens before it, with the ``k`` most likely alternatives
    (the first token has none). ``eos_logprob`` also reports the end-of-sequence token that ends a
    choice (``/v1/completions`` does, ``/v1/chat/completions`` does not)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None
    prompt_logprobs: int | None = None
    eos_logprob: bool = False


@dataclass
class ChatRequest:
    """A validated ``/v1/chat/completions`` body. ``steer_key`` and ``interventions`` are filled
    in by :class:`saetools.serve.steering.Steering` from the ``saetools`` field."""

    messages: list[dict]
    params: SamplingParams
    max_tokens_given: bool
    n: int
    stream: bool
    include_usage: bool
    steer_key: str = ""
    interventions: tuple[Intervention, ...] = ()


@dataclass
class CompletionRequest:
    """A validated legacy ``/v1/completions`` body (steering filled in as for :class:`ChatRequest`)."""

    prompts: list  # each a string or a list of token ids
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    steer_key: str = ""
    interventions: tuple[Intervention, ...] = ()


@dataclass
class SteeringRequest:
    """The ``saetools`` field of a request that steers: its items, still to be validated one by
    one (:func:`steer_item`, :func:`clamp_item`), and ``key``, the canonical JSON of both lists."""

    key: str
    steer: list
    clamp: list


@dataclass
class SteerItem:
    """One validated ``saetools.steer`` item: an inline ``vector`` or a ``direction`` file name."""

    site: str
    op: str
    alpha: float
    value: float | str | None
    positions: str
    unit: bool
    vector: list | None
    direction: object
    alpha_scale: str = "abs"  # "norm": alpha is a fraction of the site's mean residual norm


@dataclass
class ClampItem:
    """One validated ``saetools.clamp`` item: latent ``ids`` of the SAE named ``sae`` set to
    ``values``."""

    sae: str
    ids: list[int]
    values: list[float]
    positions: str


# --------------------------------------------------------------------------------------------
# Bodies and shared options


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_finite(x) -> bool:
    """A JSON number that is finite as a float (a 400-digit integer is not: it overflows)."""
    try:
        return _is_num(x) and math.isfinite(float(x))
    except OverflowError:
        return False


MAX_JSON_DEPTH = 64  # deepest nesting of arrays and objects a body may have
SEED_RANGE = (-(2**63), 2**63 - 1)  # a seed is a signed 64-bit integer, as the engine takes it


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes) -> dict:
    """A request body as a JSON object (``NaN`` and ``Infinity`` are refused, and so is nesting
    deeper than :data:`MAX_JSON_DEPTH`)."""
    too_deep = bad_request(
        f"the JSON body is nested too deeply: at most {MAX_JSON_DEPTH} levels of arrays and "
        "objects are allowed",
        code="invalid_json",
    )
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(
            f"We could not parse the JSON body of your request ({e}). The body must be a JSON object.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    if json_depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise too_deep
    return body


def json_depth(obj, stop: int) -> int:
    """How deeply arrays and objects nest in ``obj`` (a scalar: 0), counted without recursion;
    stops looking once it passes ``stop``."""
    deepest = 0
    stack = [(obj, 1)] if isinstance(obj, (dict, list)) else []
    while stack:
        x, d = stack.pop()
        deepest = max(deepest, d)
        if d > stop:
            break
        items = x.values() if isinstance(x, dict) else x
        kinds = set(map(type, items))  # at C speed: most lists hold only numbers or strings
        if dict in kinds or list in kinds:
            stack.extend((c, d + 1) for c in items if isinstance(c, (dict, list)))
    return deepest


def check_model(body: dict, cfg: ServeConfig) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("you must provide a model parameter", "model")
    if model not in (cfg.model_name, *cfg.aliases):
        raise APIError(
            404,
            f"The model `{model}` does not exist; this server serves `{cfg.model_name}`.",
            param="model",
            code="model_not_found",
        )


def _number(body: dict, name: str, default: float, lo: float, hi: float, *, lo_open=False):
    v = body.get(name)
    if v is None:
        return default
    if not is_finite(v):
        if _is_num(v):  # a huge integer: out of range rather than not a number
            raise bad_request(f"{name} must be in [{lo}, {hi}], got a number beyond it", name)
        raise bad_request(f"{name} must be a number, not {v!r}", name)
    if v < lo or v > hi or (lo_open and v == lo):
        rng = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise bad_request(f"{name} must be in {rng}, got {v}", name, "invalid_value")
    return float(v)


def _stop(body: dict, cfg: ServeConfig) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise bad_request("stop must be a string or a list of strings", "stop")
    if len(stop) > cfg.max_stop or any(not s for s in stop):
        raise bad_request(f"stop takes at most {cfg.max_stop} non-empty strings", "stop")
    return stop


def _streaming(body: dict) -> tuple[bool, bool]:
    """``stream`` and ``stream_options.include_usage``."""
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    so = body.get("stream_options")
    include_usage = False
    if so is not None:
        if not stream:
            raise bad_request(
                "stream_options is only allowed when stream is true", "stream_options"
            )
        if not isinstance(so, dict):
            raise bad_request("stream_options must be an object", "stream_options")
        include_usage = bool(so.get("include_usage", False))
    return stream, include_usage


def sampling_options(body: dict, cfg: ServeConfig, *, min_tokens: int) -> dict:
    """The sampling and streaming fields both endpoints share, validated."""
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    n = body.get("n", 1) if body.get("n") is not None else 1
    if not _is_int(n) or not 1 <= n <= cfg.max_n:
        raise bad_request(f"n must be an integer from 1 to {cfg.max_n}, got {n!r}", "n")
    max_tokens = None
    for name in ("max_tokens", "max_completion_tokens"):
        v = body.get(name)
        if v is None:
            continue
        if not _is_int(v) or v < min_tokens:
            raise bad_request(f"{name} must be an integer >= {min_tokens}, got {v!r}", name)
        max_tokens = v
    stop = _stop(body, cfg)
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad_request("seed must be an integer", "seed")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise bad_request(
            f"seed must be a 64-bit signed integer (from {SEED_RANGE[0]} to {SEED_RANGE[1]})",
            "seed",
            "invalid_value",
        )
    stream, include_usage = _streaming(body)
    for name, allowed in IGNORED_IF_DEFAULT.items():
        if name in body and not any(body[name] == a for a in allowed):
            raise bad_request(
                f"{name} is not supported by this server", name, "unsupported_parameter"
            )
    return dict(
        temperature=temperature,
        top_p=top_p,
        n=n,
        max_tokens=max_tokens,
        stop=stop,
        seed=seed,
        stream=stream,
        include_usage=include_usage,
    )


# --------------------------------------------------------------------------------------------
# /v1/chat/completions


def parse_chat(body: dict, cfg: ServeConfig) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body (all but its ``saetools`` field)."""
    check_model(body, cfg)
    messages = _messages(body.get("messages"))
    o = sampling_options(body, cfg, min_tokens=1)
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise bad_request("logprobs must be a boolean", "logprobs")
    top = body.get("top_logprobs")
    if top is None:
        top = 0
    elif not _is_int(top) or not 0 <= top <= cfg.max_top_logprobs:
        raise bad_request(
            f"top_logprobs must be an integer from 0 to {cfg.max_top_logprobs}", "top_logprobs"
        )
    elif top and not logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
    rf = body.get("response_format")
    if rf is not None and rf != {"type": "text"}:
        raise bad_request("only response_format {'type': 'text'} is supported", "response_format")
    return ChatRequest(
        messages=messages,
        params=SamplingParams(
            max_tokens=o["max_tokens"] or 1,
            temperature=o["temperature"],
            top_p=o["top_p"],
            stop=o["stop"],
            logprobs=logprobs,
            top_logprobs=top,
            seed=o["seed"],
        ),
        max_tokens_given=o["max_tokens"] is not None,
        n=o["n"],
        stream=o["stream"],
        include_usage=o["include_usage"],
    )


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object with role and content", where)
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise bad_request(
                f"{where}.role must be system, developer, user or assistant, not {role!r}",
                f"{where}.role",
            )
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    raise bad_request(
                        f"{where}.content: only text parts are supported", f"{where}.content"
                    )
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad_request(f"{where}.content must be a string", f"{where}.content")
        out.append({"role": role, "content": content})
    return out


def fit_chat_context(
    req: ChatRequest, n_prompt: int, limit: int | None, default_max_tokens: int
) -> None:
    """Refuse a chat prompt of ``n_prompt`` tokens whose completion does not fit the model's
    context ``limit``; a request without ``max_tokens`` gets ``default_max_tokens``, capped by
    the room left."""
    p = n_prompt
    if limit is not None:
        room = limit - p
        mt = req.params.max_tokens if req.max_tokens_given else 1
        if room < mt:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{p + mt} tokens ({p} in the messages, {mt} in the completion). Please reduce the "
                "length of the messages or completion.",
                "messages",
                "context_length_exceeded",
            )
    if not req.max_tokens_given:
        mt = default_max_tokens
        if limit is not None:
            mt = min(mt, limit - p)
        req.params = dataclasses.replace(req.params, max_tokens=mt)


# --------------------------------------------------------------------------------------------
# /v1/completions


def parse_completion(body: dict, cfg: ServeConfig, vocab: int) -> CompletionRequest:
    """Validate a legacy ``/v1/completions`` body (all but its ``saetools`` field; prompt: a
    string, a list of strings, a list of token ids below ``vocab`` or a list of such lists)."""
    check_model(body, cfg)
    prompts = _prompts(body.get("prompt"), vocab)
    o = sampling_options(body, cfg, min_tokens=0)
    echo = body.get("echo") or False
    if not isinstance(echo, bool):
        raise bad_request("echo must be a boolean", "echo")
    logprobs = body.get("logprobs")
    if logprobs is not None and (
        not _is_int(logprobs) or not 0 <= logprobs <= cfg.max_top_logprobs
    ):
        raise bad_request(
            f"logprobs must be an integer from 0 to {cfg.max_top_logprobs}", "logprobs"
        )
    best_of = body.get("best_of")
    if best_of is not None and best_of != o["n"]:
        raise bad_request("best_of is not supported (leave it unset or equal to n)", "best_of")
    if body.get("suffix"):
        raise bad_request(
            "suffix is not supported by this server", "suffix", "unsupported_parameter"
        )
    if o["max_tokens"] == 0 and o["stream"] and not echo:
        raise bad_request("max_tokens 0 without echo streams nothing", "max_tokens")
    given = o["max_tokens"] is not None
    return CompletionRequest(
        prompts=prompts,
        params=SamplingParams(
            max_tokens=o["max_tokens"] if given else 16,  # OpenAI's default for completions
            temperature=o["temperature"],
            top_p=o["top_p"],
            stop=o["stop"],
            logprobs=logprobs is not None,
            top_logprobs=logprobs or 0,
            seed=o["seed"],
            prompt_logprobs=logprobs if echo and logprobs is not None else None,
            eos_logprob=True,
        ),
        n=o["n"],
        stream=o["stream"],
        include_usage=o["include_usage"],
        echo=echo,
    )


def _prompts(prompt, vocab: int) -> list[str | list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise bad_request(
            "prompt must be a string, a list of strings, a list of token ids or a list of "
            "such lists",
            "prompt",
        )
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            continue
        if not isinstance(p, list) or not p or not all(_is_int(t) for t in p):
            raise bad_request(
                f"prompt[{i}] must be a string or a non-empty list of token ids", "prompt"
            )
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise bad_request(
                f"prompt[{i}] has token ids outside the vocabulary [0, {vocab}): {bad[:5]}",
                "prompt",
            )
    return prompt


def check_prompt_tokens(i: int, ids: list[int]) -> None:
    """A string prompt (``prompt[i]``) must tokenize to at least one token."""
    if not ids:
        raise bad_request(f"prompt[{i}] is empty: it needs at least one token", "prompt")


def check_completion_context(
    req: CompletionRequest, ids: Sequence[Sequence[int]], limit: int | None
) -> None:
    """Refuse prompts whose completion does not fit the model's context ``limit``."""
    if limit is None:
        return
    for i, p in enumerate(ids):
        # the last sampled token is never fed back: m new tokens need m - 1 positions
        if len(p) + max(req.params.max_tokens - 1, 0) > limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {len(p) + req.params.max_tokens} tokens ({len(p)} in prompt[{i}], "
                f"{req.params.max_tokens} in the completion). Please reduce the length of "
                "the prompt or completion.",
                "prompt",
                "context_length_exceeded",
            )


# --------------------------------------------------------------------------------------------
# The ``saetools`` extension field


def parse_steering(ext) -> SteeringRequest | None:
    """The ``saetools`` field: None when it asks for nothing (the server's default steering)."""
    if ext is None:
        return None
    if not isinstance(ext, dict):
        raise bad_request("saetools must be an object like {'steer': [...]}", "saetools")
    extra = set(ext) - {"steer", "clamp"}
    if extra:
        raise bad_request(
            f"unknown saetools field(s) {', '.join(sorted(extra))}; known: steer, clamp",
            "saetools",
        )
    spec, clamp = ext.get("steer"), ext.get("clamp")
    if spec is None and clamp is None:
        return None
    if spec is not None and not isinstance(spec, list):
        raise bad_request("saetools.steer must be a list of interventions", "saetools.steer")
    if clamp is not None and not isinstance(clamp, list):
        raise bad_request("saetools.clamp must be a list of latent clamps", "saetools.clamp")
    try:
        key = json.dumps({"steer": spec or [], "clamp": clamp or []}, sort_keys=True)
    except (TypeError, ValueError):
        raise bad_request(
            "saetools.steer and saetools.clamp must be plain JSON", "saetools"
        ) from None
    return SteeringRequest(key, spec or [], clamp or [])


def _positions(item: dict, where: str) -> str:
    positions = item.get("positions", "all")
    if positions not in POSITIONS:
        raise bad_request(
            f"{where}.positions must be one of {', '.join(POSITIONS)}", f"{where}.positions"
        )
    return positions


def steer_item(item, where: str) -> SteerItem:
    """Validate one ``saetools.steer`` item (``where``: its place in the body, for messages)."""
    if not isinstance(item, dict):
        raise bad_request(f"{where} must be an object", where)
    extra = set(item) - STEER_KEYS
    if extra:
        raise bad_request(
            f"{where}: unknown field(s) {', '.join(sorted(extra))}; known: {', '.join(sorted(STEER_KEYS))}",
            where,
        )
    site = item.get("site")
    if not isinstance(site, str) or not site.strip():
        raise bad_request(f"{where}.site must be a site name like blocks.9.hook_resid_post", where)
    op = item.get("op", "add")
    if op not in OPS:
        raise bad_request(f"{where}.op must be one of {', '.join(OPS)}, not {op!r}", f"{where}.op")
    alpha = item.get("alpha", 1.0)
    if not is_finite(alpha):
        raise bad_request(f"{where}.alpha must be a finite number", f"{where}.alpha")
    value = item.get("value")
    if value is not None and not (isinstance(value, str) or _is_num(value)):
        raise bad_request(f"{where}.value must be a number or a statistic name", f"{where}.value")
    if _is_num(value) and not is_finite(value):
        raise bad_request(f"{where}.value must be a finite number", f"{where}.value")
    if op == "clamp" and value is None:
        raise bad_request(f"{where}: clamp needs a value", f"{where}.value")
    positions = _positions(item, where)
    unit = item.get("unit", True)
    if not isinstance(unit, bool):
        raise bad_request(f"{where}.unit must be a boolean", f"{where}.unit")
    vector = None
    if "vector" in item:
        if "direction" in item:
            raise bad_request(f"{where}: give either direction or vector, not both", where)
        vector = item["vector"]
        if not isinstance(vector, list) or not all(_is_num(x) for x in vector):
            raise bad_request(f"{where}.vector must be a list of numbers", f"{where}.vector")
        if not all(is_finite(x) for x in vector):
            raise bad_request(f"{where}.vector must hold finite numbers", f"{where}.vector")
        if isinstance(value, str):
            raise bad_request(f"{where}.value must be a number with an inline vector", where)
    alpha_scale = item.get("alpha_scale", "abs")
    if alpha_scale not in ("abs", "norm") or (alpha_scale == "norm" and vector is not None):
        raise bad_request(
            f"{where}.alpha_scale must be 'abs' or 'norm' ('norm' needs a direction file, whose "
            "statistics record the site's residual norm)",
            f"{where}.alpha_scale",
        )
    return SteerItem(
        site, op, alpha, value, positions, unit, vector, item.get("direction"), alpha_scale
    )


def clamp_item(item, where: str, loaded: Collection[str]) -> ClampItem:
    """Validate one ``saetools.clamp`` item against the names of the ``loaded`` SAEs (a dict's
    keys)."""
    if not isinstance(item, dict):
        raise bad_request(f"{where} must be an object like {{'latents': {{'203': 0}}}}", where)
    extra = set(item) - CLAMP_KEYS
    if extra:
        raise bad_request(
            f"{where}: unknown field(s) {', '.join(sorted(extra))}; known: "
            f"{', '.join(sorted(CLAMP_KEYS))}",
            where,
        )
    name = item.get("sae")
    if name is None:
        if len(loaded) != 1:
            raise bad_request(
                f"{where}.sae is required: loaded SAEs are {', '.join(loaded) or 'none'} "
                "(start the server with --sae NAME=PATH)",
                f"{where}.sae",
            )
        name = next(iter(loaded))
    if name not in loaded:
        raise bad_request(
            f"{where}.sae {name!r} is not loaded; loaded: {', '.join(loaded) or 'none'}",
            f"{where}.sae",
        )
    lat = item.get("latents")
    if not isinstance(lat, dict) or not lat:
        raise bad_request(
            f"{where}.latents must be an object of latent id -> value, like {{'203': 0}}",
            f"{where}.latents",
        )
    ids, vals = [], []
    for k, v in lat.items():
        try:
            j = int(k)
        except (TypeError, ValueError):
            raise bad_request(
                f"{where}.latents: {k!r} is not a latent id", f"{where}.latents"
            ) from None
        if not _is_num(v):
            raise bad_request(f"{where}.latents[{k}] must be a number", f"{where}.latents")
        if not is_finite(v):
            raise bad_request(f"{where}.latents[{k}] must be a finite number", f"{where}.latents")
        ids.append(j)
        vals.append(float(v))
    return ClampItem(name, ids, vals, _positions(item, where))
