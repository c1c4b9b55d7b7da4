"""Browser test of the quiz ("Real or AI?"): Debian's Chromium, driven by Playwright, against a real
``streamlit run`` of the app on the demo images (built here with the random CLIP, ~10 s on 2 cores).

A teacher opens the quiz page and copies the link; a student (another session) opens it and sees only the
student's view (no sidebar, no explorer pages or controls, no paths, no toolbar), with the question and both
answers inside the window without scrolling at 1280x800, 1366x768 and on a phone (390x844); they get the
images the spec names, answer all ten, and see both scores. Screenshots of the teacher panel, a question, a
reveal, the end screen (1280x800), the phone view and the teacher's live class results go to
``$ASAP_SCREENSHOTS`` (or the test's tmp folder); the ones in ``docs/screenshots/quiz_*.png`` come from here.
Skips without /usr/bin/chromium or playwright.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from app_pages.glue import keys as K
from asap_core.storage.bundle import Bundle
from asap_core.views import quiz as vq
from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, IMAGES_DECODED_JS, RerunLog, screenshot_dir, serve_bundle

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.skipif(sync_playwright is None or not Path(CHROMIUM).exists(),
                                reason="needs /usr/bin/chromium and playwright (run .ci/browser-setup)")

SPEC = vq.QuizSpec("all", "", 10, 42)
ANSWERS = ["fake", "real", "fake", "fake", "real", "real", "fake", "real", "fake", "real"]
VIEW = {"width": 1280, "height": 800}
SEED_INPUT = f"{K.css_class(K.QUIZ_WIDGETS['seed'])} input"
STUDENT_VIEWS = {"1280": VIEW, "1366": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}
#: what a student must not see: the explorer's navigation, sidebar, toolbar (Deploy, menu) and widgets
EXPLORER_SELECTORS = ("[data-testid='stSidebar']", "[data-testid='stSidebarNav']", "[data-testid='stToolbar']",
                      "[data-testid='stAppDeployButton']", "[data-testid='stMainMenu']", "[role='dialog']",
                      K.css_class(K.QUIZ_WIDGETS["source"]), K.css_class(K.W_GUIDE_BTN))
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
    heading = page.get_by_role("heading", name="Real or AI?")
    if heading.count():                                  # the teacher's page (the student's view has no title)
        heading.evaluate("h => h.scrollIntoView({block: 'start'})")
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
    page.locator(SEED_INPUT).fill(str(SPEC.seed))
    page.locator(SEED_INPUT).press("Enter")
    code = page.locator("[data-testid='stCode'] code")
    code.filter(has_text=f"quiz={SPEC.to_param()}").wait_for()
    settle(page, 0)
    page.screenshot(path=str(shots / "quiz_teacher.png"))
    link = code.inner_text().strip()
    page.close()
    return link


def teacher_round(browser, server: str):
    """A teacher starts the quiz and a class round of it: (the teacher's page, the round's link)."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(60000)
    page.goto(f"{server}/quiz")
    page.get_by_text("Make a quiz above").wait_for()
    close_dialog(page)
    page.locator(SEED_INPUT).fill(str(SPEC.seed))
    page.locator(SEED_INPUT).press("Enter")
    page.locator("[data-testid='stCode'] code").filter(has_text=f"quiz={SPEC.to_param()}").wait_for()
    page.wait_for_function(IDLE_JS)                  # no click while a rerun is drawing (its widgets are stale)
    page.locator(f"{K.css_class(K.QUIZ_START)} button").click()
    page.get_by_text(f"Quiz: {vq.describe(SPEC)}.").wait_for()
    page.wait_for_function(IDLE_JS)
    page.locator("[data-testid='stExpander'] summary").filter(has_text="Class round").click()   # fold it open
    page.locator(f"{K.css_class(K.QUIZ_ROUND_START)} button").click()
    code = page.locator("[data-testid='stCode'] code").filter(has_text="round=")
    code.wait_for()
    page.get_by_text("No answers yet").wait_for()
    return page, code.inner_text().strip()


def in_window(page, selector: str) -> None:
    """The element is visible and lies wholly inside the window, the page not scrolled."""
    box = page.locator(selector).first.bounding_box()
    view = page.viewport_size
    assert box is not None and page.evaluate("() => window.scrollY") == 0
    assert box["x"] >= 0 and box["y"] >= 0, (selector, box)
    assert box["x"] + box["width"] <= view["width"] and box["y"] + box["height"] <= view["height"], (selector, box)


