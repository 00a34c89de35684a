"""The HTTP server around the app: transport limits the project sets (not uvicorn's defaults), the worker supervisor,
and `run`, the start-up of `robust-retrieval serve`.

uvicorn (0.55, httptools) bounds neither the size of a request's headers nor the time a client may take to send
them, and its connection cap answers in plain text, so `BoundedHttpProtocol` adds all three. A new connection must
send its request line within request_line_timeout_s and only counts against the cap once it has, so sockets that
connect and send nothing are closed in seconds and cannot take the connections that real clients need. Body-read
time is bounded by serve.middleware.body_limit, idle keep-alive by uvicorn's own timer. deploy/nginx.conf repeats
these limits for deployments behind a reverse proxy.
"""

from __future__ import annotations

import logging
import os
import pickle
import resource
import shutil
import signal
import tempfile
import time
import weakref
from pathlib import Path

import uvicorn
from pydantic import ValidationError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from retrieval.errors import UserError
from serve.errors import error_body
from serve.log import configure_logging
from serve.middleware.security_headers import security_headers
from serve.settings import Settings

log = logging.getLogger("serve.server")
LINGER_S = 2.0
HEALTH_POLL_S = 0.1
"""How often the supervisor, waiting for a worker's health answer, checks that the worker is still alive."""


def _json_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = error_body(code, message)
    extra = "".join(f"{name}: {value}\r\n" for name, value in security_headers("application/json"))
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n")
    return head.encode("ascii") + body


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop httptools mid-request (it reaches uvicorn as a parser error)."""


_requesting: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""uvicorn ServerState -> its connections that have sent a request line (those the connection cap counts)."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for a new connection's request line (closed after it), a limit
    on header bytes (431), a deadline for the headers from a request's first byte (408, then close), and a cap on
    the connections that have sent a request line, answered as JSON (503).

    Header bytes are counted twice over, each against the limit: as raw bytes before parsing (headers that arrive
    over many reads, which httptools would buffer whole) and as parsed lengths (headers that arrive in one read
    and are parsed before data_received returns)."""

    def __init__(self, config: ServerConfig, server_state, *args, **kwargs) -> None:
        super().__init__(config, server_state, *args, **kwargs)
        self.limits = config.settings
        self.requesting: set = _requesting.setdefault(server_state, set())

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._raw_header_bytes, self._parsed_header_bytes, self._in_headers = 0, 0, True
        self._header_timer, self._refused, self._too_large = None, False, False
        self._line_timer = self.loop.call_later(self.limits.request_line_timeout_s, self._no_request_line)

    def on_message_begin(self) -> None:
        self._parsed_header_bytes = 0
        self._start_headers()
        super().on_message_begin()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering close: drain what the client still sends, so that it can read our answer
        if self._line_timer is not None and b"\n" in data:
            self._line_timer.cancel()
            self._line_timer = None
            self.requesting.add(self)
        if self._in_headers:
            end = data.find(b"\r\n\r\n")
            self._raw_header_bytes += len(data) if end < 0 else end + 4
            if self._raw_header_bytes > self.limits.max_header_bytes:
                self._refuse_headers()
                return
        super().data_received(data)

    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_parsed(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_parsed(self, size: int) -> None:
        self._parsed_header_bytes += size
        if self._parsed_header_bytes > self.limits.max_header_bytes:
            self._too_large = True
            raise _HeadersTooLarge

    def send_400_response(self, msg: str) -> None:
        if self._too_large:  # the parser error was ours: the headers are too large, not malformed
            self._refuse_headers()
        elif not self._refused:
            super().send_400_response(msg)

    def _refuse_headers(self) -> None:
        self._refuse(431, "Request Header Fields Too Large", "headers_too_large",
                     f"request line and headers larger than {self.limits.max_header_bytes} bytes")

    def on_message_complete(self) -> None:
        self._in_headers = True
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        self._stop_headers()
        self._in_headers, self._raw_header_bytes = False, 0
        if len(self.requesting) <= self.limits.max_connections:
            super().on_headers_complete()
            return
        app, self.app = self.app, _too_many_connections(self.limits.max_connections)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        self._stop_headers()
        if self._line_timer is not None:
            self._line_timer.cancel()
        self.requesting.discard(self)
        super().connection_lost(exc)

    def _no_request_line(self) -> None:
        """A connection without a whole request line after request_line_timeout_s: closed (with a 408 if it began
        one, silently if it sent nothing)."""
        self._line_timer = None
        if self._header_timer is None:
            self.transport.close()
            return
        self._refuse(408, "Request Timeout", "request_timeout",
                     f"request line not received within {self.limits.request_line_timeout_s} s")

    def _start_headers(self) -> None:
        if self._header_timer is None:
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _stop_headers(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        self._refuse(408, "Request Timeout", "request_timeout",
                     f"request headers not received within {self.limits.header_timeout_s} s")

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        """Answer, stop parsing, and close after LINGER_S (closing at once would reset the connection while the
        client is still sending, and the reset discards the answer before the client reads it)."""
        self._stop_headers()
        if not self.transport.is_closing() and not self._refused:
            self._refused = True
            self.transport.write(_json_response(status, reason, code, message))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)


def _too_many_connections(cap: int):
    async def app(scope, receive, send) -> None:
        body = error_body("too_many_connections", f"more than {cap} open connections; retry later")
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), (b"retry-after", b"1"),
            *((name.encode(), value.encode()) for name, value in security_headers("application/json"))]})
        await send({"type": "http.response.body", "body": body})

    return app


