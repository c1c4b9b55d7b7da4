"""Browser test of the explanation checks (docs/design.md §7) on a real ``streamlit run``: the Attention view checks
the maps of two linked images, says what the figures test and marks the tiles with their intervals; the
Dimensions view reports dimension 3's faithfulness, occlusion agreement and sanity with the deletion curve and
the sanity cascade. Screenshots go to ``$ASAP_SCREENSHOTS`` (or the test's tmp folder) under the names the
README shows (``ASAP_SCREENSHOTS=docs/screenshots`` refreshes them)."""
from __future__ import annotations

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


def test_checks_show_on_the_attention_tiles_and_the_dimensions_view(tiny_bundle, tmp_path):  # noqa: F811
    b = private_copy(tiny_bundle, tmp_path / "bundle")
    images = ",".join(i[:10] for i in b.images["image_id"].iloc[:2])
    shots = screenshot_dir(tmp_path)
    with serve_bundle(b.path, tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90000)  # first runs load torch and the distiller
            page.goto(f"{url}/attention?images={images}")
            page.get_by_text("Contributions to the fake logit").wait_for()
            dismiss_guide(page)
            page.get_by_text("Check these maps").click()
            page.get_by_text("x random (").first.wait_for()  # a tile's faithfulness ratio with its interval
            page.get_by_text("faithfulness to this model").first.wait_for()
            page.get_by_text("sanity check: not assessed").first.wait_for()  # random CLIP: not a verdict by rule
            text = page.inner_text("[data-testid='stMain']")
            assert "not whether the pattern is a real artifact" in text and "fails sanity" not in text
            page.screenshot(path=str(shots / "attention_checks.png"), full_page=True)

            page.goto(f"{url}/dimensions?dim=3")
            page.get_by_text("Can you trust this dimension's maps?").wait_for()
            dismiss_guide(page)
            page.get_by_text("Check the maps of dim 3").click()
            page.get_by_text("Sanity check: not assessed").wait_for()
            page.get_by_text("Agreement with occlusion").wait_for()
            page.get_by_text("dim 3 · faithfulness to this model").first.wait_for()
            page.locator(".vega-embed").last.wait_for()
            page.wait_for_timeout(1500)  # the charts draw
            text = page.inner_text("[data-testid='stMain']")
            assert "Traceback" not in text and "95% interval" in text and "4 images" in text
            page.set_viewport_size({"width": 1400, "height": 1250})
            page.get_by_text("Can you trust this dimension's maps?").evaluate(
                "el => el.scrollIntoView({block: 'start'})")  # the main pane scrolls, not the page
            page.wait_for_timeout(800)
            page.screenshot(path=str(shots / "dimensions_checks.png"))
        finally:
            browser.close()