def student_view(browser, link: str, view: dict, demo_bundle: Bundle, shot: Path | None):
    """Open ``link`` as a student in a ``view`` window: only the quiz, question and answers in the window."""
    page = browser.new_page(viewport=view)
    page.reruns = RerunLog(page)
    page.set_default_timeout(45000)
    page.goto(link)
    page.get_by_text("Image 1 of 10", exact=True).wait_for()
    settle(page, 1)
    for sel in EXPLORER_SELECTORS:
        assert page.locator(sel).filter(visible=True).count() == 0, sel
    body = page.locator("body").inner_text()
    assert str(demo_bundle.path) not in body and "Make a quiz" not in body and vq.STUDENT_LINE in body
    for sel in ("[data-testid='stMain'] img", f"{K.css_class(K.QUIZ_REAL)} button", f"{K.css_class(K.QUIZ_AI)} button"):
        in_window(page, sel)
    heights = [page.locator(f"{K.css_class(k)} button").bounding_box()["height"] for k in (K.QUIZ_REAL, K.QUIZ_AI)]
    assert min(heights) >= 44
    if shot is not None:
        page.screenshot(path=str(shot))
    return page


def answer_all(page, ids: list[str], shots: Path) -> None:
    """Answer the ten images (``ANSWERS``); screenshots of the first question and its reveal. Every answer and
    every Next reruns the quiz's play area only (a fragment), not the page."""
    asked = len(page.reruns.scopes)
    for i, said in enumerate(ANSWERS):
        page.get_by_text(f"Image {i + 1} of 10", exact=True).wait_for()
        if i == 0:
            settle(page, 1)
            page.screenshot(path=str(shots / "quiz_question.png"))
            page.locator(f"{K.css_class(K.quiz_sure(0))} button", has_text="fairly sure").click()
            page.wait_for_function(IDLE_JS)
        page.locator(f"{K.css_class(K.QUIZ_AI if said == 'fake' else K.QUIZ_REAL)} button").click()
        page.get_by_text(f"Image {i + 1} of 10: the answer").wait_for()
        if i == 0:
            settle(page, 1)                                    # the picture (a random model: no map, no looks)
            in_window(page, f"{K.css_class(K.QUIZ_NEXT)} button")
            body = page.locator("[data-testid='stMain']").inner_text()
            assert vq.UNTRAINED in body and "p_fake" not in body and "logit" not in body
            page.screenshot(path=str(shots / "quiz_reveal.png"))
        page.locator(f"{K.css_class(K.QUIZ_NEXT)} button").click()
    page.get_by_text("Your score").wait_for()
    assert page.reruns.since(asked) == ["fragment"] * (2 * len(ANSWERS) + 1), page.reruns.since(asked)  # + "sure"


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
            teacher, link = teacher_round(browser, server)          # the students play a class round of it
            assert link.startswith(f"{server}/quiz?") and f"quiz={SPEC.to_param()}" in unquote(link)
            srcs = []
            for name, view in STUDENT_VIEWS.items():            # three students, one link: the same first image
                shot = shots / "quiz_student_phone.png" if name == "phone" else None
                page = student_view(browser, link, view, demo_bundle, shot)
                srcs.append(page.evaluate(PICTURE_SRC_JS))
                if name != "1280":
                    page.close()
                else:
                    student = page
            assert len(set(srcs)) == 1
            page = student
            answer_all(page, ids, shots)
            page.get_by_text("Your score").wait_for()
            settle(page, 0)
            main = page.locator("[data-testid='stMain']").inner_text()
            assert f"{you} / 10" in main and f"{model} / 10" in main
            assert f"You were right on {you} of 10 images" in main
            assert "quiz=all:10:42" in unquote(page.url)          # the address bar still names the quiz
            page.screenshot(path=str(shots / "quiz_end.png"))
            # the teacher's view updates by itself (no click): one student, ten answers, the class's share
            teacher.get_by_text("1 student answered 10 times").wait_for(timeout=30000)
            body = teacher.locator("[data-testid='stMain']").inner_text()
            assert f"{you / 10:.0%}" in body and "Fooled most of the class" in body
            teacher.get_by_text("Class round: see your class").scroll_into_view_if_needed()
            teacher.wait_for_function(IMAGES_DECODED_JS, arg=1)
            teacher.locator("[data-testid='stExpander']").filter(has_text="Class round").last.screenshot(
                path=str(shots / "quiz_class.png"))
        finally:
            browser.close()
