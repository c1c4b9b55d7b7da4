"""Dimension view (ASAP, docs/design.md §3.11): per dimension the real vs fake distribution, the classifier weight,
the AUC of the dimension alone, its top images and their mean relevance map. Dimensions are named with
``storage.labels`` (``names``: ``Bundle.dimension_names``)."""
from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd
from PIL import Image
from scipy.stats import rankdata

from ..method.relevance import colormap, overlay, upsample_map
from ..storage.labels import dimension_label
from ..storage.schema import MAX_DIMENSION_NAME as MAX_DIMENSION_NAME  # the name box's limit, for the page
from ..storage.schema import N_DIMS, Z_COLUMNS
from .attention import decode_thumb

LABEL_COLORS = {"real": "#1f77b4", "fake": "#ff7f0e"}


def single_auc(values: np.ndarray, is_fake: np.ndarray) -> float:
    """ROC-AUC of ``values`` [n] as a fake score (Mann-Whitney U, ties count half); NaN without both classes."""
    v = np.asarray(values, np.float64)
    y = np.asarray(is_fake, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(v)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def dimension_table(images: pd.DataFrame, w2: np.ndarray, names: Sequence[str] = ()) -> pd.DataFrame:
    """One row per dimension: ``dim, dimension (its label), weight (w2_i), auc, mean_real, mean_fake, std,
    mean_contribution``.

    AUC and means use the labelled images; ``mean_contribution`` is the mean of ``z_i * w2_i`` over all.
    """
    label = images["label"].astype(object)
    lab = label.notna().to_numpy()
    is_fake = (label == "fake").to_numpy()
    z = images[Z_COLUMNS].to_numpy(np.float64)
    rows = []
    for d in range(N_DIMS):
        zd = z[:, d]
        rows.append({
            "dim": d,
            "dimension": dimension_label(d, names),
            "weight": float(w2[d]),
            "auc": single_auc(zd[lab], is_fake[lab]),
            "mean_real": float(zd[lab & ~is_fake].mean()) if (lab & ~is_fake).any() else float("nan"),
            "mean_fake": float(zd[is_fake].mean()) if is_fake.any() else float("nan"),
            "std": float(zd.std()),
            "mean_contribution": float((zd * w2[d]).mean()),
        })
    return pd.DataFrame(rows)


def distribution_frame(images: pd.DataFrame, bins: int = 30) -> pd.DataFrame:
    """Histogram per dimension and label: ``dim, label, lo, hi, mid, share`` (share of that label's images).

    Bins are per dimension over its full range; unlabelled images are left out.
    """
    label = images["label"].astype(object)
    z = images[Z_COLUMNS].to_numpy(np.float64)
    parts = []
    for d in range(N_DIMS if len(z) else 0):
        lo, hi = float(np.nanmin(z[:, d])), float(np.nanmax(z[:, d]))
        if not hi > lo:
            hi = lo + 1e-6
        edges = np.linspace(lo, hi, bins + 1)
        for name in ("real", "fake"):
            v = z[(label == name).to_numpy(), d]
            if not len(v):
                continue
            counts, _ = np.histogram(v, bins=edges)
            parts.append(pd.DataFrame({"dim": d, "label": name, "lo": edges[:-1], "hi": edges[1:],
                                       "mid": (edges[:-1] + edges[1:]) / 2, "share": counts / len(v)}))
    if not parts:
        return pd.DataFrame(columns=["dim", "label", "lo", "hi", "mid", "share"])
    return pd.concat(parts, ignore_index=True)


def panel_titles(table: pd.DataFrame, names: Sequence[str] = ()) -> dict[int, str]:
    """``dim -> "dim 3 · smooth skin · w +0.42 · AUC 0.71"`` (facet titles; the name once given)."""
    return {dim: f"{dimension_label(dim, names)} · w {weight:+.2f} · AUC {auc:.2f}"
            for dim, weight, auc in zip(table["dim"].astype(int).tolist(), table["weight"], table["auc"])}


def distribution_chart(dist: pd.DataFrame, table: pd.DataFrame, columns: int = 4, width: int = 190,
                       height: int = 90, order: list[int] | None = None, names: Sequence[str] = ()) -> alt.FacetChart:
    """Small multiples: per dimension, overlaid real (blue) and fake (orange) histograms, titled with the
    dimension's label, the classifier weight and the single-dimension AUC. ``order`` lists dims in panel order
    (default 0..15)."""
    titles = panel_titles(table, names)
    data = dist.assign(panel=dist["dim"].map(titles))
    sort = [titles[d] for d in (order if order is not None else sorted(titles))]
    bars = alt.Chart(data).mark_rect(opacity=0.55).encode(
        x=alt.X("lo:Q", title=None, axis=alt.Axis(labelFontSize=9, tickCount=4)),
        x2="hi:Q",
        y=alt.Y("share:Q", title=None, axis=alt.Axis(labels=False, ticks=False), stack=None),
        color=alt.Color("label:N", scale=alt.Scale(domain=list(LABEL_COLORS), range=list(LABEL_COLORS.values())),
                        legend=alt.Legend(orient="top", title=None)),
        tooltip=[alt.Tooltip("label:N"), alt.Tooltip("mid:Q", title="z", format=".3f"),
                 alt.Tooltip("share:Q", format=".1%")],
    ).properties(width=width, height=height)
    return bars.facet(
        facet=alt.Facet("panel:N", sort=sort, title=None, header=alt.Header(labelFontSize=11, labelFontWeight="bold")),
        columns=columns,
    ).resolve_scale(x="independent", y="independent")


def weight_chart(table: pd.DataFrame) -> alt.Chart:
    """Bar chart of the classifier weight per dimension, coloured by single-dimension AUC."""
    return alt.Chart(table).mark_bar().encode(
        x=alt.X("dim:O", title="dimension"),
        y=alt.Y("weight:Q", title="classifier weight w2"),
        color=alt.Color("auc:Q", scale=alt.Scale(scheme="blueorange", domain=[0, 1]), title="AUC alone"),
        tooltip=[alt.Tooltip("dimension:N" if "dimension" in table else "dim:O", title="dimension"),
                 alt.Tooltip("weight:Q", format="+.3f"), alt.Tooltip("auc:Q", format=".3f"),
                 alt.Tooltip("mean_real:Q", format=".3f"), alt.Tooltip("mean_fake:Q", format=".3f")],
    ).properties(height=180)


def top_images(images: pd.DataFrame, dim: int, k: int = 8, highest: bool = True) -> pd.DataFrame:
    """The ``k`` images with the highest (or lowest) value of dimension ``dim``, strongest first."""
    col = Z_COLUMNS[int(dim)]
    return images.sort_values(col, ascending=not highest, kind="stable").head(int(k))


def mean_map(maps: np.ndarray, target: int, normalize: bool = True) -> np.ndarray:
    """Mean of ``maps [n, 17, side, side]`` at ``target`` -> ``[side, side]``; each map min-max scaled first
    when ``normalize`` (so no single image dominates)."""
    m = np.asarray(maps, np.float64)[:, int(target)]
    if m.shape[0] == 0:
        raise ValueError("mean_map needs at least one map")
    if normalize:
        lo = m.min(axis=(1, 2), keepdims=True)
        hi = m.max(axis=(1, 2), keepdims=True)
        m = np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    return m.mean(axis=0)


def dimension_order(table: pd.DataFrame) -> list[int]:
    """Dimensions of a ``dimension_table``, the most telling first (largest ``|auc - 0.5|``)."""
    key = (table["auc"] - 0.5).abs()
    return table.assign(key=key).sort_values("key", ascending=False, kind="stable")["dim"].astype(int).tolist()


def mean_map_tiles(maps: np.ndarray, dim: int, first_thumb: bytes | None, size: int = 128,
                   names: Sequence[str] = ()) -> tuple[list, list[str], str]:
    """(two PIL tiles: the mean map of ``dim`` as a heat map and over the first image's thumbnail; their
    captions; a note on the value range) for ``maps [n, 17, side, side]`` of the top images."""
    mean = mean_map(maps, dim)
    heat = Image.fromarray(colormap(upsample_map(mean, size))).convert("RGB")
    tiles = [heat, overlay(decode_thumb(first_thumb, size), mean, alpha=0.5)]
    captions = [f"mean relevance of {dimension_label(dim, names)} over the top {len(maps)}", "over the first top image"]
    note = (f"Mean of the per-image min-max-scaled maps; range before averaging "
            f"{float(np.min(maps[:, dim])):.3g} .. {float(np.max(maps[:, dim])):.3g}.")
    return tiles, captions, note
