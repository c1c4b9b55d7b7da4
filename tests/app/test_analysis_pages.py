"""AppTest tests of the analysis pages (patterns, generators, robustness, single image) and their entry points
(save as pattern on the Images page, colour by predicted generator on the Overview), on a copy of the tiny
bundle; the forensynths test checks the 10 x 10 confusion matrix of the real data set with the tiny CLIP."""
from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_pages.glue import keys as K
from asap_core.analyses import attribution as attr
from asap_core.analyses.laundering import laundering_table
from asap_core.analyses.patterns import Pattern, PatternStore, pattern_from_selection, pattern_impact
from asap_core.inputs.imageio import read_bytes
from asap_core.settings import reload_settings
from asap_core.storage.bundle import Bundle
from asap_core.views import generators as vgen
from asap_core.views import patterns as vp
from asap_core.views import robustness as vr
from tests.conftest import SHARED_DATA
from tests.conftest_app import chart_data, local_app_env, no_exception, plain, private_copy, tiny_bundle  # noqa: F401  (fixture)

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
TIMEOUT = 60
FORENSYNTHS = SHARED_DATA / "forensynths_ranking"


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Bundle:  # noqa: F811
    """A private copy of the tiny bundle (patterns and caches written here stay out of the shared one)."""
    return private_copy(tiny_bundle, tmp_path_factory.mktemp("analysis_pages") / "bundle")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    local_app_env(monkeypatch, tmp_path / "cache")


