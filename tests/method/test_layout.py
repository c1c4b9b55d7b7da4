"""2-D map (t-SNE), square cells and the per-cell table."""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from asap_core.errors import InputError
from asap_core.method.layout import assign_cells, cell_table, embed_2d, regrid
from asap_core.storage.schema import CELL_COLUMNS


def blobs(rng: np.random.Generator, n: int, k: int = 3, d: int = 16, spread: float = 6.0):
    """``n`` points in ``k`` well-separated gaussian blobs -> (x [n, d], blob label [n])."""
    centres = rng.normal(size=(k, d)) * spread
    lab = rng.integers(0, k, size=n)
    return centres[lab] + rng.normal(size=(n, d)), lab


def make_images(rng: np.random.Generator, n: int, grid: int) -> pd.DataFrame:
    """A synthetic images table: mixed labels (some unlabelled), predictions, generators, NaNs."""
    xy = rng.random((n, 2))
    xy[:5] = [[0, 0], [1, 1], [0, 1], [1, 0], [0.5, 0.5]]  # edges included
    label = rng.choice(np.array(["real", "fake", None], dtype=object), size=n, p=[0.4, 0.4, 0.2])
    pred = rng.choice(np.array(["real", "fake"], dtype=object), size=n)
    correct = pd.array([None if lab is None else lab == p for lab, p in zip(label, pred)], dtype="boolean")
    gen = rng.choice(np.array(["gen_a", "gen_b", "gen_c"], dtype=object), size=n)
    gen = np.where(label == "fake", gen, None)
    gen[rng.random(n) < 0.1] = None  # some fakes without a generator name
    conf = rng.random(n)
    conf[rng.random(n) < 0.05] = np.nan
    cell, _, _ = assign_cells(xy, grid)
    return pd.DataFrame({"cell": cell, "label": label, "pred": pred, "correct": correct,
                         "confidence": conf, "generator": gen, "map_x": xy[:, 0], "map_y": xy[:, 1]})


def naive_cells(images: pd.DataFrame, grid: int) -> dict[int, dict]:
    """Per-cell statistics with a plain Python loop over rows (independent of cell_table)."""
    out: dict[int, dict] = {}
    for rec in images.to_dict("records"):
        c = int(rec["cell"])
        s = out.setdefault(c, dict(n=0, real_ok=0, real_wrong=0, fake_ok=0, fake_wrong=0, unl=0,
                                   conf=[], gens=Counter()))
        s["n"] += 1
        lab = rec["label"]
        if lab not in ("real", "fake"):
            s["unl"] += 1
        else:
            key = f"{lab}_{'ok' if rec['pred'] == lab else 'wrong'}"
            s[key] += 1
            if lab == "fake" and isinstance(rec["generator"], str):
                s["gens"][rec["generator"]] += 1
        if not np.isnan(rec["confidence"]):
            s["conf"].append(rec["confidence"])
    return out


