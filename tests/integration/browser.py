"""Headless Chromium (Debian's ``chromium``) driven over its DevTools protocol on a pipe.

``--remote-debugging-pipe``: Chromium reads commands from fd 3 and writes answers and events to
fd 4, each a JSON object ended by NUL. No WebSocket client, no driver, nothing downloaded.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

#: Names of Debian's Chromium binary.
BINARIES = ("chromium", "chromium-browser")


def find_chromium() -> str:
    """The Chromium binary; skips the test if there is none, fails under ``CI=true``
    (where the Makefile must have installed it)."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    reason = "Debian's chromium is not installed (make integration installs it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI=true the browser test cannot be skipped")
    pytest.skip(reason)


class Chromium:
    """One headless browser; `call` sends a DevTools command and returns its result."""

    def __init__(self, binary: str, profile: Path, width: int = 1000, height: int = 700) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        args = [binary, "--headless", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                "--no-first-run", "--disable-gpu", "--disable-extensions",
                "--disable-background-networking", "--disable-dev-shm-usage",
                "--disable-crash-reporter", f"--window-size={width},{height}"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox

        def pipes_as_3_and_4() -> None:
            os.dup2(cmd_r, 3)
            os.dup2(resp_w, 4)

        self.proc = subprocess.Popen([*args, "about:blank"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     pass_fds=(3, 4), preexec_fn=pipes_as_3_and_4,
                                     start_new_session=True)
        os.close(cmd_r)
        os.close(resp_w)
        self._buffer = b""
        self._next_id = 0

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer["result"]
                return result

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._resp_r], [], [], left)[0]:
                raise AssertionError("Chromium did not answer in time")
            chunk = os.read(self._resp_r, 1 << 16)
            if not chunk:
                raise AssertionError("Chromium exited")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        return message

    def open(self, url: str) -> str:
        """A new tab on ``url``; returns its session for `evaluate` and `screenshot`."""
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        session: str = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        return session

    def open_without_javascript(self, url: str) -> str:
        """`open`, in a tab where scripts do not run."""
        session = self.open("about:blank")
        self.call("Emulation.setScriptExecutionDisabled", {"value": True}, session)
        self.call("Page.navigate", {"url": url}, session)
        return session

    def resize(self, session: str, width: int, height: int, mobile: bool = False) -> None:
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}, session)

    def evaluate(self, session: str, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True}, session)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout: float = 15.0,
                 what: str = "") -> Any:
        """Evaluate ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(session, expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or expression}")
            time.sleep(0.05)  # a subprocess, polled: no reactor runs in this thread

    def screenshot(self, session: str, path: Path, width: int, height: int) -> None:
        self.resize(session, width, height)
        data = self.call("Page.captureScreenshot", {"format": "png"}, session)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (AssertionError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(5)
        os.close(self._cmd_w)
        os.close(self._resp_r)