def app_on(bundle_path, page: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state[K.K_BUNDLE] = str(bundle_path)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(f"app_pages/{page}.py").run()
    no_exception(at)
    return at


def frame(at: AppTest, *columns: str) -> pd.DataFrame | None:
    """The one table on the page that has all ``columns`` (st.dataframe elements carry no key here)."""
    found = [d.value for d in at.dataframe if set(columns) <= set(map(str, d.value.columns))]
    assert len(found) <= 1, [list(f.columns) for f in found]
    return found[0] if found else None


def images_shown(at: AppTest) -> list:
    return [i for el in at.get("image") for i in el.proto.imgs]


# ------------------------------------------------------------------------------------------ patterns
@pytest.mark.slow
def test_patterns_page_lists_ranks_and_exports(bundle):
    at = app_on(bundle.path, "patterns")
    assert any("No pattern saved yet" in i.value for i in at.info)

    fakes = bundle.images.loc[bundle.images["label"] == "fake", "image_id"].tolist()[:6]
    store = PatternStore(bundle)
    store.add(pattern_from_selection("top relevance", fakes, note="selection"))
    corner = np.zeros((4, 4), bool)
    corner[:2, :2] = True                                    # the fakes' bright square (make_image)
    store.add(Pattern("bright corner", fakes, source="concept", note="planted", masks={i: corner for i in fakes}))
    at.run()
    no_exception(at)
    assert sorted(frame(at, "name", "regions")["name"]) == ["bright corner", "top relevance"]
    assert frame(at, "rank", vp.RANK_TITLES["excess"]) is None     # no impact before the button
    at.button(key=K.PAT_IMPACT).click().run()
    no_exception(at)
    ranked = frame(at, "rank", vp.RANK_TITLES["excess"])
    assert not {"excess_se", "n_flipped_random"} & set(ranked.columns)   # titled in words, not column names
    ranked = ranked.rename(columns={v: k for k, v in vp.RANK_TITLES.items()})
    assert sorted(ranked["name"]) == ["bright corner", "top relevance"] and list(ranked["rank"]) == [1, 2]
    for name in ranked["name"]:                              # the page shows the library's (cached) numbers
        res = pattern_impact(bundle, store.get(name), None, vp.N_RANDOM, vp.SEED)
        row = ranked.set_index("name").loc[name]
        assert row["impact"] == pytest.approx(res["impact"]) and row["n_flipped"] == res["n_flipped"]
        assert row["excess"] == pytest.approx(res["impact"] - res["random_impact"])
    assert ranked["excess"].is_monotonic_decreasing
    assert any(m.value.startswith("Masking the regions") for m in at.markdown)
    assert not [b for b in at.button if b.key == K.PAT_IMPACT]   # all impacts cached: no button
    assert len(images_shown(at)) == 1                        # the chosen pattern's contact sheet

    at.button(key=K.PAT_EXPORT).click().run()
    no_exception(at)
    path, data = at.session_state[K.K_PAT_ZIP]
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert path == str(bundle.path)
    assert {"patterns/patterns.json", "patterns/patterns.csv", "patterns/pattern_images.csv"} <= set(names)
    assert sum(n.endswith(".png") for n in names) == 2


@pytest.mark.slow
def test_images_page_saves_the_picked_images_as_a_pattern(bundle):
    cell = int(bundle.cells.sort_values("n", ascending=False)["cell"].iloc[0])
    ids = bundle.images.loc[bundle.images["cell"] == cell, "image_id"].tolist()[:3]
    at = app_on(bundle.path, "images", sel_cells=[cell], sel_images=ids)
    at.text_input(key=K.form_key(K.PAT_SEL, "name")).set_value("my picks")
    at.text_input(key=K.form_key(K.PAT_SEL, "note")).set_value("three images")
    at.button(key=K.form_key(K.PAT_SEL, "save")).click().run()
    no_exception(at)
    saved = PatternStore(bundle).get("my picks")
    assert saved.image_ids == ids and saved.note == "three images" and saved.source == "selection"
    assert any("Saved pattern 'my picks'" in s.value for s in at.success)
    at.text_input(key=K.form_key(K.PAT_SEL, "name")).set_value("my picks")  # taken: message + fix, no traceback
    at.button(key=K.form_key(K.PAT_SEL, "save")).click().run()
    no_exception(at)
    assert any("already exists" in e.value for e in at.error)
    assert any(c.value.startswith("Fix:") for c in at.caption)


def test_images_page_saves_a_concept_as_a_pattern(bundle):
    cell = int(bundle.cells.sort_values("n", ascending=False)["cell"].iloc[0])
    at = app_on(bundle.path, "images", sel_cells=[cell])
    at.toggle(key=K.W_CONCEPTS).set_value(True).run()
    no_exception(at)
    at.selectbox(key=K.form_key(K.PAT_CON, "choice")).set_value(1)
    at.text_input(key=K.form_key(K.PAT_CON, "name")).set_value("second concept")
    at.button(key=K.form_key(K.PAT_CON, "save")).click().run()
    no_exception(at)
    saved = PatternStore(bundle).get("second concept")
    assert saved.source == "concept" and saved.masks is not None
    assert set(saved.image_ids) <= set(bundle.images.loc[bundle.images["cell"] == cell, "image_id"])
    assert all(m.shape == (4, 4) and m.any() for m in saved.masks.values())


# ------------------------------------------------------------------------------------------ generators
def test_generator_views_count_and_cover_every_cell():
    cm = pd.DataFrame([[8, 2, 0], [1, 6, 3], [0, 0, 0]], index=["a", "b", "c"], columns=["a", "b", "c"])
    t = vgen.per_generator_table(cm).set_index("generator")
    assert t.loc["a", "recall"] == pytest.approx(0.8) and t.loc["b", "precision"] == pytest.approx(6 / 8)
    assert t.loc["b", "most_confused_with"] == "c" and np.isnan(t.loc["c", "recall"])
    long = vgen.confusion_long(cm)
    assert len(long) == 9 and long.groupby("truth")["count"].sum().to_dict() == {"a": 10, "b": 10, "c": 0}

    rng = np.random.default_rng(0)
    n = 40
    images = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "cell": rng.integers(0, 5, n),
                           "label": rng.choice(["real", "fake"], n), "generator": None, "p_fake": rng.random(n)})
    images["pred"] = np.where(images["p_fake"] >= 0.5, "fake", "real")
    images["correct"] = images["pred"] == images["label"]
    images["x"], images["y"] = images["cell"] * 0.1, images["cell"] * 0.2
    images["map_x"], images["map_y"] = images["x"], images["y"]
    images["col"], images["row"] = images["cell"], 0
    att = pd.Series(np.where(images["pred"] == "fake", rng.choice(["g1", "g2"], n), "real"), index=images["image_id"])
    counts = vgen.attribution_cells(images, att, 5, vgen.ov.Filters())
    assert counts["count"].sum() == n
    from asap_core.method.layout import cell_table

    slices = vgen.generator_slices(cell_table(images, 5), counts, ["g1", "g2"])
    per_cell = slices.groupby("cell_id")
    assert (per_cell["theta"].min() == 0).all()
    np.testing.assert_allclose(per_cell["theta2"].max(), 2 * np.pi)
    assert slices.groupby("category")["count"].sum().to_dict() == att.value_counts().to_dict()


