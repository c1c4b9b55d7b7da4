"""The first visit: "How to read this" opens once per session and again from the sidebar; the demo's first
load says what it prepares and shows each step with a bar (``byo.staged_progress``)."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_pages.glue import guide
from app_pages.glue import keys as K
from app_pages.glue.byo import STAGE_WORDS, _Stages
from asap_core.settings import reload_settings
from tests.conftest_app import no_exception, tiny_bundle  # noqa: F401  (fixture)

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
TIMEOUT = 60


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for k in ("ASAP_BUNDLE", "ASAP_HOSTED", "ASAP_BUNDLE_ROOT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    reload_settings()


def dialogs(at: AppTest) -> list[str]:
    """Titles of the dialogs open after the last run."""
    return [d.proto.dialog.title for d in at.get("dialog")]


def test_guide_has_short_plain_points():
    assert 5 <= len(guide.GUIDE_POINTS) <= 7
    text = guide.guide_text().lower()
    for words in ("pie", "p_fake", "not 100 % accurate", "dimension", "relevance map", "pattern", "start"):
        assert words in text
    assert all(len(body.split()) <= 60 for _, body in guide.GUIDE_POINTS)
    assert "/" not in guide.guide_text().replace("AI-made", "")  # no paths, no jargon of file layouts


def test_guide_opens_on_the_first_run_only_and_reopens_from_the_sidebar(tiny_bundle):  # noqa: F811
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state[K.K_BUNDLE] = str(tiny_bundle)
    at.run()
    no_exception(at)
    assert dialogs(at) == ["How to read this"]
    assert any("p_fake is a score" in m.value for m in at.markdown)
    assert at.get("vega_lite_chart")                          # the overview is drawn behind it
    at.button(key=K.W_GUIDE_OK).click().run()                  # "Got it" closes it
    no_exception(at)
    assert dialogs(at) == []
    at.run()
    assert dialogs(at) == []                                   # not again in this session
    at.sidebar.button(key=K.W_GUIDE_BTN).click().run()
    no_exception(at)
    assert dialogs(at) == ["How to read this"]
    at.switch_page("app_pages/dimensions.py").run()
    no_exception(at)
    assert dialogs(at) == []                                   # a page switch does not reopen it


def test_first_load_names_what_it_prepares_and_shows_each_step(tiny_bundle, monkeypatch):  # noqa: F811
    from asap_core.pipeline import demo

    seen = []

    def fake_demo(model=None, progress=None):  # the real build is tested in test_demo; here: what it shows
        for stage, done, total in (("hash", 300, 300), ("embed", 0, 300), ("embed", 300, 300),
                                   ("relevance", 300, 300)):
            progress(stage, done, total)
        seen.append(progress)
        return tiny_bundle, ""

    monkeypatch.setattr(demo, "ensure_demo_bundle", fake_demo)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    no_exception(at)
    assert seen and at.session_state[K.K_BUNDLE] == str(tiny_bundle)
    assert K.K_WANT_DEMO not in at.session_state                # built: not again on the next run
    assert at.get("vega_lite_chart") and dialogs(at) == ["How to read this"]
    assert not at.get("progress")                               # the bar and message are gone once it is open


class _Bar:
    def __init__(self):
        self.calls = []

    def progress(self, value, text=""):
        self.calls.append((round(value, 3), text))


def test_stage_bar_words_steps_and_time_left(monkeypatch):
    clock = iter([0.0, 0.0, 1.0, 1.0, 3.0, 3.0, 5.0, 5.0, 6.0, 6.0, 8.0, 8.0])
    monkeypatch.setattr("app_pages.glue.byo.time.perf_counter", lambda: next(clock))
    bar = _Bar()
    stages = _Stages(bar, 6)
    stages("hash", 300, 300)                                    # ends: the next (silent) step is named
    assert bar.calls[-1][1].startswith(f"Step 3 of 6: {STAGE_WORDS['embed']}")
    stages("embed", 100, 300)                                   # 100 in 2 s: 200 more take about 4 s
    assert bar.calls[-1][0] == pytest.approx(1 / 3, abs=1e-3) and "about 4 s left in this step" in bar.calls[-1][1]
    stages("embed", 300, 300)
    assert bar.calls[-1][1].startswith(f"Step 4 of 6: {STAGE_WORDS['fit']}")
    stages("relevance", 0, 300)
    assert bar.calls[-1][1].startswith(f"Step 5 of 6: {STAGE_WORDS['relevance']}")