def test_cell_counts_add_up_and_match_naive_loop():
    rng = np.random.default_rng(0)
    grid = 6
    images = make_images(rng, 3000, grid)
    cells = cell_table(images, grid)
    assert list(cells.columns) == list(CELL_COLUMNS)
    assert cells["n"].sum() == len(images)
    parts = cells[["n_real_ok", "n_real_wrong", "n_fake_ok", "n_fake_wrong", "n_unlabelled"]].sum(axis=1)
    assert (parts == cells["n"]).all()
    assert (cells["n"] > 0).all() and cells["cell"].is_unique

    naive = naive_cells(images, grid)
    assert set(cells["cell"]) == set(naive)
    for row in cells.itertuples():
        s = naive[row.cell]
        assert (row.n, row.n_real_ok, row.n_real_wrong, row.n_fake_ok, row.n_fake_wrong, row.n_unlabelled) == (
            s["n"], s["real_ok"], s["real_wrong"], s["fake_ok"], s["fake_wrong"], s["unl"])
        assert row.mean_conf == pytest.approx(np.mean(s["conf"]))
        labelled = s["n"] - s["unl"]
        assert row.accuracy == pytest.approx((s["real_ok"] + s["fake_ok"]) / labelled)
        assert row.share_fake == pytest.approx((s["fake_ok"] + s["fake_wrong"]) / labelled)
        best = max(s["gens"].values())
        assert row.dominant_generator == min(g for g, k in s["gens"].items() if k == best)
        assert (row.col, row.row) == (row.cell % grid, row.cell // grid)


def test_cell_centres_map_back_to_their_cell_and_row0_is_top():
    grid = 4
    cell, col, row = assign_cells(np.array([[0.0, 1.0], [1.0, 0.0], [0.99, 0.99], [0.3, 0.1]]), grid)
    assert row.tolist() == [0, 3, 0, 3]  # largest y -> row 0 (top of the display)
    assert col.tolist() == [0, 3, 3, 1]
    assert cell.tolist() == (row * grid + col).tolist()

    images = make_images(np.random.default_rng(1), 500, grid)
    cells = cell_table(images, grid)
    back, _, _ = assign_cells(cells[["x", "y"]].to_numpy(), grid)
    assert back.tolist() == cells["cell"].tolist()
    assert cells["x"].between(0, 1).all() and cells["y"].between(0, 1).all()


def test_cell_table_unlabelled_and_missing_values():
    images = pd.DataFrame({
        "cell": [0, 0, 3, 3],
        "label": [None, None, "fake", "real"],
        "pred": ["fake", "real", "fake", "fake"],
        "correct": pd.array([pd.NA, pd.NA, pd.NA, False], dtype="boolean"),  # NA on a labelled row
        "confidence": [0.2, 0.4, np.nan, 0.9],
        "generator": [None, None, None, None],
    })
    cells = cell_table(images, 2).set_index("cell")
    assert cells.loc[0, "n_unlabelled"] == 2 and np.isnan(cells.loc[0, "accuracy"])
    assert np.isnan(cells.loc[0, "share_fake"]) and cells.loc[0, "dominant_generator"] is None
    assert cells.loc[0, "mean_conf"] == pytest.approx(0.3)
    assert cells.loc[3, "n_fake_ok"] == 1 and cells.loc[3, "n_real_wrong"] == 1  # NA -> pred == label
    assert cells.loc[3, "accuracy"] == pytest.approx(0.5) and cells.loc[3, "mean_conf"] == pytest.approx(0.9)
    with pytest.raises(InputError):
        cell_table(images.assign(cell=[0, 0, 4, 4]), 2)  # cell id outside a 2x2 grid


def test_regrid_recomputes_cells_from_map_positions():
    rng = np.random.default_rng(2)
    images = make_images(rng, 2000, 24)
    for grid in (1, 5, 24):
        new, cells = regrid(images, grid)
        assert len(new) == len(images) and new.index.equals(images.index)
        expect_col = np.minimum((images["map_x"].to_numpy() * grid).astype(int), grid - 1)
        expect_row = np.minimum(((1 - images["map_y"].to_numpy()) * grid).astype(int), grid - 1)
        assert (new["cell"].to_numpy() == expect_row * grid + expect_col).all()
        assert cells["n"].sum() == len(images) and len(cells) <= grid * grid
        pd.testing.assert_frame_equal(cells, cell_table(new, grid))
    _, one = regrid(images, 1)
    assert one["n"].tolist() == [len(images)]
    assert (images["cell"] == assign_cells(images[["map_x", "map_y"]].to_numpy(), 24)[0]).all()  # input untouched


def test_cell_table_is_fast_on_50k_images():
    images = make_images(np.random.default_rng(3), 50_000, 24)
    best = min(_timed(lambda: cell_table(images, 24)) for _ in range(3))
    assert best < 0.5, f"cell_table took {best:.3f} s for 50k images"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_embed_2d_range_determinism_and_cluster_structure():
    rng = np.random.default_rng(4)
    z, lab = blobs(rng, 150)
    xy = embed_2d(z, random_state=0)
    assert xy.shape == (150, 2) and xy.dtype == np.float64
    assert xy.min() >= 0 and xy.max() <= 1
    span = xy.max(axis=0) - xy.min(axis=0)
    assert span.max() == pytest.approx(1.0)  # scaled by the larger range
    assert np.allclose(xy.min(axis=0) + xy.max(axis=0), 1.0)  # shorter axis centred
    np.testing.assert_array_equal(xy, embed_2d(z, random_state=0))
    # each point's nearest map neighbour comes from its own blob
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (lab[d.argmin(axis=1)] == lab).mean() > 0.95


def test_embed_2d_duplicates_and_tiny_inputs():
    rng = np.random.default_rng(5)
    base, _ = blobs(rng, 40, d=8)
    z = np.concatenate([base, base[:10], base[:10]])  # 20 duplicate rows
    xy = embed_2d(z)
    np.testing.assert_array_equal(xy[40:50], xy[:10])
    np.testing.assert_array_equal(xy[50:60], xy[:10])
    assert len(np.unique(xy[:40], axis=0)) == 40

    assert embed_2d(np.zeros((0, 8))).shape == (0, 2)
    np.testing.assert_array_equal(embed_2d(np.ones((1, 8))), [[0.5, 0.5]])
    np.testing.assert_array_equal(embed_2d(np.ones((7, 8))), np.full((7, 2), 0.5))  # all identical
    for n in (2, 3, 4, 5, 6):
        xy = embed_2d(rng.normal(size=(n, 8)))
        assert xy.shape == (n, 2) and xy.min() >= 0 and xy.max() <= 1
        assert len(np.unique(xy, axis=0)) == n
    # 4 distinct rows on a line: PCA keeps their order along the line
    t = np.array([0.0, 1.0, 3.0, 7.0])
    xy = embed_2d(np.outer(t, np.ones(8)))
    assert np.allclose(np.diff(xy[:, 0]) / np.diff(t), 1 / 7) and np.allclose(xy[:, 1], 0.5)
    with pytest.raises(InputError):
        embed_2d(np.array([[0.0, np.nan]] * 6))


def test_embed_2d_above_max_fit_places_rest_at_mean_of_sample_neighbours():
    rng = np.random.default_rng(6)
    z, lab = blobs(rng, 300)
    xy, fitted = embed_2d(z, random_state=0, max_fit=50, return_fitted=True)
    assert xy.shape == (300, 2) and xy.min() >= 0 and xy.max() <= 1
    assert fitted.sum() == 50
    np.testing.assert_array_equal(xy, embed_2d(z, random_state=0, max_fit=50))
    sample = np.flatnonzero(fitted)
    d = ((z[~fitted][:, None] - z[sample][None]) ** 2).sum(-1)  # [250, 50]
    nbr = sample[np.argsort(d, axis=1)[:, :10]]
    np.testing.assert_allclose(xy[~fitted], xy[nbr].mean(axis=1), atol=1e-9)
    # placed points sit with their own blob: nearest fitted point on the map shares the blob
    dm = ((xy[~fitted][:, None] - xy[sample][None]) ** 2).sum(-1)
    assert (lab[sample[dm.argmin(axis=1)]] == lab[~fitted]).mean() > 0.95
