"""Browser test of the quiz ("Real or AI?"): Debian's Chromium, driven by Playwright, against a real
``streamlit run`` of the app on the demo images (built here with the random CLIP, ~10 s on 2 cores).

A teacher opens the quiz page and copies the link; a student (another session) opens it, gets the images
the spec names, answers all ten, and sees both scores. Screenshots (1280x800) of the teacher panel, a
question, a reveal and the end screen go to ``$ASAP_SCREENSHOTS`` (or the test's tmp folder); the ones in
``docs/screenshots/quiz_*.png`` come from here. Skips without /usr/bin/chromium or playwright.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from asap_core.storage.bundle import Bundle
from asap_core.views import quiz as vq
from browser_helpers import CHROMIUM, CHROMIUM_ARGS, IMAGES_DECODED_JS, screenshot_dir, serve_bundle

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.skipif(sync_playwright is None or not Path(CHROMIUM).exists(),
                                reason="needs /usr/bin/chromium and playwright (run .ci/browser-setup)")

SPEC = vq.QuizSpec("all", "", 10, 42)
ANSWERS = ["fake", "real", "fake", "fake", "real", "real", "fake", "real", "fake", "real"]
VIEW = {"width": 1280, "height": 800}
# the src of the big question image (Streamlit serves media under a content hash: same image, same name)
PICTURE_SRC_JS = "() => document.querySelector(\"[data-testid='stMain'] img\").getAttribute('src')"
# true when Streamlit is not running the script (no stale elements left on the page)
IDLE_JS = "() => !document.querySelector(\"[data-stale='true']\")"


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Bundle:
    """The demo images analysed with the app's random CLIP fallback, in a private folder."""
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze
    from asap_core.pipeline.demo import DEMO_DATA, random_clip_dir

    root = tmp_path_factory.mktemp("quiz_demo")
    model = random_clip_dir(root / "cache")
    analyze(DEMO_DATA, root / "bundle", AnalyzeOptions(model=str(model), cache_dir=str(root / "cache"),
                                                        relevance="last-block", num_workers=0))
    return Bundle.open(root / "bundle")


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    with serve_bundle(demo_bundle.path, tmp_path_factory.mktemp("quiz_browser")) as url:
        yield url


def settle(page, n_images: int) -> None:
    """Wait until the script run is over and ``n_images`` images are decoded (else screenshots show blanks),
    then scroll the page's title to the top (the notices above it stay out of the 1280x800 screenshot)."""
    page.wait_for_function(IDLE_JS)
    page.wait_for_function(IMAGES_DECODED_JS, arg=n_images)
    page.get_by_role("heading", name="Real or AI?").evaluate("h => h.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)


def close_dialog(page) -> None:
    """Close a modal the app opens on a session's first page (e.g. a first-visit guide): it makes the page
    behind it inert. Nothing happens when there is none."""
    page.wait_for_function(IDLE_JS)
    dialog = page.locator("[role='dialog']")
    if dialog.count():
        dialog.get_by_role("button").last.click()   # "Got it" or the corner x
        dialog.wait_for(state="detached")


def teacher_link(browser, server: str, shots: Path) -> str:
    page = browser.new_page(viewport=VIEW)
    page.set_default_timeout(30000)
    page.goto(f"{server}/quiz")
    page.get_by_text("Make a quiz above").wait_for()
    close_dialog(page)
    page.locator(".st-key-quiz_w_seed input").fill(str(SPEC.seed))
    page.locator(".st-key-quiz_w_seed input").press("Enter")
    code = page.locator("[data-testid='stCode'] code")
    code.filter(has_text=f"quiz={SPEC.to_param()}").wait_for()
    settle(page, 0)
    page.screenshot(path=str(shots / "quiz_teacher.png"))
    link = code.inner_text().strip()
    page.close()
    return link


def answer_all(page, ids: list[str], shots: Path) -> None:
    """Answer the ten images (``ANSWERS``); screenshots of the first question and its reveal."""
    for i, said in enumerate(ANSWERS):
        page.get_by_text(f"Image {i + 1} of 10", exact=True).wait_for()
        if i == 0:
            settle(page, 1)
            page.screenshot(path=str(shots / "quiz_question.png"))
            page.locator(".st-key-quiz_sure_0 button", has_text="fairly sure").click()
            page.wait_for_function(IDLE_JS)
        page.locator(".st-key-quiz_ai button" if said == "fake" else ".st-key-quiz_real button").click()
        page.get_by_text(f"Image {i + 1} of 10: the answer").wait_for()
        if i == 0:
            settle(page, 2 + 2 * 3)                            # image + map, two dimensions x three exemplars
            page.screenshot(path=str(shots / "quiz_reveal.png"))
        page.locator(".st-key-quiz_next button").click()


def test_play_a_quiz_from_its_link_to_the_end(server, demo_bundle, tmp_path):
    shots = screenshot_dir(tmp_path)
    ids = vq.quiz_images(demo_bundle.images, SPEC)
    truth = demo_bundle.images.set_index("image_id").loc[ids]
    you = sum(a == t for a, t in zip(ANSWERS, truth["label"]))
    model = int((truth["label"] == truth["pred"]).sum())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            link = teacher_link(browser, server, shots)
            assert link.startswith(f"{server}/quiz?") and "page=quiz" in link
            srcs = []
            for _ in range(2):                                  # two students, one link: the same first image
                page = browser.new_page(viewport=VIEW)
                page.set_default_timeout(45000)
                page.goto(link)
                page.get_by_text("Image 1 of 10", exact=True).wait_for()
                close_dialog(page)
                settle(page, 1)
                srcs.append(page.evaluate(PICTURE_SRC_JS))
            assert srcs[0] == srcs[1]
            answer_all(page, ids, shots)
            page.get_by_text("Your score").wait_for()
            settle(page, 0)
            main = page.locator("[data-testid='stMain']").inner_text()
            assert f"{you} / 10" in main and f"{model} / 10" in main
            assert f"You were right on {you} of 10 images" in main
            assert "quiz=all:10:42" in unquote(page.url)          # the address bar still names the quiz
            page.screenshot(path=str(shots / "quiz_end.png"))
        finally:
            browser.close()
