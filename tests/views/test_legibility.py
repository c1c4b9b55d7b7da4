"""An overview a new user can read. The default grid follows the number of images (the median
non-empty cell holds at least 8 images on real layouts of 150, 1,600 and 50,000 points), the map fills its
container, the words agree with the charts (hatched = wrong, "lowers / raises p_fake by"), images are
named by file, the same picks are not saved twice, and, in Chromium at 1280 x 800, every filter button's
text is fully visible and the pies are big enough to read."""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from app_pages.glue import keys as K
from asap_core.analyses.patterns import Pattern, PatternStore, pattern_from_selection
from asap_core.errors import InputError
from asap_core.method.layout import default_grid, embed_2d, median_cell_size, regrid
from asap_core.pipeline.analyze import AnalyzeOptions
from asap_core.pipeline.stages import layout_stage
from asap_core.storage import schema as S
from asap_core.storage.bundle import Bundle
from asap_core.views import overview as ov
from asap_core.views import patterns as vp
from asap_core.views.glossary import GLOSSARY
from asap_core.views.grid import image_names
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)

WIDTH, HEIGHT = 1280, 800
MIN_MEDIAN = 8  # the bar: the median non-empty cell holds at least 8 images (pies of 1-4 do not read)


def embeddings(n: int, kind: str, seed: int = 0, d: int = S.N_DIMS) -> np.ndarray:
    """Synthetic distiller outputs z [n, 16]: "two" = real and fake shifted apart along 3 dimensions (maps
    fill ~45 % of a 24 x 24 grid, as a real folder of 450 photos did), "clusters" = 12 separated groups of
    uneven size (t-SNE makes tight islands and leaves most cells empty)."""
    rng = np.random.default_rng(seed)
    if kind == "two":
        z = rng.normal(size=(n, d))
        z[:, :3] += 1.5 * rng.integers(0, 2, n)[:, None]
        return z
    centres = rng.normal(0, 3, (12, d))
    return centres[rng.choice(12, n, p=rng.dirichlet(np.full(12, 2.0)))] + rng.normal(size=(n, d))


