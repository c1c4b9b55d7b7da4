"""Hosted mode in a real browser: what a visitor can make the explorer say never holds a traceback, an
exception name or a server path (they tell an attacker where to aim).

One ``streamlit run`` with ``ASAP_HOSTED=1`` over a bundle root that holds a good bundle, a tampered one that
sorts first, one whose model is missing and a hidden temp folder; Chromium then visits it with bad query
values, picks the broken bundle, uploads bad files, and opens fresh sessions against a relevance budget of
one image (the budget is per client, not per session). Skips without /usr/bin/chromium and playwright.
"""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asap_core.storage.bundle import Bundle
from tests.browser_helpers import CHROMIUM, MAIN_IMAGES, chromium, streamlit_server
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.skipif(sync_playwright is None or not Path(CHROMIUM).exists(),
                                reason="needs /usr/bin/chromium and playwright (run .ci/browser-setup)")

# what must never reach a visitor: a traceback, an exception's class name, an absolute server path
LEAKS = re.compile(r"Traceback|File \"|\b[A-Z][A-Za-z]*(?:Error|Exception)\b|"
                   r"(?<![\w.])/(?:tmp|root|home|srv|usr|etc|var|work|opt|proc|dev)(?:/|\b)")
MISSING_MODEL = "/srv/models/missing-clip"
VISITOR_HEADER = "X-Test-Visitor"  # each test is its own visitor (its own budget); see ASAP_CLIENT_HEADER


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("cache"))
    (dest / "cache").mkdir()
    return dest


@pytest.fixture(scope="module")
def site(tiny_bundle, tmp_path_factory):  # noqa: F811
    """(url, bundle root, work dir) of a hosted server over good / broken / model-less bundles."""
    work = tmp_path_factory.mktemp("hosted_browser")
    root = work / "bundles"
    _copy(tiny_bundle, root / "good")
    broken = _copy(tiny_bundle, root / "aaa-broken")                    # sorts first: the landing page's pick
    (broken / "bundle.json").write_text("{ this is not json")
    nomodel = _copy(tiny_bundle, root / "nomodel")
    meta = json.loads((nomodel / "bundle.json").read_text())
    meta["encoder"]["model_id"] = MISSING_MODEL
    (nomodel / "bundle.json").write_text(json.dumps(meta))
    _copy(tiny_bundle, root / ".good.tmp-1-deadbeef")                  # a run's temp folder: never offered
    env = {"ASAP_HOSTED": "1", "ASAP_BUNDLE_ROOT": str(root), "ASAP_CACHE_DIR": str(work / "cache"),
           "ASAP_RELEVANCE_BUDGET": "1", "ASAP_MAX_UPLOAD_MB": "1", "ASAP_BUNDLE": "",
           "ASAP_CLIENT_HEADER": VISITOR_HEADER, "ASAP_TRUSTED_PROXIES": "1"}
    with streamlit_server(env, work / "server.log") as url:
        yield url, root, work


@pytest.fixture(scope="module")
def browser(site):
    with chromium() as b:
        yield b


def _settled(page, text: str | None = None) -> str:
    """The page's text once the app has finished its run (and shows ``text`` when given)."""
    if text:
        page.get_by_text(text).filter(visible=True).first.wait_for()
    page.wait_for_function("() => !document.querySelector(\"[data-testid='stStatusWidget'] button\")"
                           " && document.querySelector(\"[data-testid='stSidebar']\")")
    page.wait_for_timeout(500)
    if page.get_by_role("dialog").count():  # a new session's "How to read this" covers the page
        page.get_by_role("button", name="Got it").click()
        page.get_by_role("dialog").wait_for(state="detached")
    return page.evaluate("() => document.body.innerText")


def _clean(text: str, work: Path) -> None:
    leak = LEAKS.search(text)
    assert leak is None, f"visitor sees {leak.group(0)!r} in: {text[max(0, leak.start() - 200):leak.end() + 200]}"
    assert str(work) not in text


def _page(browser, visitor: str | None = None):
    """A fresh browser session (context) of ``visitor`` (default: a new visitor each time)."""
    import hashlib
    import uuid

    # the header plays our one trusted proxy: it names each visitor by a made-up address of its own
    key = hashlib.sha1((visitor or uuid.uuid4().hex).encode()).digest()
    address = f"198.51.{key[0]}.{key[1] or 1}"
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000},
                              extra_http_headers={VISITOR_HEADER: address})
    page = ctx.new_page()
    page.set_default_timeout(60000)
    return ctx, page