class ServerConfig(uvicorn.Config):
    """uvicorn's Config carrying the service settings to BoundedHttpProtocol (in every worker: it is pickled)."""

    def __init__(self, app, settings: Settings, **options) -> None:
        super().__init__(app, **options)
        self.settings = settings


def uvicorn_config(app, settings: Settings, **overrides) -> ServerConfig:
    """The one place the transport limits become server settings (serve and the tests use it alike)."""
    options = dict(host=settings.host, port=settings.port, http=BoundedHttpProtocol, log_config=None,
                   access_log=False, lifespan="on", timeout_keep_alive=settings.keep_alive_s,
                   timeout_graceful_shutdown=settings.graceful_shutdown_s,
                   timeout_worker_healthcheck=settings.worker_start_timeout_s, workers=settings.workers)
    return ServerConfig(app, settings, **(options | overrides))


class LoggingSupervisor(Multiprocess):
    """uvicorn's multi-worker supervisor, saying why it replaces a worker (uvicorn only logs that it 'died').

    The loop is uvicorn 0.55's `keep_subprocess_alive` with the reason added and a health check (`_answers`) that
    notices a worker dying while the supervisor waits for its answer."""

    def keep_subprocess_alive(self) -> None:
        timeout = self.config.timeout_worker_healthcheck
        for idx, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if _answers(process, timeout):
                continue
            code = process.process.exitcode
            process.kill()
            process.join()
            if code is None:
                why = f"did not answer the supervisor's health check within {timeout} s (RR_WORKER_START_TIMEOUT_S)"
            elif code < 0:
                why = f"was killed by signal {signal.Signals(-code).name}"
            else:
                why = f"exited with status {code} (its log lines above say why)"
            if code == STARTUP_FAILURE:
                log.error("worker %s %s before it could serve; stopping", process.pid, why)
                self.should_exit.set()
                return
            log.error("worker %s %s; starting another", process.pid, why)
            replacement = Process(self.config, self.sockets)
            replacement.start()
            self.processes[idx] = replacement


def _answers(process: Process, timeout: float) -> bool:
    """Whether a live worker answers the supervisor's health ping within `timeout`. uvicorn waits out the whole
    timeout on the pipe, so a worker killed between ping and answer was replaced only RR_WORKER_START_TIMEOUT_S
    later; polling in short slices notices the death at once."""
    if not process.process.is_alive():
        return False
    deadline = time.monotonic() + timeout
    try:
        process.parent_conn.send(b"ping")
        while time.monotonic() < deadline:
            if process.parent_conn.poll(HEALTH_POLL_S):
                process.parent_conn.recv()
                return True
            if not process.process.is_alive():
                return False
    except (OSError, EOFError, pickle.UnpicklingError):
        return False
    return False


def create_app_from_env():
    """uvicorn factory (one call per worker process): settings come from the RR_* environment."""
    from serve.app import create_app

    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def run(**options: object) -> None:
    """Validate the options, hand them to the workers as RR_* variables, and serve with the project's limits."""
    given = {name: value for name, value in options.items() if value is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise UserError(f"invalid serve settings: {where + ': ' if where else ''}{error['msg']}") from None
    if not settings.index.is_dir():
        raise UserError(f"index directory {settings.index} does not exist")
    configure_logging(settings.log_level)
    _raise_open_files_limit()
    if settings.workers == 1:
        uvicorn.Server(uvicorn_config(_single_app(settings), settings)).run()
        return
    run_dir = Path(tempfile.mkdtemp(prefix="rr-serve-"))  # the workers' shared serving pointer (serve.state)
    for name, value in (given | {"run_dir": run_dir}).items():
        os.environ[f"RR_{name.upper()}"] = str(value)
    config = uvicorn_config("serve.server:create_app_from_env", settings, factory=True)
    try:
        LoggingSupervisor(config, sockets=[config.bind_socket()]).run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _raise_open_files_limit() -> None:
    """Soft limit of open files up to the hard one (often 1024 -> 1M): each connection, idle or not, is a file, and
    running out of them refuses every client, not only the one that holds thousands."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard if hard != resource.RLIM_INFINITY else 1 << 20, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _single_app(settings: Settings):
    from serve.app import create_app

    return create_app(settings)
