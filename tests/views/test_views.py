"""Unit tests of the app's plain view functions (asap_core.views): links, events, slices, grids, maps."""
from __future__ import annotations

import base64
import io
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from asap_core.method.bundle_models import bundle_distiller
from asap_core.storage.bundle import Bundle
from asap_core.storage.schema import Z_COLUMNS
from asap_core.views import attention as va
from asap_core.views import concept as vc
from asap_core.views import dimensions as vd
from asap_core.views import grid as vg
from asap_core.views import overview as ov
from asap_core.views import state as vs
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:  # noqa: F811
    return Bundle.open(tiny_bundle)


def _frame(rows: list[tuple]) -> pd.DataFrame:
    """Images table from (label, generator, correct, cell, confidence) rows."""
    df = pd.DataFrame(rows, columns=["label", "generator", "correct", "cell", "confidence"])
    df["correct"] = df["correct"].astype("boolean")
    df["pred"] = np.where(df["correct"].fillna(True), df["label"].fillna("real"),
                          np.where(df["label"] == "fake", "real", "fake"))
    return df


# ------------------------------------------------------------------------------------------ state
def test_link_round_trip_and_malformed_parts():
    link = vs.LinkState(bundle="/b/x", grid=12, cells=[5, 9], images=["a" * 40, "b" * 40], page="images")
    q = vs.to_query(link)
    assert q == {"bundle": "/b/x", "grid": "12", "cell": "5,9", "images": "a" * 10 + "," + "b" * 10,
                 "page": "images"}
    back = vs.parse_query(q)
    assert back.cells == [5, 9] and back.images == ["a" * 10, "b" * 10] and back.page == "images"
    bad = vs.parse_query({"cell": "3,x,-1,3", "images": "zz99,ab12", "page": "admin", "grid": "0"})
    assert bad.cells == [3] and bad.images == ["ab12"] and bad.page is None and bad.grid is None
    assert vs.to_query(vs.LinkState(images=["c" * 40] * 3 + [f"{i:040x}" for i in range(100)]))["images"].count(",") \
        == vs.MAX_LINK_IMAGES - 1


def test_resolve_ids_skips_unknown_and_ambiguous_prefixes():
    ids = ["abc123", "abd999", "abd000", "ff0000"]
    assert vs.resolve_ids(["ABC", "ff", "abd", "00", "abd9"], ids) == ["abc123", "ff0000", "abd999"]


def test_cells_from_event_shapes():
    assert vs.cells_from_event({"selection": {"cell": {}}}) == []
    assert vs.cells_from_event(None) == []
    event = {"selection": {"cell": [{"cell_id": 341}, {"cell_id": 7}, {"cell_id": 341}]}}
    assert vs.cells_from_event(event) == [341, 7]


def test_brush_and_click_pick_images_in_layout_order():
    layout = pd.DataFrame({"image_id": list("abcdef"), "gx": [0, 1, 2, 0, 1, 2], "gy": [0, 0, 0, 1, 1, 1]})
    brush = {"selection": {"brush": {"gx": [0.6, 2.2], "gy": [-0.4, 0.4]}, "pick": {}}}
    assert vs.brushed_ids(brush, layout) == ["b", "c"]
    both = {"selection": {"brush": {"gx": [2.2, 0.6], "gy": [0.4, -0.4]}, "pick": [{"image_id": "d"}]}}
    assert vs.picked_ids(both, layout) == ["b", "c", "d"]
    assert vs.picked_ids({"selection": {"brush": {}, "pick": {}}}, layout) == []


def test_reconcile_keeps_replaces_and_clears():
    conv = vs.cells_from_event
    empty = {"selection": {"cell": {}}}
    click = {"selection": {"cell": [{"cell_id": 4}]}}
    sel, sig = vs.reconcile(empty, None, [9], conv)           # fresh chart: a linked selection survives
    assert sel == [9]
    sel, sig = vs.reconcile(empty, sig, sel, conv)            # unrelated rerun
    assert sel == [9]
    sel, sig = vs.reconcile(click, sig, sel, conv)            # click
    assert sel == [4]
    sel2, sig2 = vs.reconcile(click, sig, [4, 5], conv)       # same event again: state from elsewhere kept
    assert sel2 == [4, 5] and sig2 == sig
    sel, sig = vs.reconcile(empty, sig, sel, conv)            # double-click clear
    assert sel == []


