"""2-D map of the authenticity space Z and its binning into cells (docs/design.md §3.7).

Conventions (shared with the app and ``isomatch``):

* Map coordinates ``map_x``, ``map_y`` lie in [0, 1]; larger ``y`` is higher on the display.
* Cells are square bins of a ``grid`` x ``grid`` lattice: ``col`` 0 is the left edge,
  ``row`` 0 is the TOP edge (the largest ``y``), and ``cell = row * grid + col``.
* A cell's centre is ``x = (col + 0.5) / grid``, ``y = 1 - (row + 0.5) / grid``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from ..storage.schema import CELL_COLUMNS, DEFAULT_GRID, GRID_FILL, GRID_MAX, GRID_MEDIAN_IMAGES, GRID_MIN

#: t-SNE iterations used by :func:`embed_2d`. sklearn's default is 1000; the layout is
#: settled well before that for a map we only bin into cells, and 500 roughly halves the cost.
#: 250 is sklearn's minimum and only covers the early-exaggeration phase, so keep this well above it.
TSNE_MAX_ITER = 500

#: Largest t-SNE fit run on one OpenMP thread when ``n_threads`` is left to auto (see tsne_2d).
SINGLE_THREAD_MAX = 5000



# --------------------------------------------------------------------------- projections
def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project rows of ``x`` [N, d] onto their top two principal axes -> [N, 2] float64.

    Deterministic: each axis is signed so that its largest-magnitude loading is positive.
    Missing axes (N < 3, d < 2 or constant data) are filled with zeros.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    out = np.zeros((n, 2), dtype=np.float64)
    if n < 2:
        return out
    xc = x - x.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(2, s.size)
    for j in range(k):
        if s[j] <= 1e-12 * max(s[0], 1e-300):
            break
        sign = 1.0 if vt[j, np.argmax(np.abs(vt[j]))] >= 0 else -1.0
        out[:, j] = sign * u[:, j] * s[j]
    return out


def scale_unit(xy: np.ndarray, keep_aspect: bool = True) -> np.ndarray:
    """Scale points [N, 2] into [0, 1] x [0, 1] -> [N, 2] float64.

    ``keep_aspect=True`` divides both axes by the larger range and centres the shorter axis
    in [0, 1]; ``False`` stretches each axis to [0, 1]. Axes with zero range sit at 0.5.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.shape[0] == 0:
        return xy.reshape(0, 2).copy()
    lo = xy.min(axis=0)
    rng = xy.max(axis=0) - lo
    out = np.full_like(xy, 0.5)
    if keep_aspect:
        span = rng.max()
        if span <= 0:
            return out
        scaled = (xy - lo) / span
        return np.clip(scaled + (1.0 - rng / span) / 2.0, 0.0, 1.0)
    for j in range(2):
        if rng[j] > 0:
            out[:, j] = (xy[:, j] - lo[j]) / rng[j]
    return out


def tsne_2d(
    x: np.ndarray,
    perplexity: float = 30.0,
    random_state: int = 0,
    max_iter: int = TSNE_MAX_ITER,
    n_jobs: int | None = -1,
    n_threads: int | None = None,
) -> np.ndarray:
    """Barnes-Hut t-SNE (PCA init) of ``x`` [N, d] -> [N, 2] (unscaled). Needs N >= 5.

    ``perplexity`` is clipped to (N - 1) / 3 so small sets work. ``n_jobs`` goes to the
    neighbour search. ``n_threads`` caps the OpenMP threads of the gradient loop: None =
    auto (1 thread up to :data:`SINGLE_THREAD_MAX` points, else all cores), -1 = all cores,
    k > 0 = k threads. On a machine whose cores are busy with other work, OpenMP threads wait
    on each other and a multi-threaded small fit becomes several times slower than one thread,
    hence the single thread for small maps.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    perp = float(min(perplexity, max((n - 1) / 3.0, 1.0)))
    tsne = TSNE(
        n_components=2, perplexity=perp, init="pca", learning_rate="auto",
        max_iter=max(int(max_iter), 250), random_state=random_state, n_jobs=n_jobs,
    )
    if n_threads is None:
        n_threads = 1 if n <= SINGLE_THREAD_MAX else -1
    if n_threads == -1:
        return tsne.fit_transform(x).astype(np.float64)
    with threadpool_limits(limits=max(int(n_threads), 1)):
        return tsne.fit_transform(x).astype(np.float64)


def finite_rows(x, what: str, nan_hint: str) -> np.ndarray:
    """``x`` as a 2-D array ``[n, d]`` of finite values, else ``InputError`` naming ``what`` (in words: a
    visitor may read it) and the fix."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"{what.capitalize()} need one row per image [n, d], not shape {x.shape}.",
                         "pass one row per image")
    if not np.all(np.isfinite(x)):
        raise InputError(f"{what.capitalize()} hold NaN or infinite values.", nan_hint)
    return x


