"""The play page's server: Starlette (ASGI) on uvicorn, one websocket per open page.

    GET  /       the page (page.html, no external files)
    GET  /info   the run: game, keys, features on / off with the reason
    WS   /ws     the page sends one JSON message per action; the server answers each with the
                 new state (frames as base64 RGB, steps, rewards, deaths, the actions taken)

Messages from the page::

    {"type": "step", "keys": ["ArrowLeft", "ArrowUp"]}
    {"type": "reset"}  or  {"type": "reset", "episode": 12}
    {"type": "temperature", "value": 1.3}
    {"type": "driver", "value": "c"}            ("person" or "c")

Anything else (not JSON, not an object, unknown type, bad values, binary data) is answered by
``{"type": "error", "message": ...}``; the connection and the session stay as they were.
The page paces the steps (one in flight at a time, at most 30 per second); the server steps M
and V's decoder (and the game) in a worker thread so the event loop never waits on torch.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import socket
from importlib import resources

from worldmodels.play.session import PlayModels, PlaySession

MESSAGE_TYPES = ("step", "reset", "temperature", "driver")
MAX_MESSAGE_CHARS = 4096


def page_html() -> str:
    return resources.files("worldmodels.play").joinpath("page.html").read_text()


def handle_message(session: PlaySession, text: str) -> dict:
    """Apply one message from the page; ValueError says what is wrong with a bad one."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise ValueError(f"message too long ({len(text)} characters, at most {MAX_MESSAGE_CHARS})")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object with a 'type'")
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {kind!r}; expected one of {MESSAGE_TYPES}")
    if kind == "step":
        keys = message.get("keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("step: 'keys' must be a list of key names")
        return session.step(keys)
    if kind == "reset":
        episode = message.get("episode")
        if episode is not None and (not isinstance(episode, int) or isinstance(episode, bool)):
            raise ValueError("reset: 'episode' must be an integer")
        return session.reset(episode)
    value = message.get("value")
    if kind == "temperature":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError("temperature: 'value' must be a number")
        session.set_temperature(value)
    else:
        if not isinstance(value, str):
            raise ValueError("driver: 'value' must be 'person' or 'c'")
        session.set_driver(value)
    return session.state()


def build_app(models: PlayModels, seed: int = 0, temperature: float | None = None):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    sessions: set[PlaySession] = set()
    opened = itertools.count()
    info = models.info()
    if temperature is not None:
        info["temperature"] = temperature
    page = page_html()

    async def index(request):
        return HTMLResponse(page)

    async def run_info(request):
        return JSONResponse(info)

    async def play(ws: WebSocket):
        await ws.accept()
        session = await run_in_threadpool(
            PlaySession, models, seed + 1000 * next(opened), info["temperature"]
        )
        sessions.add(session)
        try:
            await ws.send_json(session.state())
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                try:
                    if text is None:
                        raise ValueError("binary messages are not understood; send JSON text")
                    reply = await run_in_threadpool(handle_message, session, text)
                except ValueError as e:
                    reply = {"type": "error", "message": str(e)}
                await ws.send_json(reply)
        except WebSocketDisconnect:
            pass
        finally:
            sessions.discard(session)
            await run_in_threadpool(session.close)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for session in list(sessions):  # pages still open when the server stops
            session.close()

    routes = [Route("/", index), Route("/info", run_info), WebSocketRoute("/ws", play)]
    return Starlette(routes=routes, lifespan=lifespan)


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one. A port in use is an
    error naming it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ValueError(
                f"port {port} on {host} is in use; pick another with --port (0: any free port)"
            ) from None
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(16)
    return sock


def serve(
    models: PlayModels,
    host: str = "127.0.0.1",
    port: int = 8000,
    seed: int = 0,
    temperature: float | None = None,
    on_ready=None,
) -> None:
    """Serve the page until stopped (Ctrl-C, SIGTERM); ``on_ready(url)`` once it listens."""
    import uvicorn

    sock = open_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{shown}:{bound_port}/"
    config = uvicorn.Config(
        build_app(models, seed, temperature),
        log_level="warning",
        timeout_graceful_shutdown=3,
        ws_max_size=MAX_MESSAGE_CHARS * 4,
    )
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
