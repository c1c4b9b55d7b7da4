"""IsoMatch image grid: a bijection onto a near-square grid that keeps neighbours together."""
from __future__ import annotations

import math

import numpy as np
import pytest

from asap_core.errors import InputError
from asap_core.method.isomatch import grid_shape, isomatch_grid, neighbourhood_preservation


def blobs(rng: np.random.Generator, n: int, k: int = 3, d: int = 16, spread: float = 3.0):
    centres = rng.normal(size=(k, d)) * spread
    lab = rng.integers(0, k, size=n)
    return centres[lab] + rng.normal(size=(n, d)), lab


def assert_bijection(rows, cols, n_rows, n_cols, n):
    assert rows.shape == cols.shape == (n,)
    assert n_cols == math.ceil(math.sqrt(n)) and n_rows == math.ceil(n / n_cols)
    assert ((rows >= 0) & (rows < n_rows)).all() and ((cols >= 0) & (cols < n_cols)).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) == n  # no two items share a slot


@pytest.mark.parametrize("n", [1, 2, 7, 10, 37, 100])
@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_isomatch_is_a_bijection_onto_grid_slots(n, method):
    x, _ = blobs(np.random.default_rng(n), n)
    rows, cols, n_rows, n_cols = isomatch_grid(x, random_state=0, method=method)
    assert_bijection(rows, cols, n_rows, n_cols, n)


def test_isomatch_handles_identical_features_and_empty_input():
    rows, cols, n_rows, n_cols = isomatch_grid(np.ones((12, 4)))
    assert_bijection(rows, cols, n_rows, n_cols, 12)
    rows, cols, n_rows, n_cols = isomatch_grid(np.zeros((0, 4)))
    assert (rows.size, cols.size, n_rows, n_cols) == (0, 0, 0, 0)
    assert grid_shape(10) == (3, 4) and grid_shape(16) == (4, 4) and grid_shape(17) == (4, 5)
    with pytest.raises(InputError):
        isomatch_grid(np.ones(5))
    with pytest.raises(InputError):
        isomatch_grid(np.ones((5, 3)), method="umap")


def test_isomatch_recovers_a_grid_layout_with_row0_at_the_top():
    # items that already form a 3 x 4 grid (x wider than y so PCA's first axis is x)
    r, c = np.divmod(np.arange(12), 4)
    feats = np.stack([2.0 * c, -1.0 * r], axis=1)  # row 0 has the largest y
    rows, cols, n_rows, n_cols = isomatch_grid(feats, method="pca")
    assert (n_rows, n_cols) == (3, 4)
    assert rows.tolist() == r.tolist() and cols.tolist() == c.tolist()


def test_isomatch_is_deterministic():
    x, _ = blobs(np.random.default_rng(3), 60)
    a = isomatch_grid(x, random_state=1)
    b = isomatch_grid(x, random_state=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_isomatch_preserves_neighbourhoods_better_than_random():
    rng = np.random.default_rng(0)
    x, lab = blobs(rng, 100)
    rows, cols, n_rows, n_cols = isomatch_grid(x, random_state=0)
    iso = neighbourhood_preservation(x, rows, cols, k=5)
    rand = []
    rand_purity = []
    for _ in range(5):
        slot = rng.permutation(n_rows * n_cols)[:100]
        rand.append(neighbourhood_preservation(x, slot // n_cols, slot % n_cols, k=5))
        rand_purity.append(grid_purity(lab, slot // n_cols, slot % n_cols))
    assert iso > np.mean(rand) + 0.15, (iso, rand)
    # grid neighbours (4-neighbourhood) mostly come from the same blob
    assert grid_purity(lab, rows, cols) > 0.85 > max(rand_purity) + 0.3

    pca_rows, pca_cols, _, _ = isomatch_grid(x, method="pca")
    assert neighbourhood_preservation(x, pca_rows, pca_cols, k=5) > np.mean(rand) + 0.1


def grid_purity(lab: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    """Share of horizontally / vertically adjacent item pairs on the grid with the same label."""
    where = {(r, c): i for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))}
    same = [lab[i] == lab[where[(r + dr, c + dc)]]
            for (r, c), i in where.items() for dr, dc in ((0, 1), (1, 0)) if (r + dr, c + dc) in where]
    return float(np.mean(same))


def test_neighbourhood_preservation_extremes():
    r, c = np.divmod(np.arange(25), 5)
    feats = np.stack([r, c], axis=1).astype(float)
    assert neighbourhood_preservation(feats, r, c, k=4) == pytest.approx(1.0)  # grid itself
    assert np.isnan(neighbourhood_preservation(feats[:1], r[:1], c[:1]))
    assert neighbourhood_preservation(feats[:3], r[:3], c[:3], k=10) == pytest.approx(1.0)  # k capped


@pytest.mark.slow
def test_isomatch_400_items_is_a_bijection():
    """400 items (the size of a cell grid's largest page) land on distinct grid slots. Its speed is a
    benchmark's business (benchmarks/RESULTS.md, grid timings), not a timed test's."""
    x, _ = blobs(np.random.default_rng(4), 400)
    rows, cols, n_rows, n_cols = isomatch_grid(x)
    assert_bijection(rows, cols, n_rows, n_cols, 400)