def embed_2d(
    z: np.ndarray,
    random_state: int = 0,
    max_fit: int = 20000,
    perplexity: float = 30.0,
    max_iter: int = TSNE_MAX_ITER,
    n_jobs: int | None = -1,
    n_threads: int | None = None,
    return_fitted: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """2-D map of ``z`` [N, d] -> [N, 2] float64 in [0, 1] (aspect kept, shorter axis centred).

    * Duplicate rows are embedded once and share one position.
    * N (distinct rows) <= ``max_fit``: t-SNE with PCA init, ``max_iter`` iterations
      (default :data:`TSNE_MAX_ITER` = 500, see there), perplexity clipped to (N - 1) / 3.
    * N > ``max_fit``: t-SNE on a random sample of ``max_fit`` rows; every other row is
      placed at the mean map position of its 10 nearest sample rows in ``z`` space.
    * Fewer than 5 distinct rows: PCA (a single row sits at the centre).

    ``n_jobs`` (neighbour searches) and ``n_threads`` (t-SNE gradient threads, see
    :func:`tsne_2d`) only change speed. Deterministic for a given ``random_state``. With
    ``return_fitted=True`` also returns ``fitted`` [N] bool: rows whose position came from
    the projection itself (False only for rows placed by their sample neighbours).
    """
    z = finite_rows(z, "the values to lay out on the map",
                    "check the distiller output; every image needs a finite embedding")
    n = z.shape[0]
    if n == 0:
        empty = np.zeros((0, 2), dtype=np.float64)
        return (empty, np.zeros(0, dtype=bool)) if return_fitted else empty
    if max_fit < 5:
        raise InputError(f"max_fit must be at least 5, got {max_fit}", "use the default 20000")
    uniq, inverse = np.unique(z.astype(np.float64), axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    m = uniq.shape[0]
    fitted = np.ones(m, dtype=bool)
    if m < 5:
        pos = pca_2d(uniq)
    elif m <= max_fit:
        pos = tsne_2d(uniq, perplexity=perplexity, random_state=random_state,
                      max_iter=max_iter, n_jobs=n_jobs, n_threads=n_threads)
    else:
        pos, fitted = _embed_sampled(uniq, max_fit, perplexity, random_state, max_iter, n_jobs, n_threads)
    xy = scale_unit(pos[inverse], keep_aspect=True)
    return (xy, fitted[inverse]) if return_fitted else xy


def _embed_sampled(
    z: np.ndarray, max_fit: int, perplexity: float, random_state: int,
    max_iter: int, n_jobs: int | None, n_threads: int | None, k: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """t-SNE on ``max_fit`` sampled rows of ``z`` [M, d]; the rest at the mean of k sample neighbours.

    Returns positions [M, 2] (unscaled) and the sample mask [M] bool.
    """
    from sklearn.neighbors import NearestNeighbors

    m = z.shape[0]
    rng = np.random.default_rng(random_state)
    fit_idx = np.sort(rng.choice(m, size=max_fit, replace=False))
    rest = np.ones(m, dtype=bool)
    rest[fit_idx] = False
    pos = np.empty((m, 2), dtype=np.float64)
    pos[fit_idx] = tsne_2d(z[fit_idx], perplexity=perplexity, random_state=random_state,
                           max_iter=max_iter, n_jobs=n_jobs, n_threads=n_threads)
    nn = NearestNeighbors(n_neighbors=min(k, max_fit), n_jobs=n_jobs).fit(z[fit_idx])
    _, nbr = nn.kneighbors(z[rest])
    pos[rest] = pos[fit_idx][nbr].mean(axis=1)
    return pos, ~rest


# --------------------------------------------------------------------------- cells
def assign_cells(xy: np.ndarray, grid: int = DEFAULT_GRID) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin map points ``xy`` [N, 2] in [0, 1] into a ``grid`` x ``grid`` lattice.

    Returns ``(cell, col, row)``, each [N] int64, with ``cell = row * grid + col``;
    ``col`` 0 is the left edge (x = 0) and ``row`` 0 the TOP edge (y = 1). Points on the
    far edges (x = 1, y = 0) fall in the last column / row; values outside [0, 1] are clipped.
    """
    grid = _check_grid(grid)
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(f"assign_cells expects map points [N, 2], got shape {xy.shape}",
                         "pass the map_x, map_y columns")
    if not np.all(np.isfinite(xy)):
        raise InputError("The map positions hold NaN or infinite values.",
                         "analyse the images again to recompute the map")
    col = np.clip(np.floor(xy[:, 0] * grid), 0, grid - 1).astype(np.int64)
    row = np.clip(np.floor((1.0 - xy[:, 1]) * grid), 0, grid - 1).astype(np.int64)
    return row * grid + col, col, row


def median_cell_size(xy: np.ndarray, grid: int) -> float:
    """Median number of points per non-empty cell of ``xy`` [N, 2] on a ``grid`` x ``grid`` lattice (0 if N = 0)."""
    cell, _, _ = assign_cells(xy, grid)
    counts = np.bincount(cell, minlength=1)
    counts = counts[counts > 0]
    return float(np.median(counts)) if counts.size else 0.0


def default_grid(n_images: int, xy: np.ndarray | None = None, per_cell: int = GRID_MEDIAN_IMAGES,
                 lo: int = GRID_MIN, hi: int = GRID_MAX) -> int:
    """Cells per side for a map of ``n_images``: pies of ``per_cell`` images or more, in [``lo``, ``hi``].

    With map positions ``xy`` [N, 2] in [0, 1]: the largest grid in [lo, hi] whose median non-empty cell
    holds at least ``per_cell`` images (``lo`` when none does). A t-SNE map clusters, so fewer than
    grid² cells are used and they are uneven; measuring beats guessing. Without ``xy``: the estimate
    ``sqrt(n / (GRID_FILL * per_cell))``, with GRID_FILL the share of cells such a map occupies.
    """
    lo, hi = _check_grid(lo), max(_check_grid(hi), int(lo))
    if xy is None:
        guess = int(np.floor(np.sqrt(max(int(n_images), 0) / (GRID_FILL * per_cell))))
        return int(np.clip(guess, lo, hi))
    xy = np.asarray(xy, dtype=np.float64)
    for g in range(hi, lo - 1, -1):  # the median falls as the grid grows, but not strictly: try each
        if median_cell_size(xy, g) >= per_cell:
            return g
    return lo


def cell_centres(cell: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(col, row, x, y)`` of cell ids [K] on a ``grid`` lattice; x, y are centres in [0, 1]."""
    cell = np.asarray(cell, dtype=np.int64)
    col = cell % grid
    row = cell // grid
    return col, row, (col + 0.5) / grid, 1.0 - (row + 0.5) / grid


def cell_table(images: pd.DataFrame, grid: int) -> pd.DataFrame:
    """One row per non-empty cell (sorted by ``cell``) with the columns :data:`CELL_COLUMNS`.

    ``images`` needs ``cell`` (ids from :func:`assign_cells` for the same ``grid``); optional
    columns ``label`` ("real" / "fake" / missing = unlabelled), ``pred`` ("real" / "fake"),
    ``correct`` (bool, NA when unlabelled; where NA on a labelled row, ``pred == label``
    is used), ``confidence`` (in [0, 1]) and ``generator``.

    Per cell: ``n``; the four counts ``n_real_ok``, ``n_real_wrong``, ``n_fake_ok``,
    ``n_fake_wrong`` (by true label, correct or not) and ``n_unlabelled`` (together = ``n``);
    ``mean_conf`` (mean confidence, NaN if none); ``accuracy`` (correct / labelled, NaN if
    no labelled image); ``dominant_generator`` (most common generator among labelled fakes,
    ties broken alphabetically, None if none); ``share_fake`` (labelled fakes / labelled).
    """
    grid = _check_grid(grid)
    if "cell" not in images.columns:
        raise InputError("cell_table needs a 'cell' column in the image table",
                         "run assign_cells (or regrid) on map_x, map_y first")
    cell = images["cell"].to_numpy()
    n_cells = grid * grid
    if len(cell) and (pd.isna(cell).any() or cell.min() < 0 or cell.max() >= n_cells):
        raise InputError(f"cell ids must lie in [0, {n_cells}) for a {grid}x{grid} grid",
                         "recompute cells with regrid(images, grid)")
    cell = cell.astype(np.int64)
    n_rows = len(images)

    label = _str_col(images, "label", n_rows)
    is_real = label == "real"
    is_fake = label == "fake"
    ok = _correct(images, label, n_rows)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(cell[mask], minlength=n_cells)

    n = np.bincount(cell, minlength=n_cells)
    real_ok, real_wrong = count(is_real & ok), count(is_real & ~ok)
    fake_ok, fake_wrong = count(is_fake & ok), count(is_fake & ~ok)
    labelled = real_ok + real_wrong + fake_ok + fake_wrong

    keep = np.flatnonzero(n > 0)
    col, row, x, y = cell_centres(keep, grid)
    mean_conf = _mean_confidence(images, cell, n_cells)[keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        lab = labelled[keep]
        accuracy = np.where(lab > 0, (real_ok[keep] + fake_ok[keep]) / np.maximum(lab, 1), np.nan)
        share_fake = np.where(lab > 0, (fake_ok[keep] + fake_wrong[keep]) / np.maximum(lab, 1), np.nan)

    dominant = _dominant_generator(images, cell, is_fake, n_cells)
    out = pd.DataFrame({
        "cell": keep.astype(np.int64), "col": col, "row": row, "x": x, "y": y,
        "n": n[keep].astype(np.int64),
        "n_real_ok": real_ok[keep].astype(np.int64), "n_real_wrong": real_wrong[keep].astype(np.int64),
        "n_fake_ok": fake_ok[keep].astype(np.int64), "n_fake_wrong": fake_wrong[keep].astype(np.int64),
        "n_unlabelled": (n[keep] - labelled[keep]).astype(np.int64),
        "mean_conf": mean_conf, "accuracy": accuracy,
        "dominant_generator": pd.Series(dominant[keep], dtype=object),
        "share_fake": share_fake,
    })
    return out[list(CELL_COLUMNS)]


def regrid(images: pd.DataFrame, grid: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Re-bin images on a new ``grid`` from their ``map_x``, ``map_y``.

    Returns ``(images, cells)``: a copy of ``images`` with ``cell`` recomputed (and ``col``,
    ``row`` too when those columns exist), and :func:`cell_table` of it.
    """
    missing = [c for c in ("map_x", "map_y") if c not in images.columns]
    if missing:
        raise InputError(f"regrid needs map positions; missing column(s) {missing}",
                         "compute the map with embed_2d and store it as map_x, map_y")
    xy = images[["map_x", "map_y"]].to_numpy(dtype=np.float64)
    cell, col, row = assign_cells(xy, grid)
    out = images.copy(deep=False)  # copy-on-write: the other columns are shared, not copied (a million rows)
    out["cell"] = cell
    if "col" in out.columns:
        out["col"] = col
    if "row" in out.columns:
        out["row"] = row
    return out, cell_table(out, grid)


def _mean_confidence(images: pd.DataFrame, cell: np.ndarray, n_cells: int) -> np.ndarray:
    """Mean ``confidence`` per cell id ``[n_cells]`` (NaN where a cell has none, or without the column)."""
    if "confidence" not in images.columns:
        return np.full(n_cells, np.nan)
    conf = pd.to_numeric(images["confidence"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    has = np.isfinite(conf)
    total = np.bincount(cell[has], weights=conf[has], minlength=n_cells)
    n = np.bincount(cell[has], minlength=n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _dominant_generator(images: pd.DataFrame, cell: np.ndarray, is_fake: np.ndarray, n_cells: int) -> np.ndarray:
    """Most common generator among the labelled fakes of each cell id ``[n_cells]`` (object; ties
    alphabetically; None where a cell has none)."""
    dominant = np.full(n_cells, None, dtype=object)
    if "generator" not in images.columns or not is_fake.any():
        return dominant
    gen = _str_col(images, "generator", len(images))
    m = is_fake & (gen != "")
    if m.any():
        counts = (pd.DataFrame({"cell": cell[m], "gen": gen[m]})
                  .groupby(["cell", "gen"], sort=True).size().rename("k").reset_index())
        counts = counts.sort_values(["cell", "k", "gen"], ascending=[True, False, True], kind="stable")
        top = counts.drop_duplicates("cell", keep="first")
        dominant[top["cell"].to_numpy(dtype=np.int64)] = top["gen"].to_numpy(dtype=object)
    return dominant


# --------------------------------------------------------------------------- helpers
def _check_grid(grid: int) -> int:
    if isinstance(grid, bool) or int(grid) != grid or int(grid) < 1:
        raise InputError(f"grid size must be a positive integer, got {grid!r}",
                         "use e.g. 24 for a 24 x 24 map")
    return int(grid)


def _str_col(df: pd.DataFrame, name: str, n: int) -> np.ndarray:
    """Column ``name`` as an object array of str, with '' for missing values or a missing column."""
    if name not in df.columns:
        return np.full(n, "", dtype=object)
    s = df[name]
    return s.astype(object).where(s.notna(), "").astype(str).to_numpy(dtype=object)


def _correct(df: pd.DataFrame, label: np.ndarray, n: int) -> np.ndarray:
    """Boolean [N]: the ``correct`` column where known, else ``pred == label``."""
    pred = _str_col(df, "pred", n)
    fallback = (pred == label) & (label != "")
    if "correct" not in df.columns:
        return fallback
    c = df["correct"]
    known = c.notna().to_numpy()
    vals = np.zeros(n, dtype=bool)
    if known.any():
        vals[known] = c[known].astype(bool).to_numpy()
    return np.where(known, vals, fallback)
