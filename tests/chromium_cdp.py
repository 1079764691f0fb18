"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

Why this driver: Debian's ``chromium`` package is the only thing it needs. Playwright and
Selenium would need their own browser or driver downloads at test time (or a matching
chromedriver); the DevTools protocol over a pipe is JSON messages separated by NUL bytes on file
descriptors 3 (to the browser) and 4 (from it), so it needs neither a websocket client nor a
network port. It sees what a person's browser would: console messages, uncaught exceptions,
failed or outgoing requests, the rendered DOM, and a screenshot.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional

__all__ = ["find_chromium", "Browser"]


def find_chromium() -> Optional[str]:
    """The Chromium executable (Debian's ``chromium``, or ``$NFEBENCH_CHROMIUM``), or None."""
    for name in (os.environ.get("NFEBENCH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _above(fd: int, lowest: int) -> int:
    """``fd`` moved to a descriptor number >= ``lowest`` (the old one closed)."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return moved


class Browser:
    """``with Browser(path) as b: b.open(url); b.evaluate(js); b.screenshot(file)``; ``b.console``
    (console messages and log entries), ``b.exceptions`` and ``b.requests`` collect what the page did."""

    def __init__(self, executable: str, width: int = 1300, height: int = 1000, timeout: float = 60.0):
        self.executable, self.width, self.height, self.timeout = executable, width, height, timeout
        self.console: List[Dict[str, Any]] = []
        self.exceptions: List[str] = []
        self.requests: List[str] = []
        self._next_id, self._buffer, self._session = 0, b"", None

    def __enter__(self) -> "Browser":
        self._profile = tempfile.mkdtemp(prefix="nfebench-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child's ends above fd 4, so that placing them on 3 and 4 cannot overwrite one another.
        to_browser_r, from_browser_w = (_above(fd, 10) for fd in (to_browser_r, from_browser_w))

        def wire_pipes() -> None:  # in the child: the protocol's fds 3 (in) and 4 (out), kept by pass_fds
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self._proc = subprocess.Popen(
            [self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             f"--user-data-dir={self._profile}", f"--window-size={self.width},{self.height}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire_pipes,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False}, session=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    # -- the protocol --------------------------------------------------------------------------
    def _send(self, message: Dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_browser, data):]

    def _receive(self) -> Dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _record(self, event: Dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append({"level": params.get("type"), "text": text})
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append({"level": entry.get("level"), "text": entry.get("text", "")})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))

    def call(self, method: str, params: Optional[Dict[str, Any]] = None, session: bool = False) -> Dict[str, Any]:
        """Send one command and return its result, recording the events that arrive meanwhile."""
        self._next_id += 1
        message: Dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._record(reply)
        raise TimeoutError(f"{method}: no answer within {self.timeout} s")

    def _wait_for(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            event = self._receive()
            self._record(event)
            if event.get("method") == method:
                return
        raise TimeoutError(f"no {method} within {self.timeout} s")

    # -- what a test does ----------------------------------------------------------------------
    def open(self, url: str) -> None:
        """Navigate and wait for the load event (every image decoded or failed by then)."""
        self.call("Page.navigate", {"url": url}, session=True)
        self._wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: str, full_page: bool = False) -> None:
        params: Dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = self.call("Page.captureScreenshot", params, session=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