# ------------------------------------------------------------------------------------------ overview
def test_filter_mask_semantics():
    df = _frame([("real", None, True, 0, .9), ("fake", "gan", False, 0, .2), ("fake", "diff", True, 1, .5),
                 (None, None, pd.NA, 1, .1)])
    assert ov.filter_mask(df, ov.Filters()).tolist() == [True, True, True, True]
    assert ov.filter_mask(df, ov.Filters(label="fake")).tolist() == [False, True, True, False]
    assert ov.filter_mask(df, ov.Filters(label="unlabelled")).tolist() == [False, False, False, True]
    assert ov.filter_mask(df, ov.Filters(generators=("gan",))).tolist() == [True, True, False, True]
    assert ov.filter_mask(df, ov.Filters(outcome="wrong")).tolist() == [False, True, False, False]
    assert ov.filter_mask(df, ov.Filters(outcome="correct", label="fake")).tolist() == [False, False, True, False]


def test_pie_slices_partition_each_cell(bundle):
    cells = bundle.cells
    s = ov.pie_slices(cells)
    assert set(s["cell_id"]) == set(cells["cell"])
    for cid, part in s.groupby("cell_id"):
        part = part.sort_values("cat_order")
        n = int(cells.loc[cells["cell"] == cid, "n"].iloc[0])
        assert part["count"].sum() == n
        assert part["theta"].iloc[0] == pytest.approx(0.0)
        assert part["theta2"].iloc[-1] == pytest.approx(2 * math.pi)
        np.testing.assert_allclose(part["theta"].to_numpy()[1:], part["theta2"].to_numpy()[:-1])
        np.testing.assert_allclose(part["theta2"] - part["theta"], 2 * math.pi * part["count"] / n)


def test_filtered_cells_count_only_passing_images(bundle):
    images = bundle.images
    f = ov.Filters(label="fake", outcome="correct")
    cells = ov.filtered_cells(images, 24, f)
    expected = int(((images["label"] == "fake") & images["correct"].astype(bool)).sum())
    assert cells["n"].sum() == expected
    assert (cells["n_real_ok"] + cells["n_real_wrong"] + cells["n_fake_wrong"]).sum() == 0


def test_overview_chart_spec(bundle):
    slices = ov.pie_slices(bundle.cells)
    picked = int(bundle.cells["cell"].iloc[0])
    spec = ov.overview_chart(slices, 24, [picked], size=500).to_dict()
    params = {p["name"]: p for p in spec["params"]}
    assert params["cell"]["value"] == [{"cell_id": picked}]
    assert params["cell"]["select"]["fields"] == ["cell_id"]
    assert max(spec["width"], spec["height"]) == 500
    rng = spec["encoding"]["radius"]["scale"]["range"]
    x_dom = spec["encoding"]["x"]["scale"]["domain"]
    cell_px = 500 / max(x_dom[1] - x_dom[0], np.ptp(spec["encoding"]["y"]["scale"]["domain"])) / 24
    assert rng[1] <= cell_px / 2  # the largest pie stays inside its cell
    data = next(iter(spec["datasets"].values()))
    assert len({d["cell_id"] for d in data}) == len(bundle.cells)


