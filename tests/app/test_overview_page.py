"""Explorer defects found while preparing a class quiz: the Overview's tooltip and panel agree on a cell's
accuracy, its "Open image grid" comes before the metrics (which wrap, not cut), the guide places the legend
where it is; picks belong to their cells (dropped on another cell) and a shift-click adds to a brush;
Patterns and Generators name their columns in words."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app_pages.glue import keys as K
from app_pages.glue.guide import guide_text
from asap_core.storage.bundle import Bundle
from asap_core.views import generators as vgen
from asap_core.views import grid as vg
from asap_core.views import overview as ov
from asap_core.views import patterns as vp
from asap_core.views import single as vsi
from asap_core.views import state as vs
from tests.conftest_app import local_app_env, no_exception, private_copy, tiny_bundle  # noqa: F401  (fixture)

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")


def cells_of(counts: list[tuple[int, int, int, int]]) -> pd.DataFrame:
    """A cell table: per cell (real ok, real wrong, fake ok, fake wrong), no unlabelled images."""
    rows = []
    for i, (a, b, f, g) in enumerate(counts):
        n = a + b + f + g
        rows.append({"cell": i, "x": float(i), "y": 0.0, "n_real_ok": a, "n_real_wrong": b, "n_fake_ok": f,
                     "n_fake_wrong": g, "n_unlabelled": 0, "n": n, "accuracy": (a + f) / n, "mean_conf": 0.7,
                     "dominant_generator": None, "share_fake": (f + g) / n})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("counts", [(10, 1, 13, 2), (1, 0, 0, 7), (100, 1, 99, 0)])   # 23/26, 1/8 (a tie), 199/200
def test_the_tooltip_and_the_panel_give_the_same_accuracy(counts):
    cells = cells_of([counts])
    tooltip = ov.pie_slices(cells)["accuracy_text"].iloc[0]
    panel = ov.percent(ov.selected_summary(cells, [0])["accuracy"])
    assert tooltip == panel == f"{(counts[0] + counts[2]) / sum(counts):.0%}"
    fields = [t.to_dict()["field"] for t in ov._tooltip()]
    assert "accuracy_text" in fields and "accuracy" not in fields
    assert ov.percent(float("nan")) == "n/a"


def test_the_guide_puts_the_legend_where_the_overview_draws_it():
    assert "legend below the map" in guide_text() and "above the map" not in guide_text()
    source = (Path(APP).parent / "app_pages" / "overview.py").read_text()
    assert source.index("st.vega_lite_chart(") < source.index("ov.legend_svg()")   # the legend comes after


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Bundle:  # noqa: F811
    return private_copy(tiny_bundle, tmp_path_factory.mktemp("defects") / "bundle")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    local_app_env(monkeypatch, tmp_path / "cache")


def app_on(bundle: Bundle, page: str, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state[K.K_BUNDLE] = str(bundle.path)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page(f"app_pages/{page}.py").run()
    no_exception(at)
    return at


def flat(node):
    """The elements of an AppTest tree in page order."""
    yield node
    for child in getattr(node, "children", {}).values():
        yield from flat(child)


@pytest.mark.slow
def test_the_open_image_grid_button_comes_before_the_cells_metrics(bundle):
    cell = int(bundle.cells.sort_values("n", ascending=False)["cell"].iloc[0])
    at = app_on(bundle, "overview", sel_cells=[cell])
    order = [getattr(e, "key", None) or getattr(e, "label", None) for e in flat(at.main)]
    assert order.index(K.OV_OPEN) < order.index("images") < order.index("accuracy")


@pytest.mark.slow
def test_picks_of_another_cell_are_dropped(bundle):
    by_n = bundle.cells.sort_values("n", ascending=False)["cell"].tolist()
    first, second = int(by_n[0]), int(by_n[1])
    ids = bundle.images["image_id"].astype(str)
    picks = ids[bundle.images["cell"] == first].head(2).tolist()
    at = app_on(bundle, "images", sel_cells=[first], sel_images=picks)
    assert at.session_state[K.K_IMAGES] == picks                               # picks in their own cell stay
    assert any(m.value == "**2 images picked**" for m in at.markdown)
    at.session_state[K.K_CELLS] = [second]                                      # another cell: no picks
    at.run()
    no_exception(at)
    assert at.session_state[K.K_IMAGES] == [] and any(c.value == "No image picked yet." for c in at.caption)


def test_a_shift_click_adds_to_the_brush_instead_of_starting_a_new_one():
    layout = pd.DataFrame({"image_id": list("abcd"), "gx": [0, 1, 0, 1], "gy": [0, 0, 1, 1],
                           "outcome": ["right"] * 4, "url": [""] * 4, "file": list("abcd"), "label": ["real"] * 4,
                           "pred": ["real"] * 4, "p_fake": [0.1] * 4, "generator": [None] * 4, "cell": [0] * 4})
    spec = vg.grid_chart(layout, 2, 2).to_dict()
    params = {p["name"]: p for p in spec["params"]}
    assert params["brush"]["select"]["on"] == vg.BRUSH_ON and "[!event.shiftKey]" in vg.BRUSH_ON
    assert params["pick"]["select"]["toggle"] == "event.shiftKey"
    event = {"selection": {"brush": {"gx": [-0.5, 1.5], "gy": [-0.5, 0.4]}, "pick": [{"image_id": "d"}]}}
    assert vs.picked_ids(event, layout) == ["a", "b", "d"]      # the brush kept, the shift-clicked image added


def test_patterns_and_generators_name_their_columns_in_words():
    ranked = pd.DataFrame([{c: 1 for c in vp.RANK_COLUMNS}])
    shown = vp.ranking_display(ranked)
    assert not {"excess_se", "n_flipped_random", "n_images", "mean_area"} & set(shown.columns)
    assert set(vp.SIGNED_TITLES) <= set(shown.columns)
    cm = pd.DataFrame([[8, 2], [0, 6]], index=["a", "b"], columns=["a", "b"])
    table = vgen.per_generator_display(vgen.per_generator_table(cm)).set_index("generator")
    assert table.loc["a", "most often taken for"] == "b"
    assert table.loc["b", "most often taken for"] == vgen.NEVER_CONFUSED
    assert "most_confused_with" not in table.columns and not table.isna().any().any()
    assert np.all(table["images"].to_numpy() == [10, 6])


@pytest.mark.slow
def test_the_folder_route_uses_the_model_the_zip_route_uses_and_names_it_when_it_cannot(bundle, tmp_path):
    """"Analyse an image folder" starts at the open bundle's model, as "Bring your own images" does: offline
    both analyse with the same model; a model that cannot load is said once, with the zip route named, and the
    button waits."""
    at = app_on(bundle, "overview")
    box = at.sidebar.text_input(key=K.W_AN_MODEL)
    assert box.value == bundle.encoder_info.model_id
    said = [w.value for w in at.sidebar.warning if "Bring your own images" in w.value or "model" in w.value.lower()]
    assert not said and not at.sidebar.button(key=K.W_AN_BTN).disabled
    box.set_value(str(tmp_path / "no-clip-here")).run()
    no_exception(at)
    fixes = [c.value for c in at.sidebar.caption if "Bring your own images" in c.value]
    assert len(fixes) == 1 and at.sidebar.button(key=K.W_AN_BTN).disabled


def test_an_upload_far_from_every_bundle_image_is_said_to_be_so():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 16))
    limit = vsi.nearest_distance_limit(z)
    d = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert limit == pytest.approx(np.quantile(d.min(axis=1), vsi.FAR_QUANTILE))          # all 400 measured
    assert vsi.nearest_distance_limit(z, sample=100) == pytest.approx(limit, rel=0.25)     # a sample is close
    assert vsi.far_notice(limit * 0.5, limit) is None and vsi.far_notice(limit * 3, limit).startswith("This image")
    assert vsi.far_notice(1.0, vsi.nearest_distance_limit(z[:1])) is None                   # one image: no limit


def test_the_single_image_page_warns_before_the_verdict(bundle, monkeypatch):
    """A bundle image uploaded again is no stranger; with a limit below its distance the page says it is far,
    before the verdict."""
    from asap_core.inputs.imageio import read_bytes

    row = bundle.images[bundle.images["label"] == "fake"].iloc[0]
    at = app_on(bundle, "single_image")
    at.file_uploader(key=K.W_UPLOAD).set_value(("upload.jpg", read_bytes(row["path"]), "image/jpeg")).run()
    no_exception(at)
    assert not [w for w in at.warning if w.value.startswith("This image is unlike")]
    monkeypatch.setattr("app_pages.glue.data.nearest_distance_limit", lambda path, stamp: -1.0)
    at.slider(key=K.W_SINGLE_K).set_value(3).run()
    no_exception(at)
    order = [type(e).__name__ + ":" + str(getattr(e, "value", ""))[:20] for e in flat(at.main)]
    far = next(i for i, o in enumerate(order) if o.startswith("Warning:This image is unlike"))
    verdict = next(i for i, o in enumerate(order) if o.startswith("Markdown:**upload"))
    assert far < verdict


@pytest.mark.browser
def test_at_1280x800_the_cells_way_on_is_in_view_and_nothing_is_cut(bundle, tmp_path):
    """A browser at 1280x800 opens the Overview on a selected cell: "Open image grid" lies inside the window,
    and no button label or metric value is cut ("Open …", "8…")."""
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, dismiss_guide, serve_bundle

    if not Path(CHROMIUM).exists():
        pytest.skip("needs /usr/bin/chromium")
    cell = int(bundle.cells.sort_values("n", ascending=False)["cell"].iloc[0])
    cut_js = "e => e.scrollWidth > e.clientWidth + 1"
    with serve_bundle(bundle.path, tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(60000)
            page.goto(f"{url}/?cell={cell}")
            dismiss_guide(page)
            page.get_by_text("Selected cell").wait_for()
            button = page.locator(".st-key-ov_open button")
            box = button.bounding_box()
            assert box["y"] + box["height"] <= 800 and page.evaluate("() => window.scrollY") == 0
            for el in [*page.locator(".st-key-ov_open p, .st-key-ov_clear p").all(),
                       *page.locator("[data-testid='stMetricValue'] div").all()]:
                assert not el.evaluate(cut_js), el.inner_text()
        finally:
            browser.close()


@pytest.mark.browser
def test_in_a_browser_a_shift_click_adds_to_the_brushed_images(bundle, tmp_path):
    """Brush some thumbnails, then shift-click another: it is added (the help says so), the brush stays."""
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    from tests.browser_helpers import (
        CHROMIUM,
        CHROMIUM_ARGS,
        GRID_IMAGES,
        PICKED_TEXT,
        brush_path,
        dismiss_guide,
        serve_bundle,
    )

    if not Path(CHROMIUM).exists():
        pytest.skip("needs /usr/bin/chromium")
    cell = int(bundle.cells.sort_values("n", ascending=False)["cell"].iloc[0])
    n = int(bundle.cells.set_index("cell").loc[cell, "n"])
    with serve_bundle(bundle.path, tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60000)
            page.goto(f"{url}/images?cell={cell}")
            dismiss_guide(page)
            images = page.locator(GRID_IMAGES)
            images.nth(n - 1).wait_for(state="attached")
            boxes = sorted((images.nth(i).bounding_box() for i in range(n)), key=lambda b: (round(b["y"]), b["x"]))
            start, end = brush_path(boxes[0], boxes[1])               # the first two of the top row
            page.mouse.move(*start)
            page.mouse.down()
            page.mouse.move(*end, steps=8)
            page.mouse.up()
            picked = page.get_by_text(PICKED_TEXT)
            picked.wait_for()
            brushed = int(picked.inner_text().split()[0])
            last = boxes[-1]                                          # the last image: outside the brush
            page.keyboard.down("Shift")
            page.mouse.click(last["x"] + last["width"] / 2, last["y"] + last["height"] / 2)
            page.keyboard.up("Shift")
            page.get_by_text(f"{brushed + 1} images picked").wait_for()
        finally:
            browser.close()
