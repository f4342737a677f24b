"""A real webhook receiver for tests: an HTTP server in a thread that records every POST and
answers from a script (fail the first tries of each delivery, or answer them slowly)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service_kit import webhooks


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def delivery(self) -> str:
        return self.headers.get(webhooks.DELIVERY_HEADER.lower(), "")

    @property
    def event(self) -> str:
        return self.headers.get(webhooks.EVENT_HEADER.lower(), "")

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    def signed_by(self, secret: str) -> bool:
        header = self.headers.get(webhooks.SIGNATURE_HEADER.lower(), "")
        return webhooks.verify(secret, self.body, header)


class Receiver:
    """The first `fail_first` tries of each delivery get 500 (or sleep `slow_first` seconds
    first); later ones get `status`."""

    def __init__(self, fail_first: int = 0, slow_first: float = 0.0, status: int = 200) -> None:
        self.fail_first = fail_first
        self.slow_first = slow_first
        self.status = status
        self.received: list[Received] = []
        self._tries: Counter[str] = Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    key = headers.get(webhooks.DELIVERY_HEADER.lower(), "")
                    receiver._tries[key] += 1
                    tries = receiver._tries[key]
                if tries == 1 and receiver.slow_first:
                    time.sleep(receiver.slow_first)
                status = 500 if tries <= receiver.fail_first else receiver.status
                with receiver._lock:
                    receiver.received.append(Received(headers, body, status))
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender stopped waiting (a slow answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if 200 <= r.status < 300]

    def wait_accepted(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.accepted()

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
