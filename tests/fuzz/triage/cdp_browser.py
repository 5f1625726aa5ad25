"""A real headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
NUL-separated JSON on file descriptors 3 and 4), with the standard library only.

Why the pipe: no port, no websocket client, nothing to clean up but the child process, which
runs in its own session with a hard timeout.  Used by the report's browser test, and to make the
screenshot in docs/:  ``python tests/fuzz/cdp_browser.py report.html docs/report.png 1280 1500``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

INSTALL = "make real-parts, or apt-get install -y --no-install-recommends chromium fonts-dejavu-core"
CANDIDATES = ("chromium", "chromium-browser")
TIMEOUT = 60.0


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(Exception):
    pass


@dataclass
class Page:
    """What the browser showed: the full-page PNG, element boxes, and every error it logged."""
    png: bytes
    boxes: dict[str, list[dict[str, float]]]        # CSS selector -> boxes (page coordinates, CSS px)
    size: tuple[int, int]                           # page width, height (CSS px)
    errors: list[str] = field(default_factory=list)


class _Cdp:
    def __init__(self, exe: str, profile: str) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
                "--remote-debugging-pipe", "about:blank"]
        # chromium reads commands on fd 3 and writes replies on fd 4: bash moves our ends there (dash cannot
        # redirect descriptors above 9)
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}', *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            pass_fds=(to_chrome_r, from_chrome_w))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + TIMEOUT

    def _read_message(self) -> dict[str, Any]:
        import select
        while b"\0" not in self._buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"chromium did not answer within {TIMEOUT:.0f}s")
            ready, _, _ = select.select([self._r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise BrowserError("chromium closed the DevTools pipe (it exited)")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read_message()
            if m.get("id") == self._id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error'].get('message')}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str) -> dict[str, Any]:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._read_message()
            if m.get("method") == method:
                return m
            self.events.append(m)

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


_BOXES_JS = """JSON.stringify(Object.fromEntries(%s.map(sel => [sel,
    Array.from(document.querySelectorAll(sel)).map(e => {
  const r = e.getBoundingClientRect();
  return {x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height};
})])))"""


def render(html_path: str, selectors: list[str], width: int = 1400, exe: str | None = None,
           clip: int | None = None) -> Page:
    """Open the file, let it lay out, and return its full-page screenshot (or its top ``clip``
    pixels) and element boxes."""
    exe = exe or find_chromium()
    if exe is None:
        raise BrowserError(f"chromium is not installed ({INSTALL})")
    with tempfile.TemporaryDirectory(prefix="pfndiff-chromium-") as profile:
        cdp = _Cdp(exe, profile)
        try:
            target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            s = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                cdp.call(f"{domain}.enable", session=s)
            cdp.call("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=s)
            cdp.call("Page.navigate", {"url": "file://" + os.path.abspath(html_path)}, session=s)
            cdp.wait_event("Page.loadEventFired")
            size = json.loads(cdp.call("Runtime.evaluate", {"expression": "JSON.stringify([document.documentElement"
                                       ".scrollWidth, document.documentElement.scrollHeight])", "returnByValue": True},
                                       session=s)["result"]["value"])
            cdp.call("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": int(size[1]), "deviceScaleFactor": 1, "mobile": False}, session=s)
            boxes = json.loads(cdp.call("Runtime.evaluate", {"expression": _BOXES_JS % json.dumps(selectors),
                                                              "returnByValue": True}, session=s)["result"]["value"])
            params: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
            if clip:
                params["clip"] = {"x": 0, "y": 0, "width": width, "height": min(clip, int(size[1])), "scale": 1}
            shot = cdp.call("Page.captureScreenshot", params, session=s)
            errors = []
            for e in cdp.events:
                p = e.get("params", {})
                if e.get("method") == "Runtime.exceptionThrown":
                    errors.append(str(p.get("exceptionDetails", {}).get("text")))
                elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                    errors.append(json.dumps(p.get("args")))
                elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                    errors.append(str(p["entry"].get("text")))
            return Page(base64.b64decode(shot["data"]), boxes, (int(size[0]), int(size[1])), errors)
        finally:
            cdp.close()


def main(argv: list[str]) -> int:
    """``cdp_browser.py PAGE.html OUT.png [WIDTH [HEIGHT]]``: a screenshot (the top HEIGHT pixels if
    given), stored with a 256-colour palette to keep it small."""
    if len(argv) not in (3, 4, 5):
        print("usage: cdp_browser.py PAGE.html OUT.png [WIDTH [HEIGHT]]", file=sys.stderr)
        return 2
    from PIL import Image
    width = int(argv[3]) if len(argv) > 3 else 1400
    page = render(argv[1], [], width=width, clip=int(argv[4]) if len(argv) > 4 else None)
    img = (Image.open(io.BytesIO(page.png)).convert("RGB")
           .quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE))
    img.save(argv[2], optimize=True)
    print(f"{argv[2]}: {img.size[0]}x{img.size[1]} px of a {page.size[0]}x{page.size[1]} page, "
          f"{os.path.getsize(argv[2]) // 1024} KiB; errors: {page.errors or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
