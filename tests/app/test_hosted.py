"""Hosted mode (``ASAP_HOSTED=1``) in the app, with AppTest: bundles only by name under the root, links that
escape it refused, pickle-bearing bundles refused, models only from the allow-list, relevance budget."""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app_pages.glue import keys as K
from asap_core.settings import reload_settings
from asap_core.storage.bundle import Bundle
from tests.conftest_app import no_exception, plain, tiny_bundle  # noqa: F401  (fixture)

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
TIMEOUT = 60


def _copy_bundle(src: Path, dest: Path) -> Path:
    """A copy of ``src`` without its cache (so no relevance map is stored yet)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("cache"))
    (dest / "cache").mkdir()
    return dest


@pytest.fixture
def root(tiny_bundle, tmp_path, monkeypatch) -> Iterator[Path]:  # noqa: F811
    """A bundle root with ``tiny`` and ``other`` (two copies of the tiny bundle), hosted mode on."""
    root = tmp_path / "bundles"
    _copy_bundle(tiny_bundle, root / "tiny")
    _copy_bundle(tiny_bundle, root / "other")
    (tmp_path / "outside").mkdir()
    monkeypatch.delenv("ASAP_BUNDLE", raising=False)
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASAP_HOSTED", "1")
    monkeypatch.setenv("ASAP_BUNDLE_ROOT", str(root))
    monkeypatch.setenv("ASAP_RELEVANCE_BUDGET", "200")
    monkeypatch.delenv("ASAP_MODEL_ALLOWLIST", raising=False)
    reload_settings()
    yield root
    _restore_client_options()


def _restore_client_options() -> None:
    """The app sets these process-wide in hosted mode (``st.set_option``); later tests run the local app."""
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")
    config.set_option("client.toolbarMode", "auto")


def n_images_shown(at: AppTest) -> int:
    return sum(len(el.proto.imgs) for el in at.get("image"))


def open_link(**params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(params)
    return at.run()


@pytest.mark.slow
def test_hosted_sidebar_offers_bundle_names_not_paths(root):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    no_exception(at)
    assert at.session_state[K.K_BUNDLE] == str((root / "other").resolve())   # first listed bundle
    assert not at.text_input                                     # no folder / model / analysis boxes
    assert not any("Analyse" in e.label for e in at.sidebar.expander)
    assert not any(str(root) in c.value for c in at.sidebar.caption)             # no server paths shown
    (picker,) = at.sidebar.selectbox
    assert picker.options == ["other", "tiny"] and picker.value == "other"
    assert at.query_params["bundle"] == "other"                # links name the bundle, not its path

    picker.set_value("tiny").run()
    no_exception(at)
    assert at.session_state[K.K_BUNDLE] == str((root / "tiny").resolve())
    assert at.get("vega_lite_chart")                             # the overview of the picked bundle

    at = open_link(bundle="tiny", page="dimensions")             # a copied link reopens by name
    no_exception(at)
    assert at.session_state[K.K_BUNDLE] == str((root / "tiny").resolve())


@pytest.mark.parametrize("name", ["../outside", "tiny/../../outside", "/etc", "ABS", "~root"])
def test_link_escaping_the_root_is_refused(root, name):
    if name == "ABS":                        # even the absolute path of a served bundle
        name = str(root / "tiny")
    at = open_link(bundle=name)
    no_exception(at)
    assert at.session_state[K.K_BUNDLE] is None
    errors = [plain(e.value) for e in at.sidebar.error]              # shown as text
    assert errors and ("bundle folder" in errors[0] or "no bundle" in errors[0])
    assert str(root) not in errors[0] and (name.startswith(("/", "~")) or name in errors[0])  # echoed, no path
    assert any("No bundle is open" in i.value for i in at.info)
    assert not at.get("vega_lite_chart")


def test_pickle_bearing_bundle_is_refused(root):
    (root / "tiny" / "model" / "extra.pkl").write_bytes(b"\x80\x04K\x01.")
    at = open_link(bundle="tiny")
    no_exception(at)
    assert at.session_state[K.K_BUNDLE] is None
    assert any("extra.pkl" in plain(e.value) and "pickled code" in plain(e.value) for e in at.sidebar.error)

    at.sidebar.selectbox[0].set_value("tiny").run()              # picking it from the list: refused too
    no_exception(at)
    assert at.session_state[K.K_BUNDLE] is None
    assert any("extra.pkl" in plain(e.value) for e in at.sidebar.error)


@pytest.mark.slow
def test_model_override_only_from_the_allow_list(root, tiny_clip_dir, tmp_path, monkeypatch):
    meta_path = root / "tiny" / "bundle.json"
    meta = json.loads(meta_path.read_text())
    meta["encoder"]["model_id"] = str(tmp_path / "no-such-clip")   # the bundle's model cannot be loaded here
    meta_path.write_text(json.dumps(meta))
    ids = Bundle.open(root / "tiny").images["image_id"].tolist()[:1]

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": "tiny"})
    at.session_state[K.K_IMAGES] = ids
    at.run()
    no_exception(at)
    assert any("no such" in c.value.lower() or "No other model" in c.value for c in at.sidebar.caption)
    assert not at.text_input and len(at.sidebar.selectbox) == 1  # only the bundle picker, no model box

    monkeypatch.setenv("ASAP_MODEL_ALLOWLIST", f"openai/clip-vit-base-patch32,{tiny_clip_dir}")
    reload_settings()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": "tiny"})
    at.session_state[K.K_IMAGES] = ids
    at.run()
    model_box = at.sidebar.selectbox(key=K.W_MODEL_OVERRIDE)
    assert model_box.options == ["openai/clip-vit-base-patch32", str(tiny_clip_dir)]
    model_box.set_value(str(tiny_clip_dir))
    at.sidebar.button(key=K.W_MODEL_BTN).click().run()
    no_exception(at)
    assert at.session_state[K.K_MODEL_OVERRIDE] == {str((root / "tiny").resolve()): str(tiny_clip_dir)}
    at.switch_page("app_pages/attention.py").run()                 # maps now computed with the allowed model
    no_exception(at)
    assert not at.error and n_images_shown(at) == 18


@pytest.mark.slow
def test_relevance_budget_stops_on_demand_maps(root, monkeypatch):
    monkeypatch.setenv("ASAP_RELEVANCE_BUDGET", "1")
    reload_settings()
    ids = Bundle.open(root / "tiny").images["image_id"].tolist()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": "tiny"})
    at.session_state[K.K_IMAGES] = ids[:2]                     # two images without cached maps
    at.run()
    at.switch_page("app_pages/attention.py").run()
    no_exception(at)
    assert any("used 0 of the 1 images" in e.value and "2 more" in e.value for e in at.error)
    assert n_images_shown(at) == 0

    at.session_state[K.K_IMAGES] = ids[:1]                     # one fits the budget
    at.run()
    no_exception(at)
    assert not at.error and n_images_shown(at) == 18
    at.run()                                                     # cached now: showing it again costs nothing
    assert not at.error and n_images_shown(at) == 18

    at.session_state[K.K_IMAGES] = ids[1:2]                    # the budget is spent
    at.run()
    no_exception(at)
    assert any("used 1 of the 1" in e.value for e in at.error) and n_images_shown(at) == 0

    at.switch_page("app_pages/dimensions.py").run()                  # the mean map of the top images: refused too
    at.toggle(key=K.W_DIM_MAPS).set_value(True).run()
    no_exception(at)
    assert any("used 1 of the 1" in e.value for e in at.error)


@pytest.mark.slow
def test_every_tampering_leaves_the_explorer_up(root):
    """Each tampered bundle of ``test_bundle.TAMPERINGS``, sorted first under the root: the landing page opens the
    good one, the picker lists the tampered one as unavailable with its problem in words and without paths."""
    import re

    from tests.storage.test_bundle import TAMPERINGS

    shutil.rmtree(root / "other")
    for i, (tamper, _) in enumerate(TAMPERINGS.values()):
        tamper(_copy_bundle(root / "tiny", root / f"a{i:02d}"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    no_exception(at)
    assert at.session_state[K.K_BUNDLE] == str((root / "tiny").resolve())
    assert at.get("vega_lite_chart")
    (picker,) = at.sidebar.selectbox
    shown = list(picker.options)                                    # as the visitor reads them
    assert shown == [f"a{i:02d} (unavailable)" for i in range(len(TAMPERINGS))] + ["tiny"]
    for i, kind in enumerate(TAMPERINGS):
        picker.set_value(f"a{i:02d}").run()
        no_exception(at)
        words = " ".join(w.value for w in at.sidebar.warning)
        assert "unavailable" in words, kind
        assert str(root) not in words and not re.search(r"(?<![\w.])/(tmp|root|home)\b", words), (kind, words)
        assert not re.search(r"\b[A-Z]\w*(Error|Exception)\b", words), (kind, words)


def test_an_unexpected_failure_shows_an_error_id_not_a_traceback(root, monkeypatch, caplog):
    """The error boundary: a bug inside a view becomes a plain sentence with an error id; the server log holds
    the exception under that id; the sidebar (and so every other page) stays usable."""
    import logging
    import re

    from asap_core.views import overview as ov

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail from /srv/internal/path")

    monkeypatch.setattr(ov, "overview_chart", broken)
    st.cache_data.clear()                                       # the overview's spec may be cached already
    with caplog.at_level(logging.ERROR, logger="asap_explorer"):
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.query_params.update({"bundle": "tiny"})
        at.run()
    assert not at.exception                                      # no traceback block
    shown = " ".join(e.value for e in at.error)
    eid = re.search(r"error id ([0-9a-f]{8})", shown).group(1)
    assert "RuntimeError" not in shown and "/srv" not in shown and "secret" not in shown
    assert at.sidebar.selectbox                                   # the picker is still there
    logged = [r for r in caplog.records if eid in r.getMessage()]
    assert logged and logged[0].exc_info and "secret detail" in str(logged[0].exc_info[1])


def test_locally_an_unexpected_failure_is_raised_for_the_developer(tiny_bundle, monkeypatch):  # noqa: F811
    from asap_core.views import overview as ov

    monkeypatch.setattr(ov, "overview_chart", lambda *a, **k: 1 / 0)
    st.cache_data.clear()
    _restore_client_options()
    monkeypatch.setenv("ASAP_HOSTED", "0")
    monkeypatch.setenv("ASAP_BUNDLE", str(tiny_bundle))
    reload_settings()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert at.exception and "division by zero" in at.exception[0].value and at.exception[0].stack_trace