def test_with_selection_sets_what_the_chart_would_start_with(bundle):
    """The spec built once with nothing selected, given a selection by ``with_selection``, has the selection
    value ``overview_chart(..., selected)`` builds and is otherwise the same; the shared spec is left as it
    was, an empty selection has no value, and a spec without the selection is refused."""
    slices = ov.pie_slices(bundle.cells)
    picked = [int(c) for c in bundle.cells["cell"].iloc[:2]]
    base = ov.overview_chart(slices, 24, []).to_dict()
    built = ov.overview_chart(slices, 24, picked).to_dict()
    before = repr(base)
    got = ov.with_selection(base, tuple(picked))
    value = {p["name"]: p.get("value") for p in built["params"]}
    assert {p["name"]: p.get("value") for p in got["params"]} == value and value["cell"] == [
        {"cell_id": c} for c in picked]
    assert {k: v for k, v in got.items() if k != "params"} == {k: v for k, v in base.items() if k != "params"}
    assert repr(base) == before
    assert "value" not in {p["name"]: p for p in ov.with_selection(got, ())["params"]}["cell"]
    with pytest.raises(KeyError):
        ov.with_selection(base, picked, param="nope")


def test_boundary_cells_prefer_mixed_low_confidence():
    cells = pd.DataFrame({"cell": [1, 2, 3], "n": [10, 10, 10], "mean_conf": [0.1, 0.9, 0.1],
                          "share_fake": [0.5, 0.5, 1.0]})
    assert ov.boundary_cells(cells, k=3)["cell"].tolist() == [1, 3, 2]


def test_selection_facts_of_a_known_selection():
    """Cells 1 and 2 selected, fake images only: 3 members in table order; dimension 4 pushes them to fake
    (z4 = 2, w2_4 = 0.5: +1.00), cell 3 and the real image left out."""
    z = np.zeros((5, 16))
    z[:, 4] = 2.0
    images = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e"], "cell": [1, 2, 1, 3, 1],
                           "label": ["fake", "fake", "real", "fake", "fake"], "generator": "g",
                           "correct": pd.array([True] * 5, dtype="boolean"), "p_fake": 0.9,
                           **{c: z[:, k] for k, c in enumerate(Z_COLUMNS)}})
    f = ov.Filters(label="fake")
    cells = ov.filtered_cells(images.assign(x=0.0, y=0.0, confidence=0.8, pred="fake"), 4, f)
    w2 = np.zeros(16)
    w2[4] = 0.5
    facts = ov.selection_facts(images, cells, [1, 2], f, w2, names=("",) * 4 + ("smooth skin",))
    assert facts.member_ids == ("a", "b", "e")
    assert facts.summary["n"] == 3 and facts.summary["n_fake_ok"] == 3 and facts.summary["accuracy"] == 1.0
    assert facts.driver == "dim 4 · smooth skin (+1.00 towards fake)"
    assert ov.selection_facts(images, cells, [1], f, None).driver is None        # no head: no driver


def test_boundary_list_names_cells_nearest_the_boundary_first():
    cells = pd.DataFrame({"cell": [1, 2, 3], "n": [10, 10, 2], "mean_conf": [0.9, 0.1, 0.0],
                          "share_fake": [0.5, 0.5, 0.5], "accuracy": [1.0, 0.5, 0.5]})
    assert ov.boundary_list(cells) == [(2, "10 images · 50% fake · accuracy 50% · confidence 0.10"),
                                       (1, "10 images · 50% fake · accuracy 100% · confidence 0.90")]


# ------------------------------------------------------------------------------------------ grid
def test_grid_layout_places_every_image_once(bundle):
    big = bundle.cells.sort_values("n").iloc[-3:]["cell"].tolist()
    members = ov.selected_members(bundle.images, big, ov.Filters())
    assert len(members) == bundle.cells.set_index("cell").loc[big, "n"].sum()
    layout, n_rows, n_cols = vg.grid_layout(members)
    assert sorted(layout["image_id"]) == sorted(members["image_id"])
    assert len(set(zip(layout["gx"], layout["gy"]))) == len(layout)
    assert layout["gx"].between(0, n_cols - 1).all() and layout["gy"].between(0, n_rows - 1).all()
    truth = members.set_index("image_id")["correct"]
    for r in layout.itertuples():
        assert r.outcome == ("right" if truth[r.image_id] else "wrong")


