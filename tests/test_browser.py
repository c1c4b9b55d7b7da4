"""Browser test: Debian's Chromium, driven by Playwright, against a real ``streamlit run`` of the app.

Opens the app on a tiny bundle, clicks a cell on the overview, sees its image grid, brushes images,
opens the attention view and sees 18 tiles per picked image. Screenshots go to ``$ASAP_SCREENSHOTS``
(or the test's tmp folder). Skips when /usr/bin/chromium or the playwright package is missing
(``.ci/browser-setup`` installs both).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from asap_core.bundle import Bundle
from asap_core.layout import regrid
from conftest_app import tiny_bundle  # noqa: F401  (fixture)

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
GRID = 6  # a coarse grid, so the clicked cell holds several images

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.skipif(sync_playwright is None or not Path(CHROMIUM).exists(),
                                reason="needs /usr/bin/chromium and playwright (run .ci/browser-setup)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):  # noqa: F811
    """``streamlit run streamlit_app.py`` on 127.0.0.1 and a free port, headless; stopped at the end."""
    port = _free_port()
    work = tmp_path_factory.mktemp("browser")
    env = {**os.environ, "ASAP_BUNDLE": str(tiny_bundle), "ASAP_CACHE_DIR": str(work / "cache"),
           "HF_HUB_OFFLINE": "1"}
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"), "--server.headless=true",
         f"--server.port={port}", "--server.address=127.0.0.1", "--browser.gatherUsageStats=false",
         "--server.fileWatcherType=none", "--client.toolbarMode=viewer"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(os.environ.get("ASAP_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _slice_click_point(page, cell: int) -> tuple[float, float]:
    """A point well inside the largest slice of ``cell``'s pie (the exact centre hits nothing)."""
    paths = page.locator(f".vega-embed path[aria-label*='; cell: {cell};']")
    boxes, best = [], None
    for i in range(paths.count()):
        p = paths.nth(i)
        boxes.append(p.bounding_box())
        label = p.get_attribute("aria-label")
        t0 = float(re.search(r"(?:^|; )theta: ([-\d.e]+)", label).group(1))
        t1 = float(re.search(r"theta2: ([-\d.e]+)", label).group(1))
        if best is None or t1 - t0 > best[1] - best[0]:
            best = (t0, t1)
    x0 = min(b["x"] for b in boxes)
    y0 = min(b["y"] for b in boxes)
    x1 = max(b["x"] + b["width"] for b in boxes)
    y1 = max(b["y"] + b["height"] for b in boxes)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    import math

    mid = (best[0] + best[1]) / 2
    return cx + 0.6 * r * math.sin(mid), cy - 0.6 * r * math.cos(mid)


def test_click_cell_brush_images_see_maps(server, tiny_bundle, shots):  # noqa: F811
    bundle = Bundle.open(tiny_bundle)
    _, cells = regrid(bundle.images, GRID)
    cell = int(cells.sort_values(["n", "cell"], ascending=False)["cell"].iloc[0])
    n_members = int(cells.set_index("cell").loc[cell, "n"])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30000)
            page.goto(f"{server}/?grid={GRID}")
            page.wait_for_selector(f".vega-embed path[aria-label*='; cell: {cell};']")
            page.screenshot(path=str(shots / "1_overview.png"), full_page=True)

            page.mouse.click(*_slice_click_point(page, cell))
            page.get_by_text(f"Selected cell: {cell}").wait_for()
            page.get_by_role("button", name="Open image grid").wait_for()
            page.screenshot(path=str(shots / "2_cell_selected.png"), full_page=True)

            page.get_by_role("button", name="Open image grid").click()
            page.get_by_text(f"Cell {cell} · {n_members} images").wait_for()
            images = page.locator(".vega-embed svg image")
            images.nth(n_members - 1).wait_for(state="attached")
            assert images.count() == n_members
            page.screenshot(path=str(shots / "3_grid.png"), full_page=True)

            first, third = images.nth(0).bounding_box(), images.nth(2).bounding_box()
            page.mouse.move(first["x"] + 2, first["y"] + 2)
            page.mouse.down()
            page.mouse.move(third["x"] + third["width"] - 2, third["y"] + third["height"] - 2, steps=8)
            page.mouse.up()
            picked_text = page.get_by_text(re.compile(r"^\d+ images? picked$"))
            picked_text.wait_for()
            n_picked = int(picked_text.inner_text().split()[0])
            assert 1 <= n_picked <= 3
            page.screenshot(path=str(shots / "4_picked.png"), full_page=True)

            page.get_by_role("button", name="Show attention maps").click()
            page.get_by_text("Contributions to the fake logit").wait_for(timeout=45000)
            tiles = page.locator("[data-testid='stImage'] img, [data-testid='stImageContainer'] img")
            page.wait_for_function(  # all tiles there and decoded (else the screenshot shows blanks)
                "n => { const im = [...document.querySelectorAll(\"[data-testid='stMain'] img\")];"
                " return im.length >= n && im.every(i => i.complete && i.naturalWidth > 0); }", arg=n_picked * 18)
            assert page.locator("[data-testid='stMain'] img").count() == n_picked * 18
            assert tiles.count() >= n_picked * 18
            page.screenshot(path=str(shots / "5_attention.png"), full_page=True)
            assert f"cell={cell}" in page.url and "images=" in page.url and "/attention" in page.url
        finally:
            browser.close()
