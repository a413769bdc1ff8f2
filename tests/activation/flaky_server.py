"""A campaign tool's import endpoint on loopback that fails 30% of requests (seeded).

Half of the failures happen before the batch is applied (503), half after it was applied
(500: the acknowledgement is lost), which is where idempotency keys matter. Applied
batches are de-duplicated by their ``Idempotency-Key``; every request is counted.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    """What the endpoint saw."""

    requests: int = 0
    failures: int = 0
    duplicates: int = 0  # requests whose key had been applied already
    batches: dict[str, dict] = field(default_factory=dict)  # key -> applied payload
    auth: set[str] = field(default_factory=set)

    def members(self, action: str) -> list[str]:
        """Return the customer keys of every applied batch with `action` (repeats kept)."""
        return [
            m["customer_key"]
            for b in self.batches.values()
            if b["action"] == action
            for m in b["members"]
        ]


@contextmanager
def flaky_server(failure_rate: float = 0.3, seed: int = 7) -> Iterator[tuple[str, Received]]:
    """Yield (URL of the endpoint, what it received) while a server runs in a thread."""
    got = Received()
    rng = random.Random(seed)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args) -> None:  # keep the test output quiet
            pass

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            key = self.headers.get("Idempotency-Key")
            with lock:
                got.requests += 1
                got.auth.add(self.headers.get("Authorization") or "")
                fail = rng.random() < failure_rate
                before = rng.random() < 0.5
                if fail and before:
                    got.failures += 1
                    status = 503
                else:
                    if not key:
                        status = 400
                    elif key in got.batches:
                        got.duplicates += 1
                        status = 200
                    else:
                        got.batches[key] = json.loads(body)
                        status = 200
                    if fail:
                        got.failures += 1
                        status = 500
            self._answer(status, {"ok": status == 200})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/import", got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