def test_thumb_uri_is_a_small_jpeg(bundle):
    uri = vg.thumb_uri(bundle.thumbnails(bundle.images["image_id"].tolist()[:1])[0], size=40)
    assert uri.startswith("data:image/jpeg;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(im.size) == 40
    assert Image.open(io.BytesIO(base64.b64decode(vg.thumb_uri(None, 20).split(",", 1)[1]))).size == (20, 20)


def test_grid_chart_has_brush_and_pick(bundle):
    layout, n_rows, n_cols = vg.grid_layout(bundle.images.head(7))
    layout = vg.with_thumbs(layout, bundle.thumbnails(layout["image_id"].tolist()), 30)
    spec = vg.grid_chart(layout, n_rows, n_cols, tile=50).to_dict()
    params = {p["name"]: p for p in spec["params"]}
    assert params["brush"]["select"]["type"] == "interval"
    assert params["pick"]["select"]["fields"] == ["image_id"]
    assert spec["width"] == n_cols * 50 and spec["height"] == n_rows * 50
    assert vg.subsample(bundle.images, 10)["image_id"].is_unique and len(vg.subsample(bundle.images, 10)) == 10


# ------------------------------------------------------------------------------------------ attention
def test_contributions_add_up_to_the_logit(bundle):
    w2 = va.head_weights(bundle_distiller(bundle))
    z = bundle.images[Z_COLUMNS].to_numpy(np.float64)
    logit = va.contributions(z, w2).sum(axis=1) + float(bundle_distiller(bundle).head.bias.detach())
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), bundle.images["p_fake"], atol=1e-4)


def test_dimension_order_supports_the_prediction():
    contrib = np.array([[0.1, -0.5, 0.3, 0.0], [0.1, -0.5, 0.3, 0.0]])
    order = va.dimension_order(contrib, logit=np.array([1.0, -1.0]))
    assert order[0].tolist() == [2, 0, 3, 1]   # predicted fake: most positive first
    assert order[1].tolist() == [1, 3, 0, 2]   # predicted real: most negative first


def test_attention_rows_tiles(bundle):
    ids = bundle.images["image_id"].tolist()[:2]
    side = bundle.meta["encoder"]["patch_side"]
    maps = np.random.default_rng(0).random((2, 17, side, side)).astype(np.float16)
    w2 = va.head_weights(bundle_distiller(bundle))
    rows = va.attention_rows(bundle.images, ids, maps, w2, bundle.thumbnails(ids), size=40)
    assert [r["image_id"] for r in rows] == ids
    for r in rows:
        assert len(r["tiles"]) == 18
        assert [t.target for t in r["tiles"][2:]] == r["order"].tolist()
        assert sorted(r["order"].tolist()) == list(range(16))
        assert all(t.image.size == (40, 40) for t in r["tiles"])
        p = r["p_fake"]
        assert r["tiles"][1].contribution == pytest.approx(math.log(p / (1 - p)), abs=1e-3)


# ------------------------------------------------------------------------------------------ dimensions
def test_single_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.4
    v = rng.normal(size=200) + y * 0.7
    v[:20] = 0.0  # ties
    assert vd.single_auc(v, y) == pytest.approx(roc_auc_score(y, v))
    assert math.isnan(vd.single_auc(v, np.zeros(200, bool)))


def test_dimension_table_and_distributions(bundle):
    w2 = va.head_weights(bundle_distiller(bundle))
    table = vd.dimension_table(bundle.images, w2)
    assert table["dim"].tolist() == list(range(16))
    np.testing.assert_allclose(table["weight"], w2)
    assert table["auc"].between(0, 1).all()
    dist = vd.distribution_frame(bundle.images, bins=10)
    sums = dist.groupby(["dim", "label"])["share"].sum()
    np.testing.assert_allclose(sums, 1.0)
    spec = vd.distribution_chart(dist, table).to_dict()
    assert spec["facet"]["field"] == "panel"
    top = vd.top_images(bundle.images, 3, k=5)
    assert top["z3"].is_monotonic_decreasing and len(top) == 5


