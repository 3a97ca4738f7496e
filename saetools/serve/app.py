"""The HTTP layer: :class:`ChatServer` wires request validation (:mod:`.protocol`), per-request
steering (:mod:`.steering`) and the model's worker (:mod:`.engine`) into a FastAPI application
(:meth:`ChatServer.app`); :func:`serve` runs it in the foreground, :func:`serve_in_thread` in a
background thread.

Tokenization through the chat template runs in its own thread, with its own tokenizer copy; the
event loop only awaits queues and never runs the model. Bodies are read against
``max_body_bytes`` and requests checked against the limits of :mod:`.limits`; every request gets
an id (:mod:`.middleware`); a non-streaming request whose client disconnects stops its rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request
from torch import nn

from ..capture import ChatExample, encode_chat
from ..steer import Intervention
from .completions import text_completion, text_events
from .engine import Engine, EngineRequest
from .limits import admit, check_work, read_body
from .middleware import RequestIds, internal_error, request_id_of
from .protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    ServeConfig,
    bad_request,
    check_completion_context,
    check_prompt_tokens,
    fit_chat_context,
    parse_body,
    parse_chat,
    parse_completion,
)
from .responses import Collected, chat_completion, chat_events, collect, response_base
from .steering import Steering

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.2  # how often a non-streaming request checks that its client is still there


class ChatServer:
    """Validation, tokenization and response formatting around an :class:`Engine`.

    ``directions`` maps names to loaded :class:`~saetools.directions.DirectionSet` objects that
    requests may steer with (``"direction": name``); ``saes`` maps names to loaded SAEs
    (:func:`saetools.sae.load_sae`) whose latents requests may clamp (``saetools.clamp``);
    ``default_steering`` (interventions and :class:`~saetools.sae.LatentClamp` objects) applies
    to requests that carry neither ``saetools.steer`` nor ``saetools.clamp``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        config: ServeConfig | None = None,
        *,
        directions: dict | None = None,
        saes: dict | None = None,
        default_steering: Sequence[Intervention] = (),
    ):
        self.config = config or ServeConfig()
        self.model = model
        self.engine = Engine(
            model,
            tokenizer,
            max_batch=self.config.max_batch,
            batch_wait_ms=self.config.batch_wait_ms,
        )
        self._tokenizer = copy.deepcopy(tokenizer)  # encoding only, in self._tok_pool
        self._special = frozenset(getattr(tokenizer, "all_special_tokens", ()))
        self._tok_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saetools-tok")
        self.steering = Steering(
            model, self.config, directions=directions, saes=saes, default=default_steering
        )
        self.created = int(time.time())

    @property
    def directions(self) -> dict:
        return self.steering.directions

    @property
    def saes(self) -> dict:
        return self.steering.saes

    @property
    def default_steering(self) -> tuple[Intervention, ...]:
        return self.steering.default

    @property
    def n_layers(self) -> int:
        return self.steering.n_layers

    # ---------------------------------------------------------------- requests
    def parse(self, body: dict) -> ChatRequest:
        """Validate a ``/v1/chat/completions`` body."""
        req = parse_chat(body, self.config)
        req.steer_key, req.interventions = self.steering.resolve(body.get("saetools"))
        return req

    def parse_completion(self, body: dict) -> CompletionRequest:
        """Validate a legacy ``/v1/completions`` body (prompt: a string, a list of strings, a list
        of token ids or a list of such lists)."""
        req = parse_completion(body, self.config, self.engine.vocab)
        req.steer_key, req.interventions = self.steering.resolve(body.get("saetools"))
        return req

    def _encode(self, messages: list[dict]) -> list[int]:
        return list(encode_chat(self._tokenizer, ChatExample(messages=tuple(messages))).input_ids)

    def _encode_prompts(self, prompts: list) -> tuple[list[list[int]], list[str]]:
        ids, texts = [], []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                got = list(self._tokenizer(p, add_special_tokens=True)["input_ids"])
                check_prompt_tokens(i, got)
                ids.append(got)
                texts.append(p)
            else:
                ids.append(list(p))
                texts.append(self._tokenizer.decode(p))
        return ids, texts

    async def prepare(self, raw: bytes) -> tuple[ChatRequest, list[int]]:
        """Parse and validate a request body and tokenize its prompt (off the event loop)."""
        req = self.parse(parse_body(raw))
        loop = asyncio.get_running_loop()
        try:
            ids = await loop.run_in_executor(self._tok_pool, self._encode, req.messages)
        except Exception as e:
            raise bad_request(
                f"could not format the messages with the chat template: {e}", "messages"
            ) from None
        fit_chat_context(req, len(ids), self.engine.context_length, self.config.default_max_tokens)
        check_work(req, [len(ids)], self.config)
        return req, ids

    async def prepare_completion(
        self, raw: bytes
    ) -> tuple[CompletionRequest, list[list[int]], list[str]]:
        """Parse and validate a ``/v1/completions`` body and tokenize its prompts (off the event
        loop); returns the request, each prompt's token ids and each prompt's text."""
        req = self.parse_completion(parse_body(raw))
        loop = asyncio.get_running_loop()
        ids, texts = await loop.run_in_executor(self._tok_pool, self._encode_prompts, req.prompts)
        check_completion_context(req, ids, self.engine.context_length)
        check_work(req, [len(p) for p in ids], self.config)
        return req, ids, texts

    def admit(self, req: ChatRequest | CompletionRequest) -> None:
        """Refuse a request (429) when its rows would make the worker's queue longer than
        ``max_queue``: a burst gets a clear retry-later answer instead of unbounded memory."""
        admit(req, self.config, self.engine.waiting)

    # ---------------------------------------------------------------- responses
    def _submit(
        self,
        req: ChatRequest | CompletionRequest,
        ids: list[list[int]],
        request_id: str | None = None,
    ) -> tuple[list[EngineRequest], asyncio.Queue]:
        """Queue ``n`` rows per prompt; events arrive with choice index ``prompt * n + j``."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        handles = []
        for k, prompt_ids in enumerate(ids):

            def sink(ev, _loop=loop, _q=q, _off=k * req.n):
                _loop.call_soon_threadsafe(_q.put_nowait, (ev[0], _off + ev[1], *ev[2:]))

            handles.append(
                self.engine.submit(
                    prompt_ids,
                    req.params,
                    n=req.n,
                    interventions=req.interventions,
                    steer_key=req.steer_key,
                    sink=sink,
                    request_id=request_id,
                )
            )
        return handles, q

    async def _collect(
        self, q: asyncio.Queue, total: int, handles: list[EngineRequest], request
    ) -> Collected:
        """:func:`~.responses.collect`, watching ``request`` (a Starlette request, or None): when
        its client disconnects, its rows stop (the engine drops them at its next step)."""
        task = asyncio.ensure_future(collect(q, total, handles))
        try:
            while request is not None:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    break
                if await request.is_disconnected():
                    raise APIError(499, "the client closed the request")
            return await task
        finally:
            if not task.done():
                for h in handles:
                    h.cancelled = True
                task.cancel()

    def _base(self, kind: str) -> dict:
        return response_base(kind, self.config.model_name)

    async def complete(self, req: ChatRequest, ids: list[int], request=None) -> dict:
        """The ``/v1/chat/completions`` response (``chat.completion``) for a parsed request
        (``request``: the HTTP request, watched for a client that leaves, and its id)."""
        handles, q = self._submit(req, [ids], None if request is None else request_id_of(request))
        got = await self._collect(q, req.n, handles, request)
        return chat_completion(req, len(ids), got, self._base("chat.completion"))

    async def stream(self, req: ChatRequest, ids: list[int], request_id: str | None = None):
        """The ``/v1/chat/completions`` server-sent events for a parsed streaming request."""
        handles, q = self._submit(req, [ids], request_id)
        base = self._base("chat.completion.chunk")
        try:
            async for event in chat_events(req, len(ids), q, base):
                yield event
        finally:
            for h in handles:
                h.cancelled = True

    async def complete_text(
        self, req: CompletionRequest, ids: list[list[int]], texts: list[str], request=None
    ) -> dict:
        """The ``/v1/completions`` response (``text_completion``) for a parsed request (``request``
        as for :meth:`complete`)."""
        handles, q = self._submit(req, ids, None if request is None else request_id_of(request))
        got = await self._collect(q, req.n * len(ids), handles, request)
        return text_completion(req, ids, texts, got, self._base("text_completion"), self._special)

    async def stream_text(
        self,
        req: CompletionRequest,
        ids: list[list[int]],
        texts: list[str],
        request_id: str | None = None,
    ):
        """The ``/v1/completions`` server-sent events for a parsed streaming request."""
        handles, q = self._submit(req, ids, request_id)
        base = self._base("text_completion")
        try:
            async for event in text_events(req, ids, texts, q, base, self._special):
                yield event
        finally:
            for h in handles:
                h.cancelled = True

    def models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.config.model_name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "saetools",
                }
            ],
        }

    def info(self) -> dict:
        """What ``GET /v1/saetools`` returns: loaded directions, default steering, limits."""
        return {
            "model": self.config.model_name,
            "context_length": self.engine.context_length,
            "n_layers": self.n_layers,
            "directions": {name: ds.sites for name, ds in self.directions.items()},
            "saes": {
                name: {"site": sae.site, "d_sae": sae.d_sae, "source": str(sae.source)}
                for name, sae in self.saes.items()
            },
            "default_steering": self.steering.describe(),
            "max_batch": self.config.max_batch,
            "limits": {
                name: getattr(self.config, name)
                for name in (
                    "max_body_bytes",
                    "max_request_tokens",
                    "max_steer_magnitude",
                    "max_queue",
                    "max_n",
                )
            },
            "stats": dict(self.engine.stats),
        }

    # ---------------------------------------------------------------- app
    def app(self):
        """The FastAPI application (starts the engine on startup, stops it on shutdown)."""
        from fastapi import FastAPI

        @contextlib.asynccontextmanager
        async def lifespan(app):
            self.engine.start()
            try:
                yield
            finally:
                self.engine.close()

        app = FastAPI(title="saetools serve", lifespan=lifespan)
        app.add_middleware(RequestIds)
        _add_error_handlers(app)
        self._add_info_routes(app)
        self._add_generation_routes(app)
        return app

    def _check_key(self, request: Request) -> None:
        key = self.config.api_key
        if key and request.headers.get("authorization", "") != f"Bearer {key}":
            raise APIError(
                401,
                "Incorrect API key provided.",
                type="invalid_request_error",
                code="invalid_api_key",
            )

    def _add_info_routes(self, app) -> None:
        """``/health``, ``/v1/models`` and ``/v1/saetools``."""

        @app.get("/health")
        async def health():
            return {"status": "ok"}

        @app.get("/v1/models")
        async def list_models(request: Request):
            self._check_key(request)
            return self.models()

        @app.get("/v1/models/{model_id:path}")
        async def get_model(model_id: str, request: Request):
            self._check_key(request)
            if model_id not in (self.config.model_name, *self.config.aliases):
                raise APIError(
                    404,
                    f"The model `{model_id}` does not exist",
                    param="model",
                    code="model_not_found",
                )
            return self.models()["data"][0]

        @app.get("/v1/saetools")
        async def info(request: Request):
            self._check_key(request)
            return self.info()

    def _add_generation_routes(self, app) -> None:
        """``/v1/chat/completions`` and ``/v1/completions``, streaming or not."""
        from fastapi.responses import JSONResponse, StreamingResponse

        def events(gen) -> StreamingResponse:
            return StreamingResponse(
                gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            self._check_key(request)
            req, ids = await self.prepare(await read_body(request, self.config.max_body_bytes))
            self.admit(req)
            if req.stream:
                return events(self.stream(req, ids, request_id_of(request)))
            return JSONResponse(await self.complete(req, ids, request))

        @app.post("/v1/completions")
        async def completions(request: Request):
            self._check_key(request)
            raw = await read_body(request, self.config.max_body_bytes)
            req, ids, texts = await self.prepare_completion(raw)
            self.admit(req)
            if req.stream:
                return events(self.stream_text(req, ids, texts, request_id_of(request)))
            return JSONResponse(await self.complete_text(req, ids, texts, request))


def _add_error_handlers(app) -> None:
    """Every error as an OpenAI error body: APIError as it is, HTTP errors (404, 405, ...) and
    FastAPI's own validation errors with their status, anything else as a 500 ``server_error``
    that names only the request id (:class:`~.middleware.RequestIds` logs the traceback)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error(APIError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return error(bad_request(str(exc)))

    @app.exception_handler(Exception)
    async def _server_error(request, exc):  # only what escapes RequestIds comes here
        return error(internal_error(request_id_of(request)))


# --------------------------------------------------------------------------------------------
# Running it


def _uvicorn_server(app, log_level: str):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False)
    return uvicorn.Server(config)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def warn_if_exposed(server: ChatServer, host: str) -> bool:
    """Log a warning (and return True) when ``host`` accepts other machines' connections and the
    server has no API key: anyone who reaches it may use (and steer) the model."""
    if server.config.api_key or is_loopback(host):
        return False
    logger.warning(
        "saetools serve listens on %s without an API key: anyone who can reach this address can "
        "use and steer the model; set --api-key (or $SAETOOLS_API_KEY), or listen on 127.0.0.1",
        host,
    )
    return True


def serve(
    server: ChatServer, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Run the server in the foreground until interrupted (Ctrl-C); warns first when it listens
    beyond this machine without an API key."""
    import uvicorn

    warn_if_exposed(server, host)
    uvicorn.run(server.app(), host=host, port=port, log_level=log_level, access_log=False)


@dataclass
class RunningServer:
    """A server running in a background thread: ``url`` is ``http://host:port``."""

    url: str
    server: ChatServer
    _uv: object = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def base_url(self) -> str:
        """What the ``openai`` client takes as ``base_url``."""
        return self.url + "/v1"

    def stop(self, timeout: float = 30.0) -> None:
        self._uv.should_exit = True
        self._thread.join(timeout)


@contextlib.contextmanager
def serve_in_thread(
    server: ChatServer, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[RunningServer]:
    """Run ``server`` with uvicorn in a background thread (``port=0``: a free port); stop it on exit."""
    warn_if_exposed(server, host)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    uv = _uvicorn_server(server.app(), log_level)
    t = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    t.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if not t.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    running = RunningServer(url=f"http://{host}:{port}", server=server, _uv=uv, _thread=t)
    try:
        yield running
    finally:
        running.stop()
        sock.close()
