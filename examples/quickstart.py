"""The classic loop, with manyhands: fetch 2,000 URLs from a flaky local API, 100 at a time.

Run it with ``python examples/quickstart.py``. It starts a small HTTP API on
127.0.0.1 (20 ms per request, 1 in 20 answering HTTP 500), fetches every
URL, prints the Report and a few of the failures, and stops the server.
Nothing leaves this machine.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import manyhands


class FlakyAPI(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(0.02)
        number = int(self.path.rsplit("/", 1)[-1])
        status, body = (500, b"server error") if number % 20 == 7 else (200, b"ok %d" % number)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the terminal for the Report


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen() backlog: 100 clients connect at once


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def main() -> None:
    server = Server(("127.0.0.1", 0), FlakyAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/items"
    try:
        urls = (f"{base}/{n}" for n in range(2000))  # a generator: never held in memory
        report = manyhands.run(fetch, urls, workers=100)
        print(report)
        print("\nfirst failures:")
        for failure in report.failures[:3]:
            print(f"  {failure.item}: {failure.error_type}: {failure.message}")
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
