"""Open an HTML file in headless Chromium and report what a reader would get (tests only).

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``:
the browser reads commands on fd 3 and writes replies on fd 4, NUL-terminated JSON), so no
Python package, no driver binary and no network port are needed. :func:`find_chromium`
returns None when no browser is installed: the tests skip then.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# what the page reports about itself once loaded
PROBE = """(() => {
  const box = e => { if (!e) return null; const r = e.getBoundingClientRect();
                     return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width, height: r.height}; };
  const imgs = Array.from(document.images);
  return {
    title: document.title,
    viewport: {width: window.innerWidth, height: window.innerHeight},
    images: imgs.map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
                           alt: i.alt, box: box(i), mime: (i.src.match(/^data:([^;,]+)/) || [null, i.src.slice(0, 40)])[1]})),
    summary: box(document.querySelector('.summary')),
    summary_text: (document.querySelector('.summary') || {}).innerText || null,
    first_figure: box(document.querySelector('figure img')),
    first_figure_alt: (document.querySelector('figure img') || {}).alt || null,
    headings: Array.from(document.querySelectorAll('h1, h2')).map(h => h.innerText),
    details: document.querySelectorAll('details').length,
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href').slice(0, 30)),
    scripts: document.scripts.length,
    page_height: document.documentElement.scrollHeight,
  };
})()"""


def find_chromium() -> str | None:
    """Path of a Chromium-family browser, or None (``CXR_EMBED_CHROMIUM`` overrides)."""
    env = os.environ.get("CXR_EMBED_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    def __init__(self, proc, write_fd: int, read_fd: int):
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the browser")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"the browser closed the pipe (exit code {self.proc.poll()})")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)


def inspect_page(html_path: Path, screenshot: Path, *, browser: str, width: int = 1280, height: int = 800,
                 timeout: float = 60.0) -> dict:
    """Load ``html_path`` at ``width`` x ``height``; return the page's probe, errors and requests.

    Returns
    -------
    dict
        ``probe`` (see :data:`PROBE`), ``errors`` (exceptions, console errors, log errors),
        ``requests`` (every URL the page asked for), ``screenshot`` (the PNG path).
    """
    html_path = Path(html_path).resolve()
    profile = screenshot.parent / "chromium-profile"
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def wire():  # in the child: fd 3 = commands in, fd 4 = replies out (dup2 makes them inheritable)
        a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)  # out of the way first: the pipes may be fds 3 or 4
        b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.dup2(a, 3)
        os.dup2(b, 4)

    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
           f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank"]
    # close_fds=False: the pipes are not inheritable (PEP 446); only fds 3 and 4 reach the browser
    proc = subprocess.Popen(cmd, preexec_fn=wire, close_fds=False,  # noqa: PLW1509
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(to_browser_r)
    os.close(from_browser_w)
    pipe = _Pipe(proc, to_browser_w, from_browser_r)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        pipe.send("Page.navigate", {"url": html_path.as_uri()}, session=session, timeout=timeout)
        pipe.wait_event("Page.loadEventFired", timeout=timeout)
        probe = pipe.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
        probe = probe["result"]["value"]
        shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=timeout)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        errors, requests = [], []
        for e in pipe.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(str(params.get("args")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(params["entry"].get("text", "log error"))
            elif method == "Network.requestWillBeSent":
                requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                errors.append(f"loading failed: {params.get('errorText')}")
        try:
            pipe.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError):
            pass
        return {"probe": probe, "errors": errors, "requests": requests, "screenshot": screenshot}
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        os.close(to_browser_w)
        os.close(from_browser_r)
        if proc.stderr:
            proc.stderr.close()


def check_report(page: dict, *, width: int = 1280, height: int = 800) -> None:
    """Assert what a reader of a cxr_embed report must get from :func:`inspect_page`'s result.

    No error in the console or the log; no request but the page itself and its ``data:`` URIs
    (one self-contained file); no script; every image decoded; the summary and the first figure
    (the forest plot) entirely above the fold; the screenshot written.
    """
    probe = page["probe"]
    assert not page["errors"], f"the page logged errors: {page['errors']}"
    outside = [u for u in page["requests"] if not u.startswith("data:")]
    assert len(outside) == 1 and outside[0].startswith("file:"), f"requests beyond the page itself: {outside}"
    assert probe["scripts"] == 0
    images = probe["images"]
    broken = [i["alt"][:60] for i in images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert images and not broken, f"{len(broken)} of {len(images)} images did not decode: {broken}"
    assert probe["viewport"] == {"width": width, "height": height}
    summary, figure = probe["summary"], probe["first_figure"]
    assert summary is not None and "best" in probe["summary_text"], "no summary on the page"
    assert 0 <= summary["top"] and summary["bottom"] <= height, f"the summary is not above the fold: {summary}"
    assert figure is not None and "per approach and label" in probe["first_figure_alt"], probe["first_figure_alt"]
    assert figure["top"] > summary["bottom"] and figure["bottom"] <= height, \
        f"the forest plot is not above the fold at {width}x{height}: {figure}"
    assert figure["right"] <= width, "the forest plot is wider than the window"
    shot = Path(page["screenshot"]).read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
