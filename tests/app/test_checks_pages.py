"""The explanation checks in the app (AppTest): the attention view checks the maps it shows on request and
marks each tile; the Dimensions view reports a dimension's faithfulness and sanity; the hosted budget pays."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_pages.glue import keys as K
from tests.conftest_app import local_app_env, no_exception, private_copy, tiny_bundle  # noqa: F401

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")


@pytest.fixture
def bundle(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    local_app_env(monkeypatch, tmp_path / "cache")
    return private_copy(tiny_bundle, tmp_path / "bundle")


@pytest.fixture
def evaluated(check_evaluations):
    return check_evaluations


def app(bundle, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state[K.K_BUNDLE] = str(bundle.path)
    at.session_state[K.K_GUIDE_SEEN] = True
    for k, v in state.items():
        at.session_state[k] = v
    return at


def captions(at: AppTest) -> list[str]:
    return [i.caption for el in at.get("image") for i in el.proto.imgs]


@pytest.mark.slow
def test_attention_checks_its_maps_on_request_and_marks_every_tile(bundle, evaluated):
    ids = bundle.images["image_id"].tolist()[:2]
    at = app(bundle, sel_images=ids).run()
    at.switch_page("app_pages/attention.py").run()
    no_exception(at)
    assert not any("x random" in c for c in captions(at)) and evaluated == {"faithfulness": 0, "sanity": 0}
    at.toggle(key=K.W_ATT_CHECKS).set_value(True).run()
    no_exception(at)
    caps = [c for c in captions(at) if c != "image"]
    assert len(caps) == 2 * 17 and not any("fails sanity" in c for c in caps)  # random CLIP: not assessed
    noted = [c for c in caps if "x random" in c]
    plain = [c.replace("\\", "") for c in noted]  # captions are escaped Markdown
    assert len(noted) >= 2 and all(re.search(r"x random \(\d+\.\d-\d+\.\d\)", c) for c in plain), noted
    text = " ".join(m.value for m in at.markdown).replace("\\", "")  # escaped Markdown, read as shown
    assert "faithfulness to this model" in text and "not whether the pattern is a real artifact" in text
    assert "sanity check: not assessed**: this CLIP is a random initialisation (rank correlation" in text
    assert evaluated["faithfulness"] == 2 and evaluated["sanity"] == 2
    # a new session on the same images reads the cached checks: nothing evaluated, the notes still shown
    again = app(bundle, sel_images=ids).run()
    again.switch_page("app_pages/attention.py").run()
    assert sum("x random" in c for c in captions(again)) == len(noted)
    assert evaluated["faithfulness"] == 2 and evaluated["sanity"] == 2


@pytest.mark.slow
def test_hosted_visitor_pays_for_the_checks_and_is_stopped_at_the_budget(bundle, evaluated, monkeypatch):
    from asap_core.settings import reload_settings

    monkeypatch.setenv("ASAP_HOSTED", "1")
    monkeypatch.setenv("ASAP_BUNDLE_ROOT", str(bundle.path.parent))
    monkeypatch.setenv("ASAP_RELEVANCE_BUDGET", "40")  # the maps fit, the curves do not
    reload_settings()
    ids = bundle.images["image_id"].tolist()[:2]
    at = app(bundle, sel_images=ids).run()
    at.switch_page("app_pages/attention.py").run()
    at.toggle(key=K.W_ATT_CHECKS).set_value(True).run()
    no_exception(at)
    assert evaluated == {"faithfulness": 0, "sanity": 0}
    assert any("per visitor and day" in e.value for e in at.error)  # the budget message, nothing computed


@pytest.mark.slow
def test_dimensions_view_reports_the_dimensions_faithfulness_and_sanity(bundle, evaluated):
    at = app(bundle, sel_dim=3).run()
    at.switch_page("app_pages/dimensions.py").run()
    no_exception(at)
    dim = at.session_state[K.K_DIM]
    assert not any("faithfulness to this model" in m.value or "Sanity check" in m.value for m in at.markdown)
    at.toggle(key=K.W_DIM_CHECKS).set_value(True).run()
    no_exception(at)
    lines = [m.value for m in at.markdown if m.value.startswith(f"**dim {dim}")]
    assert lines and "faithfulness to this model" in lines[0] and "95% interval" in lines[0] and "4 images" in lines[0]
    assert any(m.value.startswith("**Agreement with occlusion: ") for m in at.markdown)
    assert any(m.value.startswith("**Sanity check: not assessed**") for m in at.markdown)  # random tiny CLIP
    assert evaluated["faithfulness"] == 4 and evaluated["sanity"] == 4  # vc.CHECK_IMAGES top images
    specs = " ".join(el.proto.spec or "" for el in at.get("vega_lite_chart"))
    assert "Deletion curve" in specs and "Sanity cascade" in specs


@pytest.mark.slow
def test_dimensions_view_shows_the_checks_analyze_stored(tmp_path, monkeypatch, small_folder, tiny_clip_dir,
                                                          evaluated):
    import contextlib
    import io

    from asap_core.cli import main
    from asap_core.storage.bundle import Bundle

    local_app_env(monkeypatch, tmp_path / "cache")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["analyze", str(small_folder), "--out", str(tmp_path / "b"), "--model", str(tiny_clip_dir),
                     "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--faithfulness", "4"]) == 0
    seen_by_analyze = dict(evaluated)
    at = app(Bundle.open(tmp_path / "b"), sel_dim=5).run()
    at.switch_page("app_pages/dimensions.py").run()
    no_exception(at)
    assert any(m.value.startswith("**dim 5 · faithfulness to this model:") and "checked when the bundle was analysed"
               in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert len(table) == 17 and set(table["sanity"]) == {"not assessed"}  # every target, random CLIP
    assert evaluated == seen_by_analyze  # the page computed nothing
