"""Shared by the browser test and ``benchmarks/load_test.py``: a headless ``streamlit run`` of the app on
127.0.0.1, Debian's Chromium launch settings, and the selectors / page probes that work on the app.

The probes are JavaScript strings for ``page.evaluate`` / ``page.wait_for_function``, so the sync test and
the asyncio load script use the same ones.
"""
from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# the pie slices of one cell (SVG renderer: each slice is a <path> whose aria-label names its cell)
CELL_SLICES = ".vega-embed path[aria-label*='; cell: {cell};']"
GRID_IMAGES = ".vega-embed svg image"
MAIN_IMAGES = "[data-testid='stMain'] img"
# Streamlit's exception blocks and st.error boxes
ERROR_BLOCKS = "[data-testid='stException'], [data-testid='stAlertContentError']"
PICKED_TEXT = re.compile(r"^\d+ images? picked$")

# [{label, x, y, width, height}] of the slices of the cell given as argument (viewport coordinates)
SLICES_JS = """cell => [...document.querySelectorAll(`.vega-embed path[aria-label*='; cell: ${cell};']`)]
  .map(p => { const r = p.getBoundingClientRect();
              return {label: p.getAttribute('aria-label'), x: r.x, y: r.y, width: r.width, height: r.height}; })"""
# true once at least n images are in the main area and all of them are decoded
IMAGES_DECODED_JS = ("n => { const im = [...document.querySelectorAll(\"[data-testid='stMain'] img\")];"
                     " return im.length >= n && im.every(i => i.complete && i.naturalWidth > 0); }")
# the texts of the error blocks on the page
ERRORS_JS = ("() => [...document.querySelectorAll(\"[data-testid='stException'], "
             "[data-testid='stAlertContentError']\")].map(e => e.innerText.slice(0, 300))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(env: Mapping[str, str], log_path: Path, start_timeout: float = 40.0,
                     procs: list | None = None) -> Iterator[str]:
    """``streamlit run streamlit_app.py`` headless on 127.0.0.1 and a free port, ``env`` added to the
    environment; yields the base URL and stops the server (terminate, then kill) on exit. The server's
    ``Popen`` is appended to ``procs`` when given (e.g. to read its memory)."""
    port = free_port()
    argv = [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"), "--server.headless=true",
            f"--server.port={port}", "--server.address=127.0.0.1", "--browser.gatherUsageStats=false",
            "--server.fileWatcherType=none", "--client.toolbarMode=viewer"]
    with command_server(argv, port, {**os.environ, "HF_HUB_OFFLINE": "1", **env}, log_path, start_timeout,
                        procs) as url:
        yield url


def slice_click_point(slices: list[dict]) -> tuple[float, float]:
    """A point well inside the largest slice of a pie (the exact centre hits nothing).

    ``slices``: what ``SLICES_JS`` returns for one cell (aria-labels carry ``theta`` / ``theta2``)."""
    if not slices:
        raise ValueError("no slices for this cell on the page")
    best = None
    for s in slices:
        t0 = float(re.search(r"(?:^|; )theta: ([-\d.e]+)", s["label"]).group(1))
        t1 = float(re.search(r"theta2: ([-\d.e]+)", s["label"]).group(1))
        if best is None or t1 - t0 > best[1] - best[0]:
            best = (t0, t1)
    x0 = min(s["x"] for s in slices)
    y0 = min(s["y"] for s in slices)
    x1 = max(s["x"] + s["width"] for s in slices)
    y1 = max(s["y"] + s["height"] for s in slices)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    mid = (best[0] + best[1]) / 2
    return cx + 0.6 * r * math.sin(mid), cy - 0.6 * r * math.cos(mid)


def brush_path(first: dict, last: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """Start and end of a drag from inside the first image box to inside the last one (bounding boxes)."""
    return ((first["x"] + 2, first["y"] + 2),
            (last["x"] + last["width"] - 2, last["y"] + last["height"] - 2))


@contextmanager
def serve_bundle(bundle: Path, work: Path) -> Iterator[str]:
    """The app on ``bundle`` (``ASAP_BUNDLE``) with its own cache and server log in ``work``; yields the URL."""
    with streamlit_server({"ASAP_BUNDLE": str(bundle), "ASAP_CACHE_DIR": str(work / "cache")},
                          work / "server.log") as url:
        yield url


def screenshot_dir(tmp_path: Path) -> Path:
    """``$ASAP_SCREENSHOTS`` if set, else ``tmp_path/screenshots``; created."""
    d = Path(os.environ.get("ASAP_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextmanager
def command_server(argv: list[str], port: int, env: Mapping[str, str], log_path: Path,
                   start_timeout: float = 60.0, procs: list | None = None) -> Iterator[str]:
    """Any command that serves the app on 127.0.0.1:``port`` (e.g. ``python -m asap_core serve``), run from the
    repository root with exactly ``env`` as its environment; yields the base URL once Streamlit's health
    endpoint answers ``ok`` and stops the server (terminate, then kill) on exit. The server's ``Popen`` is
    appended to ``procs`` when given (e.g. to read its memory or CPU time)."""
    from asap_core.serving import HEALTH_PATH

    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    if procs is not None:
        procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                if urllib.request.urlopen(f"{url}{HEALTH_PATH}", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {Path(log_path).read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        stop_process(proc)
        log.close()


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate ``proc`` and wait for it; kill it when it does not exit within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def chromium() -> Iterator:
    """Debian's Chromium through Playwright (``CHROMIUM``, ``CHROMIUM_ARGS``), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def dismiss_guide(page, timeout_ms: int = 30000) -> None:
    """Close the "How to read this" dialog a new browser session opens once (it covers the page)."""
    page.get_by_role("button", name="Got it").click(timeout=timeout_ms)
    page.get_by_role("dialog").wait_for(state="detached")
    wait_run_done(page, timeout_ms)


def wait_run_done(page, timeout_ms: int = 30000) -> None:
    """Wait until the page's run has finished: while a run is under way the front end keeps the last run's
    elements beside the new ones (``data-stale``), so one text can be on the page twice until the run ends."""
    page.wait_for_function(
        "() => !document.querySelector(\"[data-stale='true']\")"
        " && !document.querySelector(\"[data-testid='stStatusWidgetRunningIcon']\")",
        timeout=timeout_ms)


class RerunLog:
    """The reruns a page asks its server for, read from the websocket frames it sends (Streamlit's ``BackMsg``):
    ``scopes`` holds one entry per request, ``"fragment"`` when the request names a fragment (only that part of
    the page reruns), else ``"page"``. Attach with ``RerunLog(page)`` before the page opens its websocket."""

    def __init__(self, page) -> None:
        self.scopes: list[str] = []
        page.on("websocket", lambda ws: ws.on("framesent", self._frame))

    def _frame(self, payload) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg

        if isinstance(payload, str):
            return
        msg = BackMsg()
        msg.ParseFromString(payload)
        if msg.WhichOneof("type") == "rerun_script" and not msg.rerun_script.is_auto_rerun:
            self.scopes.append("fragment" if msg.rerun_script.fragment_id else "page")

    def since(self, n: int) -> list[str]:
        """The scopes of the requests after the first ``n``."""
        return self.scopes[n:]