@pytest.mark.slow
def test_generators_page_and_overview_colour(bundle):
    names = attr.generator_names(bundle)
    assert names == ["gen_a", "gen_b"]
    at = app_on(bundle.path, "generators")
    cm = frame(at, *names)
    assert list(cm.index) == names and list(cm.columns) == names
    assert cm.to_numpy().sum() == int((bundle.images["label"] == "fake").sum())
    pd.testing.assert_frame_equal(cm, attr.confusion_matrix(bundle), check_names=False, check_dtype=False)
    at.button_group(key=K.W_GEN_SCOPE).set_value("held out").run()
    no_exception(at)
    held = frame(at, *names)
    assert 0 < held.to_numpy().sum() < cm.to_numpy().sum()
    at.toggle(key=K.W_GEN_REAL).set_value(True).run()
    assert frame(at, *names).shape == (3, 3)

    at.button(key=K.GEN_TO_OVERVIEW).click().run()           # -> overview coloured by predicted generator
    no_exception(at)
    assert at.session_state[K.W_COLOR] == "predicted generator"
    (chart,) = at.get("vega_lite_chart")
    data = chart_data(chart)
    pred = attr.generator_predictions(bundle)
    assert set(data["category"]) <= {"real", *names}
    got = data.groupby("category")["count"].sum().to_dict()
    assert got == pred["attribution"].value_counts().to_dict()
    at.switch_page("app_pages/overview.py")                     # AppTest stays on its own page otherwise
    at.button_group(key=K.W_COLOR).set_value("label").run()
    assert set(chart_data(at.get("vega_lite_chart")[0])["category"]) <= {"real, correct", "real, wrong",
                                                                          "fake, correct", "fake, wrong"}


# ------------------------------------------------------------------------------------------ robustness
@pytest.mark.slow
def test_robustness_page_one_row_per_image_and_setting(bundle):
    ids = bundle.images["image_id"].tolist()[:3]
    at = app_on(bundle.path, "robustness", sel_images=ids)
    assert any("press" in i.value for i in at.info)
    at.slider(key=K.W_ROB_Q).set_value(50)
    at.slider(key=K.W_ROB_S).set_value(0.5)
    at.button(key=K.ROB_RUN).click().run()
    no_exception(at)
    table = frame(at, "image_id", "setting", "delta")
    assert len(table) == 3 * 3 and set(table["setting"]) == {"JPEG q50 · resize 0.50", "JPEG q50 · no resize",
                                                             "no JPEG · resize 0.50"}
    np.testing.assert_allclose(table["delta"], table["p_fake"] - table["p_fake_original"], atol=1e-6)
    lib = laundering_table(bundle, ids, qualities=[50], scales=[0.5])
    got = table[table["setting"] == "JPEG q50 · resize 0.50"].set_index("image_id")["p_fake"]
    np.testing.assert_allclose(got.loc[[i[:10] for i in lib["image_id"]]], lib["p_fake"], atol=1e-6)
    assert len(frame(at, "setting", "n_flipped")) == 3
    caps = [i.caption for i in images_shown(at)]
    assert len(caps) == 4 and plain(caps[1]).startswith("laundered · p_fake")

    at.toggle(key=K.W_ROB_EACH).set_value(False).run()       # new settings: run again
    assert any("press" in i.value for i in at.info)
    at.button(key=K.ROB_RUN).click().run()
    assert len(frame(at, "image_id", "setting", "delta")) == 3


def test_robustness_picks_a_balanced_sample_without_a_selection(bundle):
    ids, source = vr.choose_images(bundle.images, [], [], 8)
    labels = bundle.images.set_index("image_id").loc[ids, "label"]
    assert len(ids) == 8 and (labels == "fake").sum() == 4 and "random sample" in source
    cell_ids, src = vr.choose_images(bundle.images, [], [int(bundle.cells["cell"].iloc[0])], 8)
    assert set(cell_ids) == set(bundle.images.loc[bundle.images["cell"] == bundle.cells["cell"].iloc[0], "image_id"])
    assert "selected cell" in src


