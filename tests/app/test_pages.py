"""AppTest tests of the explorer: every page on a bundle built with the tiny CLIP, selections injected
through session state and chart events (AppTest cannot click charts), links, sidebar errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_pages.glue import keys as K
from asap_core.pipeline import demo
from asap_core.settings import reload_settings
from asap_core.storage.bundle import Bundle
from tests.conftest import write_tiny_clip
from tests.conftest_app import chart_data, no_exception, plain, private_copy, tiny_bundle  # noqa: F401  (fixture)

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
TIMEOUT = 60


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:  # noqa: F811
    return Bundle.open(tiny_bundle)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv("ASAP_BUNDLE", raising=False)
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    reload_settings()


def app(bundle_path, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if bundle_path is not None:
        at.session_state[K.K_BUNDLE] = str(bundle_path)
    for k, v in state.items():
        at.session_state[k] = v
    return at


def charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


def chart_key(el) -> str:
    """The user key of a keyed chart (its element id ends with it)."""
    return el.proto.id.split("-", 2)[-1]


def n_images_shown(at: AppTest) -> int:
    return sum(len(el.proto.imgs) for el in at.get("image"))


def biggest_cells(bundle: Bundle, k: int) -> list[int]:
    return [int(c) for c in bundle.cells.sort_values(["n", "cell"], ascending=False)["cell"].head(k)]


# ------------------------------------------------------------------------------------------ overview
@pytest.mark.slow
def test_overview_shows_every_cell_and_selects_by_click_event(bundle):
    at = app(bundle.path).run()
    no_exception(at)
    assert any(bundle.path.name in m.value for m in at.sidebar.markdown)
    (ov,) = charts(at)
    assert chart_data(ov)["cell_id"].nunique() == len(bundle.cells)

    cell = biggest_cells(bundle, 1)[0]
    at.session_state[chart_key(ov)] = {"selection": {"cell": [{"cell_id": cell}]}}
    at.run()
    no_exception(at)
    assert at.session_state[K.K_CELLS] == [cell]
    n = int(bundle.cells.set_index("cell").loc[cell, "n"])
    assert at.metric[0].value == str(n)
    assert len(at.get("image")[-1].proto.imgs) == min(n, 12)   # thumbnails of the cell (after the legend)

    at.button(key=K.OV_OPEN).click().run()          # -> image view of that cell
    no_exception(at)
    assert at.subheader[0].value.startswith(f"Cell {cell} ")


@pytest.mark.slow
def test_overview_grid_and_filters_change_the_cells(bundle):
    at = app(bundle.path).run()
    at.select_slider(key=K.W_GRID).set_value(8).run()
    no_exception(at)
    from asap_core.method.layout import regrid

    assert chart_data(charts(at)[0])["cell_id"].nunique() == len(regrid(bundle.images, 8)[1])
    at.button_group(key=K.W_LABEL).set_value("fake").run()
    no_exception(at)
    data = chart_data(charts(at)[0])
    assert set(data["category"]) <= {"fake, correct", "fake, wrong"}
    assert data.groupby("cell_id")["n"].first().sum() == int((bundle.images["label"] == "fake").sum())


# ------------------------------------------------------------------------------------------ images
@pytest.mark.slow
def test_image_grid_shows_the_cells_images_and_brush_picks(bundle):
    cells = biggest_cells(bundle, 3)
    at = app(bundle.path, sel_cells=cells).run()
    at.switch_page("app_pages/images.py").run()
    no_exception(at)
    members = bundle.images[bundle.images["cell"].isin(cells)]
    (grid,) = charts(at)
    layout = chart_data(grid)
    assert sorted(layout["image_id"]) == sorted(members["image_id"])

    rows = layout[layout["gy"] == 0]
    at.session_state[chart_key(grid)] = {"selection": {
        "brush": {"gx": [-0.5, float(rows["gx"].max()) + 0.4], "gy": [-0.4, 0.4]}, "pick": {}}}
    at.run()
    no_exception(at)
    assert sorted(at.session_state[K.K_IMAGES]) == sorted(rows["image_id"])
    assert any(f"{len(rows)} image" in m.value and "picked" in m.value for m in at.markdown)


@pytest.mark.slow
def test_concept_toggle(bundle):
    cells = biggest_cells(bundle, 2)
    at = app(bundle.path, sel_cells=cells).run()
    at.switch_page("app_pages/images.py").run()
    at.toggle(key=K.W_CONCEPTS).set_value(True).run()
    no_exception(at)
    titles = [m.value for m in at.markdown if m.value.startswith("**Concept ")]
    assert len(titles) == 3
    at.slider(key=K.W_K).set_value(2).run()
    no_exception(at)
    assert len([m for m in at.markdown if m.value.startswith("**Concept ")]) == 2


# ------------------------------------------------------------------------------------------ attention
def test_attention_shows_17_maps_per_picked_image(bundle):
    ids = bundle.images["image_id"].tolist()[:3]
    at = app(bundle.path, sel_images=ids).run()
    at.switch_page("app_pages/attention.py").run()
    no_exception(at)
    assert n_images_shown(at) == 3 * 18               # image + fake logit + 16 dimensions each
    captions = [i.caption for el in at.get("image") for i in el.proto.imgs]
    assert sum(c.startswith("fake logit") for c in captions) == 3
    assert sum(c.startswith("dim ") for c in captions) == 3 * 16
    at.button_group(key=K.W_METHOD).set_value("rollout").run()
    no_exception(at)
    assert at.session_state[K.K_METHOD] == "rollout" and n_images_shown(at) == 3 * 18


# ------------------------------------------------------------------------------------------ dimensions
def test_dimensions_page(bundle, tmp_path):
    import shutil

    own = private_copy(bundle.path, tmp_path / "bundle")     # maps other tests computed stay out of this one
    shutil.rmtree(own.path / "cache", ignore_errors=True)
    at = app(own.path).run()
    at.switch_page("app_pages/dimensions.py").run()
    no_exception(at)
    facet = [el for el in charts(at) if "facet" in json.loads(el.proto.spec)]
    assert facet and chart_data(facet[0])["dim"].nunique() == 16
    assert n_images_shown(at) == 8 + 8                  # the highest and the lowest images
    at.toggle(key=K.W_DIM_MAPS).set_value(True).run()   # mean relevance map of the top images, their crops
    no_exception(at)
    assert n_images_shown(at) == 8 + 8 + 2 + 8


# ------------------------------------------------------------------------------------------ links
def test_link_reopens_bundle_cell_images_and_page(bundle):
    cell = biggest_cells(bundle, 1)[0]
    ids = bundle.images.loc[bundle.images["cell"] == cell, "image_id"].tolist()[:2]
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": str(bundle.path), "cell": str(cell),
                            "images": ",".join(i[:10] for i in ids), "page": "images"})
    at.run()
    no_exception(at)
    assert at.session_state[K.K_BUNDLE] == str(bundle.path)
    assert at.session_state[K.K_CELLS] == [cell]
    assert at.session_state[K.K_IMAGES] == ids
    assert at.subheader[0].value.startswith(f"Cell {cell} ")


# ------------------------------------------------------------------------------------------ sidebar
@pytest.mark.slow
def test_missing_bundle_and_missing_model_are_reported_not_raised(bundle, tiny_clip_dir, tmp_path):
    at = app(tmp_path / "nope").run()
    no_exception(at)
    assert any("nope" in e.value for e in at.sidebar.error)
    assert any("No bundle is open" in i.value for i in at.info)

    copy = tmp_path / "moved-model"
    shutil.copytree(bundle.path, copy)
    shutil.rmtree(copy / "cache")                        # no maps cached: the attention page needs the model
    (copy / "cache").mkdir()
    meta = json.loads((copy / "bundle.json").read_text())
    meta["encoder"]["model_id"] = str(tmp_path / "no-such-clip")
    (copy / "bundle.json").write_text(json.dumps(meta))
    at = app(copy, sel_images=bundle.images["image_id"].tolist()[:1]).run()
    no_exception(at)
    assert any("no-such-clip" in plain(w.value) for w in at.sidebar.warning)
    assert any(c.value.startswith("Fix:") for c in at.sidebar.caption)
    assert charts(at)                                   # the bundle still opens
    at.switch_page("app_pages/attention.py").run()         # maps need the model: message + fix, no traceback
    no_exception(at)
    assert any("no-such-clip" in plain(e.value) for e in at.error)
    assert n_images_shown(at) == 0

    other = write_tiny_clip(tmp_path / "other-clip", seed=1)   # another checkpoint: refused
    at.sidebar.text_input(key=K.W_MODEL_OVERRIDE).set_value(str(other))
    at.sidebar.button(key=K.W_MODEL_BTN).click().run()
    assert any("not the checkpoint" in w.value for w in at.sidebar.warning)
    assert K.K_MODEL_OVERRIDE not in at.session_state

    at.sidebar.text_input(key=K.W_MODEL_OVERRIDE).set_value(str(tiny_clip_dir))   # a local copy of the model
    at.sidebar.button(key=K.W_MODEL_BTN).click().run()
    no_exception(at)
    assert not at.error and n_images_shown(at) == 18


def test_demo_opens_when_no_bundle_is_given(bundle, monkeypatch):
    calls = []

    def fake_demo(model=None, progress=None):  # the real build takes ~20 s; its own tests cover it
        calls.append(model)
        if progress:
            progress("embed", 1, 1)
        return bundle.path, "Demo built with a small RANDOM CLIP"

    monkeypatch.setattr(demo, "ensure_demo_bundle", fake_demo)
    at = app(None).run()
    no_exception(at)
    assert calls == [None]
    assert at.session_state[K.K_BUNDLE] == str(bundle.path)
    assert any("carry no meaning" in w.value for w in at.main.warning)  # the random model is said on the page
    assert chart_data(charts(at)[0])["cell_id"].nunique() == len(bundle.cells)


@pytest.mark.slow
def test_sidebar_analyses_a_folder_and_opens_the_result(bundle, small_folder, tiny_clip_dir, tmp_path):
    at = app(bundle.path).run()
    no_exception(at)
    out = tmp_path / "fresh-bundle"
    at.sidebar.text_input(key=K.W_AN_DIR).set_value(str(small_folder))
    at.sidebar.text_input(key=K.W_AN_OUT).set_value(str(out))
    at.sidebar.text_input(key=K.W_AN_MODEL).set_value(str(tiny_clip_dir))
    at.sidebar.button(key=K.W_AN_BTN).click().run()
    no_exception(at)
    assert at.session_state[K.K_BUNDLE] == str(out)
    assert Bundle.open(out).meta["counts"]["used"] == 48
    assert "Images found: 48" in at.session_state[K.K_LAST_REPORT]
    assert chart_data(charts(at)[0])["cell_id"].nunique() == len(Bundle.open(out).cells)
