"""Loopback OpenAI-compatible servers for the judge tests: the plumbing the stub servers share.

``LoopbackServer`` runs a ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) in a thread while used as a
context manager, hands every POST's JSON body to its ``answer`` method, and counts the requests whose
handler is still running (``pending``), so a test can wait for requests a client gave up on.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# a readable QualityJudge reply: every default dimension scored
CANNED = '{"correctness": 7, "logical_soundness": 6, "clarity": 8, "completeness": 7}'


def chat_completion(model: str, content: str | None) -> dict[str, Any]:
    """The body of an OpenAI chat completion with one choice holding ``content``."""
    return {
        "id": "stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
        ],
    }


def send(
    handler: BaseHTTPRequestHandler,
    status: int,
    data: bytes,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> None:
    """Answer a request with ``status``, ``data`` and extra ``headers``."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


class LoopbackServer:
    """A chat-completions server on 127.0.0.1; subclasses implement ``answer(handler, body)``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending = 0  # requests accepted whose handler has not finished
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                server.answer(self, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

            def log_message(self, *args):
                pass

        class CountingServer(ThreadingHTTPServer):
            def process_request(self, request, client_address):
                with server.lock:
                    server.pending += 1
                super().process_request(request, client_address)

            def process_request_thread(self, request, client_address):
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    with server.lock:
                        server.pending -= 1

        self.server = CountingServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
