"""Browser test of the analysis pages (Debian's Chromium + Playwright, a real ``streamlit run``): patterns
(compute the impact of a saved pattern), generators (confusion matrix, then the overview coloured by
predicted generator), robustness (launder a sample) and single image (upload a file). One screenshot per page
into ``$ASAP_SCREENSHOTS`` (or the test's tmp folder); no error block may show. Skips without Chromium or
Playwright (``.ci/browser-setup`` installs both)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from asap_core.analyses.patterns import PatternStore, pattern_from_selection
from asap_core.storage.bundle import Bundle
from tests.browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ERRORS_JS,
    IMAGES_DECODED_JS,
    dismiss_guide,
    screenshot_dir,
    serve_bundle,
)
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.skipif(sync_playwright is None or not Path(CHROMIUM).exists(),
                                reason="needs /usr/bin/chromium and playwright (run .ci/browser-setup)")
CHARTS_DRAWN_JS = "n => document.querySelectorAll('.vega-embed svg, .vega-embed canvas').length >= n"
NAV_LINK = "[data-testid='stSidebarNavLink']"


@pytest.fixture(scope="module")
def bundle_copy(tiny_bundle, tmp_path_factory) -> Path:  # noqa: F811
    """A copy of the tiny bundle holding one saved pattern (six fakes)."""
    dest = tmp_path_factory.mktemp("browser6") / "bundle"
    shutil.copytree(tiny_bundle, dest)
    b = Bundle.open(dest)
    fakes = b.images.loc[b.images["label"] == "fake", "image_id"].tolist()[:6]
    PatternStore(b).add(pattern_from_selection("six fakes", fakes, note="top 25 % relevance"))
    return dest


@pytest.fixture(scope="module")
def server(bundle_copy, tmp_path_factory):
    with serve_bundle(bundle_copy, tmp_path_factory.mktemp("browser6-server")) as url:
        yield url


@pytest.fixture
def shots(tmp_path) -> Path:
    return screenshot_dir(tmp_path)


def _settle(page, n_images: int = 0, n_charts: int = 0) -> None:
    """Wait until the app is idle, charts are drawn and images decoded; fail on any error block."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=45000)
    if n_charts:
        page.wait_for_function(CHARTS_DRAWN_JS, arg=n_charts)
    if n_images:
        page.wait_for_function(IMAGES_DECODED_JS, arg=n_images)
    page.wait_for_timeout(300)
    assert page.evaluate(ERRORS_JS) == []


def _open(page, title: str) -> None:
    """Go to a page through the sidebar navigation (same session: a typed /path would open a new session)."""
    page.locator(NAV_LINK, has_text=title).first.click()


def test_analysis_pages_in_the_browser(server, bundle_copy, shots):
    sample = Bundle.open(bundle_copy).images["path"].iloc[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})  # tall: Streamlit scrolls inside
            page.set_default_timeout(30000)

            page.goto(server)
            dismiss_guide(page)
            page.get_by_text("Representation overview").wait_for()   # the entry script's navigation is up
            assert page.locator(NAV_LINK, has_text="Single image").count() == 1
            _open(page, "Patterns")
            page.get_by_role("button", name="Compute impact").click()
            page.get_by_text("Ranking (by excess impact").wait_for(timeout=45000)
            page.get_by_text("Masking the regions").wait_for()
            _settle(page, n_images=1, n_charts=2)
            page.screenshot(path=str(shots / "6_patterns.png"), full_page=True)

            _open(page, "Generators")
            page.get_by_text("Confusion matrix", exact=False).first.wait_for()
            _settle(page, n_charts=1)
            page.screenshot(path=str(shots / "7_generators.png"), full_page=True)

            page.get_by_role("button", name="Colour the overview by predicted generator").click()
            page.locator(".vega-embed path[aria-label*='this slice: gen_']").first.wait_for()
            _settle(page, n_charts=1)
            page.screenshot(path=str(shots / "8_overview_by_generator.png"), full_page=True)

            _open(page, "Robustness")
            page.get_by_role("button", name="Re-encode and predict").click()
            page.get_by_text("Per image and setting").wait_for(timeout=45000)
            _settle(page, n_images=4, n_charts=1)
            page.screenshot(path=str(shots / "9_robustness.png"), full_page=True)

            _open(page, "Single image")
            page.locator("[data-testid='stMain'] input[type='file']").set_input_files(sample)
            page.get_by_text("nearest bundle images").wait_for(timeout=45000)
            _settle(page, n_images=1 + 8 + 18)   # the upload, 8 neighbours, image + 17 map tiles
            page.screenshot(path=str(shots / "10_single_image.png"), full_page=True)
        finally:
            browser.close()
