"""Browser test: Debian's Chromium, driven by Playwright, against a real ``streamlit run`` of the app.

Opens the app on a tiny bundle, clicks a cell on the overview, sees its image grid, brushes images,
opens the attention view and sees 18 tiles per picked image; the click on the map and the brush
rerun their part of the page only (the websocket's rerun requests name a fragment). Screenshots go to
``$ASAP_SCREENSHOTS`` (or the test's tmp folder). Skips when /usr/bin/chromium or the playwright package is missing
(``.ci/browser-setup`` installs both).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from asap_core.method.layout import regrid
from asap_core.storage.bundle import Bundle
from tests.browser_helpers import (
    CELL_SLICES,
    CHROMIUM,
    CHROMIUM_ARGS,
    GRID_IMAGES,
    IMAGES_DECODED_JS,
    MAIN_IMAGES,
    PICKED_TEXT,
    SLICES_JS,
    RerunLog,
    brush_path,
    dismiss_guide,
    screenshot_dir,
    serve_bundle,
    slice_click_point,
    streamlit_server,
)
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)

GRID = 6  # a coarse grid, so the clicked cell holds several images

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.skipif(sync_playwright is None or not Path(CHROMIUM).exists(),
                                reason="needs /usr/bin/chromium and playwright (run .ci/browser-setup)")


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):  # noqa: F811
    """``streamlit run streamlit_app.py`` on 127.0.0.1 and a free port, headless; stopped at the end."""
    with serve_bundle(tiny_bundle, tmp_path_factory.mktemp("browser")) as url:
        yield url


@pytest.fixture
def shots(tmp_path) -> Path:
    return screenshot_dir(tmp_path)


def test_click_cell_brush_images_see_maps(server, tiny_bundle, shots):  # noqa: F811
    bundle = Bundle.open(tiny_bundle)
    _, cells = regrid(bundle.images, GRID)
    cell = int(cells.sort_values(["n", "cell"], ascending=False)["cell"].iloc[0])
    n_members = int(cells.set_index("cell").loc[cell, "n"])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            reruns = RerunLog(page)
            page.set_default_timeout(30000)
            page.goto(f"{server}/?grid={GRID}")
            dismiss_guide(page)
            page.wait_for_selector(CELL_SLICES.format(cell=cell))
            page.screenshot(path=str(shots / "1_overview.png"), full_page=True)

            asked = len(reruns.scopes)
            page.mouse.click(*slice_click_point(page.evaluate(SLICES_JS, cell)))
            page.get_by_text(f"Selected cell: {cell}").wait_for()
            assert reruns.since(asked) == ["fragment"]          # the click reruns the map and its panel only
            page.get_by_role("button", name="Open image grid").wait_for()
            page.screenshot(path=str(shots / "2_cell_selected.png"), full_page=True)

            page.get_by_role("button", name="Open image grid").click()
            page.get_by_text(f"Cell {cell} · {n_members} images").wait_for()
            images = page.locator(GRID_IMAGES)
            images.nth(n_members - 1).wait_for(state="attached")
            assert images.count() == n_members
            page.screenshot(path=str(shots / "3_grid.png"), full_page=True)

            asked = len(reruns.scopes)
            start, end = brush_path(images.nth(0).bounding_box(), images.nth(2).bounding_box())
            page.mouse.move(*start)
            page.mouse.down()
            page.mouse.move(*end, steps=8)
            page.mouse.up()
            picked_text = page.get_by_text(PICKED_TEXT)
            picked_text.wait_for()
            n_picked = int(picked_text.inner_text().split()[0])
            assert 1 <= n_picked <= 3
            assert set(reruns.since(asked)) == {"fragment"}      # the brush reruns the grid and its picks only
            page.screenshot(path=str(shots / "4_picked.png"), full_page=True)

            page.get_by_role("button", name="Show attention maps").click()
            page.get_by_text("Contributions to the fake logit").wait_for(timeout=45000)
            tiles = page.locator("[data-testid='stImage'] img, [data-testid='stImageContainer'] img")
            # all tiles there and decoded (else the screenshot shows blanks)
            page.wait_for_function(IMAGES_DECODED_JS, arg=n_picked * 18)
            assert page.locator(MAIN_IMAGES).count() == n_picked * 18
            assert tiles.count() >= n_picked * 18
            page.screenshot(path=str(shots / "5_attention.png"), full_page=True)
            assert f"cell={cell}" in page.url and "images=" in page.url and "/attention" in page.url
        finally:
            browser.close()


def test_page_address_as_first_request_runs_the_entry_script(tiny_bundle, tmp_path):  # noqa: F811
    """A copied address like ``/images?bundle=...`` opened on a fresh server must get the app's own navigation
    (Streamlit 1.67 served a ``pages/`` folder's file alone in that case: hence ``app_pages/``)."""
    env = {"ASAP_BUNDLE": str(tiny_bundle), "ASAP_CACHE_DIR": str(tmp_path / "cache")}
    with streamlit_server(env, tmp_path / "server.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30000)
            page.goto(f"{url}/images?bundle={tiny_bundle}")
            nav = page.locator('[data-testid="stSidebarNav"]')
            nav.get_by_text("Single image").wait_for()
            links = nav.inner_text()
            assert "Overview" in links and "common" not in links
            page.wait_for_function("() => window.location.search.includes('page=images')")
        finally:
            browser.close()