# ------------------------------------------------------------------------------------------ single image
def test_single_image_upload_gives_p_fake_and_k_neighbours(bundle):
    at = app_on(bundle.path, "single_image")
    assert any("No image uploaded" in i.value for i in at.info)
    row = bundle.images[bundle.images["label"] == "fake"].iloc[0]
    at.slider(key=K.W_SINGLE_K).set_value(5)
    at.file_uploader(key=K.W_UPLOAD).set_value(("upload.jpg", read_bytes(row["path"]), "image/jpeg")).run()
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["p_fake"]) == pytest.approx(float(row["p_fake"]), abs=2e-3)   # the same file's p_fake
    nb = frame(at, "rank", "distance")
    assert len(nb) == 5 and nb["image_id"].iloc[0] == row["image_id"][:10] and nb["distance"].iloc[0] < 1e-3
    caps = [i.caption for i in images_shown(at)]
    assert sum(plain(c).startswith("#") for c in caps) == 5                               # the k neighbours' thumbnails
    assert sum(c.startswith("fake logit") for c in caps) == 1 and sum(c.startswith("dim ") for c in caps) == 16
    assert any("same file is in the bundle" in m.value for m in at.markdown)

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "PNG")
    at.file_uploader(key=K.W_UPLOAD).set_value(("broken.png", buf.getvalue()[:20], "image/png")).run()
    no_exception(at)                                          # not an image: message + fix, no traceback
    assert any("broken.png" in plain(e.value) for e in at.error) and not at.metric


def test_hosted_single_image_upload_charges_the_relevance_budget(bundle, tmp_path, monkeypatch):
    root = tmp_path / "bundles"
    shutil.copytree(bundle.path, root / "tiny", ignore=shutil.ignore_patterns("cache"))
    monkeypatch.setenv("ASAP_HOSTED", "1")
    monkeypatch.setenv("ASAP_BUNDLE_ROOT", str(root))
    monkeypatch.setenv("ASAP_RELEVANCE_BUDGET", "1")
    reload_settings()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": "tiny"})
    at.run()
    at.switch_page("app_pages/single_image.py").run()
    paths = bundle.images["path"].tolist()
    at.file_uploader(key=K.W_UPLOAD).set_value(("a.jpg", read_bytes(paths[0]), "image/jpeg")).run()
    no_exception(at)
    assert not at.error and at.metric
    at.run()                                                  # the same upload again: no second charge
    assert not at.error and at.metric
    at.file_uploader(key=K.W_UPLOAD).set_value(("b.jpg", read_bytes(paths[1]), "image/jpeg")).run()
    no_exception(at)
    assert any("used 1 of the 1" in e.value for e in at.error) and not at.metric


# ------------------------------------------------------------------------------------------ forensynths
@pytest.mark.skipif(not FORENSYNTHS.is_dir(), reason="shared data absent")
@pytest.mark.slow
def test_forensynths_confusion_matrix_on_the_generators_page(tiny_clip_dir, tmp_path):
    """Tiny random CLIP: mechanics, not meaning. The 10 x 10 matrix is produced and shown."""
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze

    analyze(FORENSYNTHS, tmp_path / "b", AnalyzeOptions(model=str(tiny_clip_dir), cache_dir=str(tmp_path / "cache"),
                                                        num_workers=0, projection_samples=16))
    b = Bundle.open(tmp_path / "b")
    gens = sorted(p.name for p in (FORENSYNTHS / "fake").iterdir() if p.is_dir())
    at = app_on(b.path, "generators")
    cm = frame(at, *gens)
    assert cm.shape == (10, 10) and list(cm.index) == gens and list(cm.columns) == gens
    assert cm.to_numpy().sum() == int((b.images["label"] == "fake").sum())
    acc = attr.attribution_accuracy(cm)
    assert any(m.value.startswith(f"Accuracy {acc:.1%}") for m in at.markdown)
    print(f"forensynths_ranking (tiny CLIP) generators page: accuracy {acc:.3f} on {cm.to_numpy().sum()} fakes")
