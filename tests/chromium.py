"""A real Chromium page for the browser tests, driven through `tests/browser/drive.mjs`.

Debian's Chromium is driven by the npm package playwright-core, run by node: pytest sends one
JSON command a line and reads the answers, so the tests themselves stay in Python. `.ci/run`
installs Chromium and runs `npm ci` in tests/browser; elsewhere the tests are skipped when
either is missing, and fail instead under CI.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

__all__ = [
    "ARTIFACTS",
    "PAGE_SCRIPT",
    "BrowserPage",
    "assert_not_blank",
    "require_browser",
]

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
LAUNCH_TIMEOUT = 30.0
COMMAND_TIMEOUT = 15.0
# Antialiased text alone brings dozens of colours; a blank or single-colour page has one.
MIN_COLOURS = 8
# What an application page that runs the README's code defines before it: the function the
# code calls for a channel it could not recover, and a console.log that also keeps each line
# in `window.logged` (for the test) and on the page (for its screenshot, in `#log`).
PAGE_SCRIPT = """\
// The application's own, which the README's code calls for a channel it could not recover.
function reloadChannel(channel) { console.log("Reloading state of", channel); }
window.logged = [];
const printLog = console.log.bind(console);
console.log = (...args) => {
  const line = args.map((a) => (typeof a === "string" ? a : JSON.stringify(a))).join(" ");
  window.logged.push(line);
  document.getElementById("log").textContent += line + "\\n";
  printLog(...args);
};"""


def require_browser() -> None:
    """Skip when Chromium or the node packages are missing; under CI, fail instead."""
    missing = [
        what
        for what, present in [
            (str(CHROMIUM), CHROMIUM.exists()),
            ("node", shutil.which("node") is not None),
            ("tests/browser/node_modules (npm ci)", (BROWSER_DIR / "node_modules").is_dir()),
        ]
        if not present
    ]
    if not missing:
        return
    reason = f"browser tests need {', '.join(missing)}: see .ci/run"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


class BrowserError(AssertionError):
    """The page did not do what the test waited for; the text says what and shows the log."""


class BrowserPage:
    """One Chromium page. Every call is bounded in time; `console` keeps what the page logged."""

    def __init__(self) -> None:
        self.console: list[str] = []
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ids = itertools.count(1)
        self._errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by close())
        self._process = subprocess.Popen(
            ["node", str(BROWSER_DIR / "drive.mjs")],
            cwd=BROWSER_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
            env={**os.environ, "CHROMIUM": str(CHROMIUM)},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self._next_answer(LAUNCH_TIMEOUT, "Chromium to start")
        if not ready.get("ready"):
            raise BrowserError(f"the driver did not start: {ready}")

    def goto(self, url: str) -> None:
        self._call("goto", url=url)

    def fill(self, selector: str, value: str) -> None:
        self._call("fill", selector=selector, value=value)

    def click(self, selector: str) -> None:
        self._call("click", selector=selector)

    def text(self, selector: str) -> str:
        value: str = self._call("text", selector=selector)
        return value

    def evaluate(self, expression: str) -> Any:
        return self._call("evaluate", expression=expression)

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Wait until the JavaScript `expression` is truthy in the page; answer its value."""
        try:
            return self._call(
                "waitFor", timeout + COMMAND_TIMEOUT, expression=expression, timeout=timeout * 1000
            )
        except BrowserError as error:
            raise BrowserError(
                f"waited {timeout:g} s for {expression}: {error}\npage console:\n"
                + "\n".join(self.console)
            ) from None

    def screenshot(self, name: str) -> Path:
        """Save the whole page to tests/artifacts/NAME and answer its path."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self._call("screenshot", path=str(path))
        return path

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._call("close")
                self._process.wait(10)
            except (BrowserError, subprocess.TimeoutExpired, OSError):
                self._process.kill()
                self._process.wait()
        self._errors.close()

    def _call(self, name: str, within: float = COMMAND_TIMEOUT, **args: Any) -> Any:
        if self._process.poll() is not None:
            raise BrowserError(f"the driver has exited:\n{self._stderr()}")
        command_id = next(self._ids)
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"id": command_id, "do": name, **args}) + "\n")
        self._process.stdin.flush()
        answer = self._next_answer(within, name)
        if answer.get("id") != command_id:
            raise BrowserError(f"answer out of order for {name}: {answer}")
        if "error" in answer:
            raise BrowserError(f"{name} failed: {answer['error']}")
        return answer.get("value")

    def _next_answer(self, timeout: float, waiting_for: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"no answer within {timeout:g} s for {waiting_for}")
            try:
                return self._answers.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self._process.poll() is not None and self._answers.empty():
                    raise BrowserError(f"the driver exited:\n{self._stderr()}") from None

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "console" in message:
                self.console.append(message["console"])
            elif "pageerror" in message:
                self.console.append(f"page error: {message['pageerror']}")
            else:
                self._answers.put(message)

    def _stderr(self) -> str:
        self._errors.seek(0)
        return self._errors.read()


def assert_not_blank(path: Path) -> None:
    """The screenshot is a PNG whose pixels are not all one colour."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        colours = image.convert("RGB").getcolors(maxcolors=MIN_COLOURS)
    assert colours is None, f"{path} shows {len(colours or [])} colours: blank"
