"""IsoMatch image grid (Fried et al. 2015; docs/design.md §3.9).

Items of one cell (or any selection) are projected to 2-D, scaled to the unit square and
matched one-to-one to the slots of a near-square grid by minimising the summed squared
distance between each item and its slot centre (``scipy.optimize.linear_sum_assignment``).
Grid convention as in ``layout``: ``row`` 0 is the TOP row (largest y), ``col`` 0 the left.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import InputError
from .layout import finite_rows, pca_2d, scale_unit, tsne_2d

#: t-SNE settings for a cell's grid: a small neighbourhood (perplexity <= 10, clipped to
#: (n - 1) / 3), 400 iterations and one OpenMP thread (a grid is drawn while the user waits;
#: 250, sklearn's minimum, stops after the early-exaggeration phase and loses most of the
#: neighbourhood structure).
ISOMATCH_PERPLEXITY = 10.0
ISOMATCH_MAX_ITER = 400


def grid_shape(n: int) -> tuple[int, int]:
    """Near-square grid for ``n`` items: ``(n_rows, n_cols)`` with n_cols = ceil(sqrt(n))."""
    if n <= 0:
        return 0, 0
    n_cols = math.ceil(math.sqrt(n))
    return math.ceil(n / n_cols), n_cols


def project_2d(features: np.ndarray, method: str = "tsne", random_state: int = 0) -> np.ndarray:
    """2-D projection of ``features`` [n, d] -> [n, 2] in the unit square (each axis stretched).

    ``method="tsne"`` uses t-SNE for n >= 10 and PCA below; ``"pca"`` always uses PCA.
    """
    if method not in ("tsne", "pca"):
        raise InputError(f"unknown IsoMatch projection {method!r}", "use method='tsne' or 'pca'")
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    if n == 1:
        return np.full((1, 2), 0.5)
    if method == "tsne" and n >= 10 and np.unique(x, axis=0).shape[0] >= 5:
        pos = tsne_2d(x, perplexity=ISOMATCH_PERPLEXITY, random_state=random_state,
                      max_iter=ISOMATCH_MAX_ITER, n_jobs=1, n_threads=1)
    else:
        pos = pca_2d(x)
    return scale_unit(pos, keep_aspect=False)


def isomatch_grid(
    features: np.ndarray, random_state: int = 0, method: str = "tsne",
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Arrange ``features`` [n, d] on a near-square grid -> ``(rows [n], cols [n], n_rows, n_cols)``.

    n_cols = ceil(sqrt(n)), n_rows = ceil(n / n_cols); every item gets a distinct slot
    (rows in [0, n_rows), cols in [0, n_cols)); the n_rows * n_cols - n spare slots stay
    empty. ``method``: "tsne" (default; PCA below 10 items) or "pca". Deterministic for a
    given ``random_state``.
    """
    x = finite_rows(features, "the images' features for the grid",
                    "every image of the selection needs a finite embedding")
    n = x.shape[0]
    n_rows, n_cols = grid_shape(n)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0, 0
    pts = project_2d(x, method=method, random_state=random_state)
    slot_col = np.tile(np.arange(n_cols), n_rows)
    slot_row = np.repeat(np.arange(n_rows), n_cols)
    centres = np.stack([(slot_col + 0.5) / n_cols, 1.0 - (slot_row + 0.5) / n_rows], axis=1)
    cost = ((pts[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)  # [n, n_rows * n_cols]
    item, slot = linear_sum_assignment(cost)
    order = np.argsort(item)
    slot = slot[order]
    return slot_row[slot].astype(np.int64), slot_col[slot].astype(np.int64), n_rows, n_cols


def neighbourhood_preservation(
    features: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int = 5,
) -> float:
    """Mean share of each item's k nearest neighbours in feature space (Euclidean) that are
    also among its k nearest in grid space (Euclidean on (row, col); ties by item index).

    k is capped at n - 1; returns NaN for fewer than 2 items. 1.0 = perfect, a random
    assignment scores about k / (n - 1).
    """
    x = np.asarray(features, dtype=np.float64)
    g = np.stack([np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)], axis=1)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    k = min(int(k), n - 1)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}", "use k=5")
    nf = _knn(x, k)
    ng = _knn(g, k)
    hits = [(len(np.intersect1d(nf[i], ng[i], assume_unique=True))) for i in range(n)]
    return float(np.mean(hits) / k)


def _knn(x: np.ndarray, k: int) -> np.ndarray:
    """Indices [n, k] of each row's k nearest other rows (stable order on ties)."""
    sq = (x * x).sum(axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]
