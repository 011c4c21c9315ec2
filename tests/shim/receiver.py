"""An HTTP endpoint on 127.0.0.1 that takes POSTs and keeps them, standing in for the
services the shim and the worker post to (Sentry, an alert webhook)."""

from __future__ import annotations

import gzip
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer

from tests.shim.server import free_port


@dataclass(frozen=True)
class Post:
    at: float  # time.monotonic() when it arrived
    path: str
    body: bytes  # as sent, gzip (Content-Encoding) undone


@contextmanager
def post_receiver():
    """(port, posts) while it runs: every POST is answered 200 and appended to posts."""
    posts: list[Post] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            posts.append(Post(time.monotonic(), self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port, posts
    finally:
        server.shutdown()
        server.server_close()
