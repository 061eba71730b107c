"""A small driver for headless Chromium over the DevTools protocol on a pipe (no package, no
download, no port): launch the system `chromium`, open a page, evaluate JS, send real key and
mouse events, take screenshots.

Chromium's `--remote-debugging-pipe` reads commands on fd 3 and writes answers on fd 4, each a
JSON message ended by a NUL byte.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Chromium:
    def __init__(self, user_data_dir: Path, width: int = 1400, height: int = 1000, timeout: float = 30.0):
        exe = find_chromium()
        if exe is None:
            raise BrowserError("no chromium on PATH: `make browser` installs it (as root, from Debian)")
        self.timeout = timeout
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds():  # the child's fd 3 reads our commands, its fd 4 writes its answers
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-quic", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
             f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}", "about:blank"],
            close_fds=False, preexec_fn=fds,  # other fds are close-on-exec
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_child_r)
        os.close(from_child_w)
        self._answers: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                self._answers.put(None)
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                data = json.loads(msg)
                (self._answers.put(data) if "id" in data else self.events.append(data))

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                ans = self._answers.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BrowserError(f"{method}: no answer in {self.timeout:.0f} s") from None
            if ans is None:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:]
                raise BrowserError(f"chromium exited: {err}")
            if ans["id"] == self._next:
                if "error" in ans:
                    raise BrowserError(f"{method}: {ans['error']}")
                return ans.get("result", {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("document.readyState === 'complete'")

    def js(self, expression: str):
        """Evaluate `expression` in the page (promises awaited) -> its JSON value."""
        res = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"JS error: {res['exceptionDetails'].get('exception', {}).get('description')}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for: {expression}")
            time.sleep(0.05)

    def errors(self) -> list[str]:
        """JS exceptions and console errors seen so far."""
        out = []
        for ev in self.events:
            if ev.get("method") == "Runtime.exceptionThrown":
                out.append(ev["params"]["exceptionDetails"].get("exception", {}).get("description", "?"))
            elif ev.get("method") == "Log.entryAdded" and ev["params"]["entry"]["level"] == "error":
                out.append(ev["params"]["entry"]["text"])
        return out

    def key(self, key: str, code: int) -> None:
        """Press and release a key (e.g. "ArrowRight", 39) on the focused element."""
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", session=True, type=kind, key=key, code=key,
                      windowsVirtualKeyCode=code)

    def hover(self, selector: str) -> None:
        """Scroll the element into view and move the mouse over its centre."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                      "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                      "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        self.call("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=box[0], y=box[1])

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        res = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=full_page)
        Path(path).write_bytes(base64.b64decode(res["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except BrowserError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