def test_mean_map_normalises_each_map():
    maps = np.zeros((2, 17, 2, 2))
    maps[0, 5] = [[0, 1], [0, 0]]
    maps[1, 5] = [[0, 100], [100, 0]]
    np.testing.assert_allclose(vd.mean_map(maps, 5), [[0, 1], [0.5, 0]])


# ------------------------------------------------------------------------------------------ concepts
def test_concept_cards_from_compute_concepts(bundle, tiny_clip_dir):
    from asap_core.analyses.concepts import compute_concepts
    from asap_core.model.factory import load_encoder

    enc = load_encoder(str(tiny_clip_dir), device="cpu")
    ids = bundle.images["image_id"].tolist()[:8]
    cards = vc.concept_cards(compute_concepts(bundle, ids, k=3, encoder=enc), n_exemplars=2)
    assert len(cards) == 3
    assert sum(c["n_segments"] for c in cards) == 8 * 3
    assert all(1 <= len(c["crops"]) <= 2 for c in cards)
    assert all(im.size == (96, 96) for c in cards for im in c["crops"])
    assert "share fake" in vc.describe(cards[0])


def test_selected_members_and_views_of_the_pages(bundle):
    """The computations the pages used to do inline: members of selected cells under a filter, the order
    of the dimensions, the confusion tables, a bounded store of recent results."""
    from asap_core.views import generators as vgen

    cells = bundle.cells.sort_values("n").iloc[-2:]["cell"].tolist()
    fakes = ov.selected_members(bundle.images, cells, ov.Filters(label="fake"))
    assert (fakes["label"] == "fake").all() and fakes["cell"].isin(cells).all()
    assert len(fakes) == int(bundle.cells.set_index("cell").loc[cells, ["n_fake_ok", "n_fake_wrong"]].sum().sum())
    table = vd.dimension_table(bundle.images, va.head_weights(bundle_distiller(bundle)))
    order = vd.dimension_order(table)
    gaps = (table.set_index("dim").loc[order, "auc"] - 0.5).abs().to_numpy()
    assert sorted(order) == list(range(16)) and (np.diff(gaps) <= 1e-12).all()
    cm, fake_cm, _ = vgen.confusion_tables(bundle, held_out_only=False, with_real=True)
    assert "real" in cm.index and "real" not in fake_cm.index
    assert int(fake_cm.to_numpy().sum()) == int((bundle.images["label"] == "fake").sum())
    store: dict = {}
    for k in range(5):
        vs.keep_recent(store, k, k * k, max_items=3)
    assert list(store) == [2, 3, 4] and store[4] == 16


def test_thumbnails_and_tiles_are_sent_at_the_width_shown():
    """``thumb_jpeg`` gives JPEG bytes no wider than asked (what ``st.image`` then sends as they are), grey for
    a missing thumbnail; ``encode_tiles`` turns every tile into JPEG bytes of the tile's size, captions kept."""
    import io

    from PIL import Image

    from asap_core.views import attention as va
    from asap_core.views import grid as vg

    buf = io.BytesIO()
    Image.new("RGB", (128, 96), (10, 200, 30)).save(buf, format="JPEG")
    small = Image.open(io.BytesIO(vg.thumb_jpeg(buf.getvalue(), 56)))
    assert small.format == "JPEG" and small.size == (56, 42)
    assert Image.open(io.BytesIO(vg.thumb_jpeg(None, 64))).size == (64, 64)
    base = Image.new("RGB", (128, 128), (90, 90, 90))
    tiles = va.image_tiles(base, np.random.default_rng(0).random((17, 7, 7)), np.arange(16) / 10, np.arange(16),
                           size=va.TILE_PX)
    rows = va.encode_tiles([{"image_id": "a", "tiles": tiles}])
    assert [t.caption for t in rows[0]["tiles"]] == [t.caption for t in tiles] and len(tiles) == 18
    for t in rows[0]["tiles"]:
        assert t.image.startswith("data:image/jpeg;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(t.image.split(",", 1)[1])))
        assert im.format == "JPEG" and im.size == (va.TILE_PX, va.TILE_PX)

