"""A loopback HTTP server whose every answer is chosen by the test: hostile APIs on demand.

``serve(answer)`` runs a :class:`ThreadingHTTPServer` on 127.0.0.1 in a thread; each
request is handed to ``answer(request)``, which returns ``(status, headers, body)``. The
requests seen are kept, headers included, so a test can tell what a client sent where.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    """Every request the server answered, in order."""

    requests: list[Request] = field(default_factory=list)


@contextmanager
def serve(answer: Callable[[Request], Answer]) -> Iterator[tuple[str, Seen]]:
    """Yield (base URL ``http://127.0.0.1:<port>``, requests seen) while the server runs."""
    seen = Seen()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args) -> None:  # keep the test output quiet
            pass

        def _handle(self) -> None:
            split = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = Request(
                self.command,
                split.path,
                {k: v[-1] for k, v in parse_qs(split.query).items()},
                dict(self.headers.items()),
                body,
            )
            with lock:
                seen.requests.append(request)
            status, headers, data = answer(request)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _handle  # noqa: N815 - the http.server API

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
