"""HTTP plumbing: a keep-alive HTTP/1.1 handler and a stoppable threaded server.

The handler only parses the request, asks a :class:`Dispatcher` for a :class:`Response` and
writes it; all behaviour lives in ``routes.py``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

from .wire import Request, Response, json_response

_log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """What the handler needs from the sandbox."""

    def handle(self, role: str, request: Request) -> Response:
        """Answer one request on host ``role``."""
        ...

    def log_request(
        self, role: str, request: Request, response: Response, raw_headers: dict[str, str]
    ) -> None:
        """Record one request and its answer."""
        ...


class SandboxHTTPServer(ThreadingHTTPServer):
    """A threaded server that knows its role and can cut its open keep-alive connections.

    ``shutdown()`` only stops accepting; connections already open would otherwise keep being
    served by their handler threads, and a "stopped" sandbox would still answer a pooled client.
    """

    daemon_threads = True
    # Long benchmark runs open many connections; a small default backlog drops some of them.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: Dispatcher, role: str) -> None:
        self.app = app
        self.role = role
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Track the connection, then hand it to a handler thread."""
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget the connection and close it."""
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Shut down every open connection so blocked handler threads return."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            # OSError: the handler closed it in the meantime.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses pooled connections
    server_version = "HumeSandbox/1.0"
    # Headers and body go out in separate writes; with Nagle on, the second waits for the
    # client's delayed ACK (~40 ms per request on Linux).
    disable_nagle_algorithm = True
    # An idle keep-alive connection gives its thread back after this many seconds.
    timeout = 30

    def version_string(self) -> str:
        """The ``Server`` header: no Python version, like a real service."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr line; the request log records everything."""

    def do_GET(self) -> None:
        """Answer GET."""
        self._dispatch()

    def do_HEAD(self) -> None:
        """Answer HEAD (headers of the GET answer, no body)."""
        self._dispatch()

    # Other methods are routed too, so that they get a proper 405 instead of a bare 501.
    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _drain_request_body(self) -> None:
        # Unread request bytes would be parsed as the next request on this keep-alive connection.
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _dispatch(self) -> None:
        server = cast(SandboxHTTPServer, self.server)
        self._drain_request_body()
        raw_path, _, query_string = self.path.partition("?")
        raw_headers = dict(self.headers.items())
        request = Request(
            method=self.command,
            path=raw_path,
            query=parse_qs(query_string, keep_blank_values=True),
            headers={name.lower(): value for name, value in raw_headers.items()},
        )
        try:
            response = server.app.handle(server.role, request)
        except Exception:  # noqa: BLE001 - logged below, and the client must get an answer
            # A sandbox bug must surface as a 500, not as a hung client.
            _log.exception("sandbox failed to answer %s %s", self.command, raw_path)
            response = json_response(500, {"message": "sandbox internal error"})
        server.app.log_request(server.role, request, response, raw_headers)
        self._write(response)

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        length = response.length if response.declared_length is None else response.declared_length
        self.send_header("Content-Length", str(length))
        for name, value in response.headers:
            self.send_header(name, value)
        if response.close:
            self.send_header("Connection", "close")  # also sets self.close_connection
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            for piece in response.body.iter_range(response.start, response.end):
                self.wfile.write(piece)
        except (BrokenPipeError, ConnectionResetError):
            # The client went away mid-body (e.g. it aborted a large download).
            self.close_connection = True


class ServerThread:
    """Runs one :class:`SandboxHTTPServer` in a daemon thread."""

    def __init__(self, server: SandboxHTTPServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},  # bounds how long shutdown() waits
            name=f"sandbox-{server.role}",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut open connections, release the socket; waits at most ~timeout."""
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.close_open_connections()
        self.server.server_close()
        self._thread.join(timeout)


def bind(host: str, port: int, app: Dispatcher, role: str) -> SandboxHTTPServer:
    """Create a server bound to ``(host, port)``; port 0 picks a free port."""
    return SandboxHTTPServer((host, port), app, role)
