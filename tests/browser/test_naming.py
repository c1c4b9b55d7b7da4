"""Browser test of naming a dimension: on a real ``streamlit run``, a link opens the Dimensions page on
dimension 3, the user types a name and saves it; the page, then the Attention view of a linked image, show
"dim 3 · smooth skin". Screenshots go to ``$ASAP_SCREENSHOTS`` (or the test's tmp folder)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, dismiss_guide, screenshot_dir, serve_bundle
from tests.conftest_app import private_copy, tiny_bundle  # noqa: F401  (fixture)

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.skipif(sync_playwright is None or not Path(CHROMIUM).exists(),
                                reason="needs /usr/bin/chromium and playwright (run .ci/browser-setup)")
LABEL = "dim 3 · smooth skin"


def test_name_a_dimension_and_see_it_on_the_attention_tiles(tiny_bundle, tmp_path):  # noqa: F811
    b = private_copy(tiny_bundle, tmp_path / "bundle")
    shutil.rmtree(b.path / "cache", ignore_errors=True)  # maps other tests computed would hide "Compute mean"
    image = b.images["image_id"].iloc[0]
    shots = screenshot_dir(tmp_path)
    with serve_bundle(b.path, tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60000)  # first runs load torch and the distiller
            page.goto(f"{url}/dimensions?dim=3")
            page.get_by_text("Compute mean").wait_for()                # the page's first run has finished:
            dismiss_guide(page)                                        # a click during it leaves the guide open
            box = page.locator('input[aria-label="Name this dimension"]')
            box.fill("smooth skin")
            box.press("Enter")
            page.get_by_role("button", name="Save name").click()
            page.get_by_text(f"Highest {LABEL}").wait_for()
            assert b.dimension_names[3] == "smooth skin"
            page.screenshot(path=str(shots / "naming_1_dimensions.png"), full_page=True)

            page.goto(f"{url}/attention?images={image[:10]}")
            page.get_by_text("Contributions to the fake logit").wait_for()
            dismiss_guide(page)
            page.get_by_text(f"{LABEL} · ").first.wait_for()             # the tile of dimension 3
            page.screenshot(path=str(shots / "naming_2_attention.png"), full_page=True)
        finally:
            browser.close()