def test_broken_bundle_is_listed_unavailable_not_fatal(site, browser):
    url, root, work = site
    ctx, page = _page(browser)
    try:
        page.goto(url)
        page.wait_for_selector(".vega-embed svg")                     # the landing page draws an overview
        text = _settled(page, "Bundle")
        _clean(text, work)
        picker = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox")
        assert "bundle=good" in page.url                               # the broken one (first) was skipped
        picker.click()
        options = [o.inner_text() for o in page.get_by_role("option").all()]
        assert "aaa-broken (unavailable)" in options and "good" in options and "nomodel" in options
        assert not any(o.startswith(".") for o in options)             # hidden temp folders are never offered
        page.get_by_role("option", name="aaa-broken (unavailable)").click()
        text = _settled(page, "is unavailable")
        _clean(text, work)
        assert "bundle.json" in text                                   # what is wrong, in words
    finally:
        ctx.close()


@pytest.mark.parametrize("query", ["bundle=%00abc", "bundle=" + "x" * 5000, "bundle=good/model",
                                   "bundle=../bundles/good", "bundle=/etc/passwd", "bundle=.good.tmp-1-deadbeef",
                                   "bundle=good&grid=-3&cell=zz&images=..%2F..&page=nowhere"])
def test_bad_query_values_give_plain_words(site, browser, query):
    url, root, work = site
    ctx, page = _page(browser)
    try:
        page.goto(f"{url}/?{query}")
        expected = None if query.startswith("bundle=good&") else "No bundle is open"
        text = _settled(page, expected)  # waits for the words (a busy machine may draw them late)
        _clean(text, work)
        if expected:
            assert expected in text
    finally:
        ctx.close()


def test_missing_model_is_named_without_its_path(site, browser):
    url, root, work = site
    ids = Bundle.open(root / "nomodel").images["image_id"].tolist()
    ctx, page = _page(browser)
    try:
        page.goto(f"{url}/?bundle=nomodel")
        text = _settled(page, "Model")
        _clean(text, work)
        assert "missing-clip" in text                                  # named, by its last part
        page.goto(f"{url}/attention?bundle=nomodel&images={ids[0][:12]}")
        text = _settled(page, "need the bundle's CLIP")
        _clean(text, work)
    finally:
        ctx.close()


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name,payload,expect", [
    ("notes.png", b"this is not an image at all", "not an image"),
    ("strip.png", _png(65500, 1), "p_fake"),                           # extreme geometry: analysed, bounded
    ("huge.png", b"\x89PNG" + b"\0" * (1024 * 1024 + 10), "MB"),        # over ASAP_MAX_UPLOAD_MB
], ids=["not-an-image", "strip", "over-the-size-limit"])
def test_bad_uploads_are_refused_in_plain_words(site, browser, name, payload, expect, tmp_path):
    url, root, work = site
    f = tmp_path / name
    f.write_bytes(payload)
    ctx, page = _page(browser)
    try:
        page.goto(f"{url}/single?bundle=good")
        _settled(page, "No image uploaded yet")
        page.locator("[data-testid='stMain'] input[type=file]").set_input_files(str(f))
        text = _settled(page, expect)
        _clean(text, work)
    finally:
        ctx.close()


def test_upload_with_a_missing_model_says_so_without_paths(site, browser, tmp_path):
    url, root, work = site
    f = tmp_path / "small.png"
    f.write_bytes(_png(64, 48))
    ctx, page = _page(browser)
    try:
        page.goto(f"{url}/single?bundle=nomodel")
        _settled(page, "No image uploaded yet")
        page.locator("[data-testid='stMain'] input[type=file]").set_input_files(str(f))
        text = _settled(page, "need the bundle's CLIP")
        _clean(text, work)
    finally:
        ctx.close()


def test_fresh_sessions_share_the_visitors_budget(site, browser):
    """Budget 1 image per client: a second, fresh browser session from the same address is refused."""
    url, root, work = site
    ids = Bundle.open(root / "good").images["image_id"].tolist()
    first, page = _page(browser, "visitor-a")
    try:
        page.goto(f"{url}/attention?bundle=good&images={ids[0][:12]}")
        page.locator(MAIN_IMAGES).nth(17).wait_for()                   # 18 maps computed and shown
        _clean(_settled(page), work)
    finally:
        first.close()
    second, page = _page(browser, "visitor-a")                        # a new session, same visitor
    try:
        page.goto(f"{url}/attention?bundle=good&images={ids[1][:12]}")
        text = _settled(page, "used 1 of the 1")
        _clean(text, work)
    finally:
        second.close()
    other, page = _page(browser, "visitor-b")                         # another visitor has a budget of his own
    try:
        page.goto(f"{url}/attention?bundle=good&images={ids[1][:12]}")
        page.locator(MAIN_IMAGES).nth(17).wait_for()
    finally:
        other.close()
