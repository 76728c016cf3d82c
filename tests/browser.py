"""Headless Chromium, driven through the DevTools protocol, for the tests of HTML pages.

``open_page(path)`` loads a local file in a fresh browser profile and reports what a
person would notice and more: console errors and uncaught exceptions, every network
request the page made, and (on request) a screenshot. Chromium comes from the system
(Debian: ``apt-get install chromium``); without it, the tests that need it are skipped,
saying so.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PageLoad", "chromium", "open_page"]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]


def chromium() -> str | None:
    """The Chromium executable: ``$CHROMIUM``, else ``chromium`` or ``chromium-browser``."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    return found or shutil.which("chromium-browser")


@dataclass
class PageLoad:
    """What happened while a page loaded, and a way to ask it things."""

    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    session: Any = None

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able)."""
        result = self.session.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        shot = self.session.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


class _Session:
    def __init__(self, url: str, load: PageLoad) -> None:
        import websocket  # websocket-client, in the test extra

        self._ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self._load = load
        self._next = 0

    def call(self, method: str, **params: Any) -> Any:
        self._next += 1
        self._ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        return self.until(lambda message: message.get("id") == self._next)["result"]

    def until(self, done: Any) -> Any:
        while True:
            message = json.loads(self._ws.recv())
            self._note(message)
            if "error" in message:
                raise AssertionError(f"DevTools error: {message['error']}")
            if done(message):
                return message

    def _note(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            self._load.errors.append(json.dumps(params["exceptionDetails"])[:2000])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self._load.errors.append(json.dumps(params["args"])[:2000])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self._load.errors.append(params["entry"]["text"])
        elif method == "Network.requestWillBeSent":
            self._load.requests.append(params["request"]["url"])

    def close(self) -> None:
        self._ws.close()


@contextlib.contextmanager
def open_page(path: Path, width: int = 1200, height: int = 900) -> Iterator[PageLoad]:
    """Load ``path`` in headless Chromium (a fresh profile) and yield what happened."""
    executable = chromium()
    assert executable is not None
    # (Chromium's helper processes may still write to the profile for a moment
    # after they are killed: a leftover file there is no failure of the page.)
    with tempfile.TemporaryDirectory(
        prefix="manyhands-chromium-", ignore_cleanup_errors=True
    ) as profile:
        process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helpers too are stopped at the end
        )
        session = None
        try:
            page = _page_socket(Path(profile) / "DevToolsActivePort", process)
            load = PageLoad()
            session = load.session = _Session(page, load)
            for domain in ("Runtime", "Log", "Network", "Page"):
                session.call(f"{domain}.enable")
            session.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                         deviceScaleFactor=1, mobile=False)  # fmt: skip
            session.call("Page.navigate", url=path.resolve().as_uri())
            session.until(lambda message: message.get("method") == "Page.loadEventFired")
            load.evaluate("0")  # events sent during the load have all arrived
            yield load
        finally:
            if session is not None:
                session.close()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _page_socket(port_file: Path, process: subprocess.Popen[bytes]) -> str:
    """The DevTools WebSocket URL of the browser's first page."""
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"Chromium did not start (exit code {process.poll()})")
        time.sleep(0.05)
    port = port_file.read_text().split()[0]
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            pages = [t for t in json.load(answer) if t.get("type") == "page"]
        if pages:
            return str(pages[0]["webSocketDebuggerUrl"])
        if time.monotonic() > deadline:
            raise AssertionError("Chromium opened no page")
        time.sleep(0.05)