# ------------------------------------------------------------------------------------------ grid rule
@pytest.mark.parametrize("n", [150, pytest.param(1600, marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", ["two", "clusters"])
def test_default_grid_gives_pies_of_8_or_more_images_on_a_real_layout(n, kind):
    xy = embed_2d(embeddings(n, kind))  # the layout analyze runs: t-SNE of every row
    g = default_grid(n, xy)
    assert S.GRID_MIN <= g <= S.GRID_MAX
    # pies of 8 or more, unless even the coarsest grid cannot give them (150 images on two t-SNE blobs: the
    # smallest grid's median depends on the t-SNE version's layout), where the coarsest grid is the answer
    assert median_cell_size(xy, g) >= MIN_MEDIAN or (g == S.GRID_MIN and n < 16 * MIN_MEDIAN * 2)
    if kind == "two":  # the old fixed 24 on a map like that folder's: a sea of tiny pies
        assert median_cell_size(xy, S.DEFAULT_GRID) < MIN_MEDIAN


@pytest.mark.slow
def test_default_grid_on_50000_images_uses_the_sampled_layout():
    """50,000 points go through embed_2d's large-N path (t-SNE of a sample, every other point placed at the
    mean of its 10 nearest sample points). The default sample is 20,000 rows (minutes of t-SNE); here
    2,000, which keeps the test near 10 s and the same code path."""
    n = 50_000
    xy, fitted = embed_2d(embeddings(n, "two"), max_fit=2000, return_fitted=True)
    assert fitted.sum() == 2000
    g = default_grid(n, xy)
    assert g == S.GRID_MAX and median_cell_size(xy, g) >= MIN_MEDIAN


def test_default_grid_bounds_and_estimate_without_a_map():
    rng = np.random.default_rng(0)
    assert default_grid(0) == S.GRID_MIN and default_grid(10**7) == S.GRID_MAX
    assert default_grid(20, rng.random((20, 2))) == S.GRID_MIN  # too few images for any grid: the smallest
    guesses = [default_grid(n) for n in (100, 450, 1600, 5000, 50_000)]
    assert guesses == sorted(guesses) and guesses[0] < guesses[-1]
    even = rng.random((4000, 2))  # an evenly filled square: ~4000 / g² per cell
    g = default_grid(4000, even)
    assert median_cell_size(even, g) >= S.GRID_MEDIAN_IMAGES > median_cell_size(even, g + 1)


@pytest.mark.slow
def test_layout_stage_picks_the_grid_when_the_options_name_none(tmp_path):
    n = 300
    z = embeddings(n, "two")
    p_fake = np.linspace(0.01, 0.99, n)
    images = pd.DataFrame({"image_id": [f"{i:040x}" for i in range(n)],
                           "label": np.where(np.arange(n) % 2 == 0, "real", "fake")})
    ctx = SimpleNamespace(options=dataclasses.replace(AnalyzeOptions(), grid=None), cache=tmp_path)
    out, cells = layout_stage(ctx, images, z, p_fake)
    g = ctx.options.grid  # recorded in the options (bundle.json), so the app's slider starts there
    assert g == default_grid(n, out[["map_x", "map_y"]].to_numpy())
    assert cells["n"].median() >= MIN_MEDIAN and out["cell"].max() < g * g
    ctx = SimpleNamespace(options=AnalyzeOptions(grid=12), cache=tmp_path)  # a grid asked for is kept
    assert layout_stage(ctx, images, z, p_fake)[0]["cell"].max() < 144 and ctx.options.grid == 12


# ------------------------------------------------------------------------------------------ chart and words
def test_overview_chart_fills_its_container_and_sizes_pies_from_it():
    cells = pd.DataFrame({"cell": [0, 5, 10], "x": [0.125, 0.375, 0.625], "y": [0.875, 0.625, 0.375],
                          "n": [3, 10, 20], "n_real_ok": [1, 5, 10], "n_real_wrong": [1, 0, 2],
                          "n_fake_ok": [1, 5, 6], "n_fake_wrong": [0, 0, 2], "n_unlabelled": [0, 0, 0],
                          "mean_conf": [0.5, 0.9, 0.2], "accuracy": [0.7, 1.0, 0.8],
                          "dominant_generator": [None, "gan", "gan"], "share_fake": [0.3, 0.5, 0.4]})
    spec = ov.overview_chart(ov.pie_slices(cells), 4).to_dict()
    assert spec["width"] == "container" and 0 < spec["height"] <= ov.MAP_HEIGHT
    params = {p["name"]: p for p in spec["params"]}
    assert "width" in params["cell_unit"]["expr"] and "height" in params["cell_unit"]["expr"]
    rng = spec["encoding"]["radius"]["scale"]["range"]
    assert "cell_unit" in rng[1]["expr"]  # the largest pie: half a cell of the drawn map
    assert "cell_unit" in spec["encoding"]["x"]["scale"]["domain"]["expr"]


def test_caption_and_legend_say_what_the_chart_draws():
    caption = ov.overview_caption()
    assert "hatched = predicted wrong" in caption and "pale" not in caption
    legend = ov.legend_svg()
    assert "<pattern" in legend and legend.count('fill="url(#h') == 2  # the two "wrong" swatches are hatched
    spec = ov.overview_chart(ov.pie_slices(pd.DataFrame({
        "cell": [0], "x": [0.5], "y": [0.5], "n": [4], "n_real_ok": [1], "n_real_wrong": [1], "n_fake_ok": [1],
        "n_fake_wrong": [1], "n_unlabelled": [0], "mean_conf": [0.5], "accuracy": [0.5],
        "dominant_generator": [None], "share_fake": [0.5]})), 1).to_dict()
    hatched = {c["test"].split("'")[1] for c in spec["encoding"]["fill"]["condition"]}
    assert hatched == {"real, wrong", "fake, wrong"}


def test_boundary_text_is_whole():
    row = SimpleNamespace(cell=7, n=12, share_fake=0.5, accuracy=0.75, mean_conf=0.0912)
    assert ov.boundary_text(row) == "12 images · 50% fake · accuracy 75% · confidence 0.09"
    row = SimpleNamespace(cell=7, n=3, share_fake=float("nan"), accuracy=float("nan"), mean_conf=0.5)
    assert "n/a" in ov.boundary_text(row)


def test_impact_is_worded_by_its_sign():
    assert vp.change_words(0.243) == "lowers p_fake by 0.243"
    assert vp.change_words(-0.012) == "raises p_fake by 0.012"
    assert vp.change_words(0.0001) == "leaves p_fake unchanged"
    line = vp.impact_line({"impact": -0.243, "random_impact": 0.01, "excess": -0.253, "excess_se": 0.02,
                           "n_flipped": 1, "n_images": 5, "n_flipped_random": 0.3})
    assert line.startswith("Masking the regions raises p_fake by 0.243") and "-0.243" not in line
    assert "lowers p_fake by 0.010" in line


def test_images_are_named_by_file_name():
    images = pd.DataFrame({"image_id": ["a" * 40, "b" * 40, "c" * 40],
                           "relpath": ["real/ffhq/001.png", "fake/gan/001.png", "fake/gan/002.png"],
                           "path": ["/srv/x/real/ffhq/001.png", "/srv/x/fake/gan/001.png", "/srv/x/fake/gan/002.png"]})
    assert image_names(images, ["c" * 40]) == ["002.png"]
    assert image_names(images, ["a" * 40, "b" * 40, "d" * 40]) == ["real/ffhq/001.png", "fake/gan/001.png",
                                                                   "d" * 10]
    no_rel = images.drop(columns="relpath")  # absolute paths: never their folders
    assert image_names(no_rel, ["a" * 40, "b" * 40]) == ["001.png · aaaaaa", "001.png · bbbbbb"]


def test_glossary_explains_the_terms_the_pages_use():
    for term in ("p_fake", "dimension", "relevance map", "concept", "pattern"):
        assert 20 < len(GLOSSARY[term]) < 300, term


# ------------------------------------------------------------------------------------------ patterns
def test_saving_the_same_picks_twice_is_refused_naming_the_pattern(tiny_bundle, tmp_path):  # noqa: F811
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    b = Bundle.open(copy)
    store = PatternStore(b)
    ids = b.images["image_id"].tolist()
    store.add(pattern_from_selection("cell 3 selection", ids[:4]))
    with pytest.raises(InputError) as err:
        store.add(pattern_from_selection("cell 3 selection 2", list(reversed(ids[:4])), note="again"))
    assert "cell 3 selection" in err.value.message and "cell 3 selection" in err.value.hint
    assert store.names() == ["cell 3 selection"]
    store.add(pattern_from_selection("other picks", ids[:3]))  # other images: saved
    store.add(pattern_from_selection("other regions", ids[:4], fraction=0.5))  # other regions: saved
    side = b.encoder_info.patch_side
    masks = {i: np.eye(side, dtype=bool) for i in ids[:2]}
    store.add(Pattern("masked", ids[:2], source="concept", masks=masks))
    with pytest.raises(InputError, match="'masked'"):
        store.add(Pattern("masked again", ids[:2], source="concept", masks=dict(masks)))
    store.add(pattern_from_selection("cell 3 selection", ids[:4], note="same name, same picks"), overwrite=True)
    assert store.get("cell 3 selection").note == "same name, same picks"


# ------------------------------------------------------------------------------------------ app
def test_sidebar_counts_the_cells_of_the_grid_on_screen(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    from streamlit.testing.v1 import AppTest

    from asap_core.settings import reload_settings

    monkeypatch.delenv("ASAP_BUNDLE", raising=False)
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    reload_settings()
    b = Bundle.open(tiny_bundle)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "streamlit_app.py"), default_timeout=60)
    at.session_state[K.K_BUNDLE] = str(tiny_bundle)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(f"{len(b.cells)} cells ({b.grid}×{b.grid} grid)" in c.value for c in at.sidebar.caption)
    other = 6 if b.grid != 6 else 8
    at.select_slider(key=K.W_GRID).set_value(other).run()
    assert not at.exception, [e.value for e in at.exception]
    n = len(regrid(b.images, other)[1])
    assert any(f"{n} cells ({other}×{other} grid)" in c.value for c in at.sidebar.caption)
    assert at.session_state[K.K_GRID] == other


# ------------------------------------------------------------------------------------------ browser
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

# every option button of the segmented controls: its text, whether its text overflows, its box, and whether
# the control around it scrolls (a control too wide for its place scrolls and hides options)
BUTTONS_JS = """() => [...document.querySelectorAll("[data-testid='stMain'] [data-testid='stButtonGroup']")]
  .flatMap(g => [...g.querySelectorAll('button')].filter(b => b.innerText.trim()).map(b => {
     const r = b.getBoundingClientRect();
     return {text: b.innerText.trim(), overflow: b.scrollWidth - b.clientWidth,
             groupOverflow: g.scrollWidth - g.clientWidth, left: r.left, right: r.right, width: r.width}; }))"""
# [diameter px] of each pie (the bounding box of its slices)
PIES_JS = """() => { const by = {};
  document.querySelectorAll(".vega-embed path[aria-label*='cell: ']").forEach(p => {
    const c = (p.getAttribute('aria-label').match(/cell: (\\d+)/) || [])[1]; const r = p.getBoundingClientRect();
    const b = by[c] || (by[c] = [1e9, 1e9, -1e9, -1e9]);
    by[c] = [Math.min(b[0], r.left), Math.min(b[1], r.top), Math.max(b[2], r.right), Math.max(b[3], r.bottom)]; });
  return Object.values(by).map(b => Math.max(b[2] - b[0], b[3] - b[1])); }"""


@pytest.mark.browser
@pytest.mark.skipif(sync_playwright is None, reason="needs playwright (run .ci/browser-setup)")
def test_overview_at_1280_shows_whole_filter_buttons_and_readable_pies(tiny_bundle, tmp_path):  # noqa: F811
    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, screenshot_dir, serve_bundle

    if not Path(CHROMIUM).exists():
        pytest.skip("needs /usr/bin/chromium (run .ci/browser-setup)")
    b = Bundle.open(tiny_bundle)
    grid = default_grid(len(b.images), b.images[["map_x", "map_y"]].to_numpy())
    n_cells = len(regrid(b.images, grid)[1])
    with serve_bundle(tiny_bundle, tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.set_default_timeout(30000)
            page.goto(f"{url}/?grid={grid}")
            page.get_by_text("Representation overview").wait_for()
            _dismiss_dialogs(page)
            page.wait_for_function(f"() => document.querySelectorAll(\".vega-embed path[aria-label*='cell: ']\")"
                                   f".length >= {n_cells}")
            time.sleep(1.0)  # let the chart settle at its container's width
            buttons = page.evaluate(BUTTONS_JS)
            pies = page.evaluate(PIES_JS)
            page.screenshot(path=str(screenshot_dir(tmp_path) / "overview_1280.png"))
        finally:
            browser.close()
    texts = {x["text"] for x in buttons}
    assert {"all", "real", "fake", "unlabelled", "correct", "wrong"} <= texts
    for x in buttons:
        assert x["overflow"] <= 0 and x["groupOverflow"] <= 0, x  # no text cut, no control scrolled
        assert x["left"] >= 0 and x["right"] <= WIDTH and x["width"] >= 30, x
    assert len(pies) == n_cells
    assert np.median(pies) >= 24 and max(pies) >= 40, sorted(pies)  # pies, not dots


def _dismiss_dialogs(page) -> None:
    """Close the first-visit reading guide (it opens once per session and covers the page)."""
    from tests.browser_helpers import dismiss_guide

    dismiss_guide(page)
