"""A small local web site standing in for the one the seed's spider example scraped.

``python examples/local_site.py [--port 8000]`` serves ``/free/inha/<n>/``:
a page for every n, except that every 17th page answers 503, so the demo
shows failed tasks going to the dead-letter store.
"""

from __future__ import annotations

import argparse
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAILING_EVERY = 17
PAGE = re.compile(r"^/free/inha/(\d+)/$")


def page_fails(n: int) -> bool:
    return n % FAILING_EVERY == 0


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        match = PAGE.match(self.path)
        if match is None:
            self.send_error(404)
            return
        n = int(match.group(1))
        if page_fails(n):
            self.send_error(503, "try again later")
            return
        body = f"<html><title>page {n}</title><body>free proxy list, page {n}</body></html>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def start(port: int = 0) -> ThreadingHTTPServer:
    """Serve in a background thread on 127.0.0.1; ``server.server_port`` is the port."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    threading.Thread(target=server.serve_forever, name="local-site", daemon=True).start()
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
    print(f"serving http://127.0.0.1:{httpd.server_port}/free/inha/<n>/", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
