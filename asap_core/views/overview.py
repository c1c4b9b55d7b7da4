"""Representation overview (docs/design.md §3.8): filters, pie slices per cell and the Altair chart.

A cell is drawn as a pie at its centre: area proportional to its image count; slices blue (real) and
orange (fake), solid for correct predictions and hatched for wrong ones, grey for unlabelled images;
opacity (saturation) follows the cell's mean confidence ``|2 p_fake - 1|``. A cell's tooltip also names the
dimension that pushes its mean fake logit most (``cell_drivers``, labelled with ``storage.labels``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from ..method.layout import cell_table
from ..storage.labels import dimension_label
from ..storage.schema import GRID_MIN, Z_COLUMNS

CATEGORIES: list[str] = ["real, correct", "real, wrong", "fake, correct", "fake, wrong", "unlabelled"]
COUNT_COLUMNS: list[str] = ["n_real_ok", "n_real_wrong", "n_fake_ok", "n_fake_wrong", "n_unlabelled"]
#: solid blue / pale blue, solid orange / pale orange, grey
COLORS: list[str] = ["#1f77b4", "#a9cbe8", "#ff7f0e", "#ffcf9e", "#9e9e9e"]
LABEL_CHOICES = ("all", "real", "fake", "unlabelled")
OUTCOME_CHOICES = ("all", "correct", "wrong")
#: px height of the overview map when it fills its container's width (``overview_chart(size=None)``)
MAP_HEIGHT = 600


@dataclass(frozen=True)
class Filters:
    """Which images the overview counts: ``label`` in LABEL_CHOICES, ``generators`` (empty = all),
    ``outcome`` in OUTCOME_CHOICES. Hashable, so it can key caches."""

    label: str = "all"
    generators: tuple[str, ...] = field(default_factory=tuple)
    outcome: str = "all"

    def active(self) -> bool:
        return self.label != "all" or bool(self.generators) or self.outcome != "all"


def generators(images: pd.DataFrame) -> list[str]:
    """Sorted distinct generator names of the labelled fakes (the generator filter's choices)."""
    if "generator" not in images.columns:
        return []
    g = images.loc[images["label"].astype(object) == "fake", "generator"].dropna().astype(str)
    return sorted(set(g) - {""})


def filter_mask(images: pd.DataFrame, filters: Filters) -> np.ndarray:
    """Boolean [N]: the rows of ``images`` that pass ``filters``.

    ``generators`` keeps fakes of those generators and every real / unlabelled image (a generator
    names only fakes). ``outcome`` "correct"/"wrong" drops unlabelled images.
    """
    n = len(images)
    keep = np.ones(n, dtype=bool)
    label = images["label"].astype(object).where(images["label"].notna(), None).to_numpy(dtype=object)
    if filters.label == "unlabelled":
        keep &= pd.isna(images["label"]).to_numpy()
    elif filters.label in ("real", "fake"):
        keep &= label == filters.label
    if filters.generators:
        gen = images["generator"].astype(object).to_numpy(dtype=object) if "generator" in images else np.full(n, None)
        keep &= (label != "fake") | np.isin(gen, list(filters.generators))
    if filters.outcome in ("correct", "wrong"):
        correct = images["correct"].astype("boolean")
        known = correct.notna().to_numpy()
        ok = correct.fillna(False).to_numpy(dtype=bool)
        keep &= known & (ok if filters.outcome == "correct" else ~ok)
    return keep


def filtered_cells(images: pd.DataFrame, grid: int, filters: Filters) -> pd.DataFrame:
    """``cell_table`` of the images that pass ``filters`` (``images`` already binned on ``grid``)."""
    if not filters.active():
        return cell_table(images, grid)
    return cell_table(images.loc[filter_mask(images, filters)], grid)


def percent(share: float) -> str:
    """A share (0..1) as the overview writes it everywhere, tooltip and panel alike: "88%"; "n/a" for NaN."""
    return "n/a" if share is None or not np.isfinite(share) else f"{float(share):.0%}"


def pie_slices(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per non-empty slice: ``cell_id, x, y, category, cat_order, count, n, theta, theta2`` (radians,
    0 at 12 o'clock, clockwise, slices in CATEGORIES order) plus the cell's tooltip fields
    (``mean_conf``, ``accuracy``, ``accuracy_text`` (:func:`percent`), ``dominant_generator``, ``share_fake``,
    ``counts``)."""
    if cells.empty:
        return pd.DataFrame(columns=["cell_id", "x", "y", "category", "cat_order", "count", "n", "theta", "theta2",
                                     "mean_conf", "accuracy", "accuracy_text", "dominant_generator", "share_fake",
                                     "counts"])
    counts = cells[COUNT_COLUMNS].to_numpy(dtype=np.int64)  # [K, 5]
    n = counts.sum(axis=1)
    ends = np.cumsum(counts, axis=1)
    starts = ends - counts
    with np.errstate(invalid="ignore", divide="ignore"):
        t0 = 2 * math.pi * starts / np.maximum(n, 1)[:, None]
        t1 = 2 * math.pi * ends / np.maximum(n, 1)[:, None]
    k, c = counts.shape
    acc = cells["accuracy"].to_numpy(dtype=np.float64)
    summary = [
        f"{a} real ok · {b} real wrong · {f} fake ok · {g} fake wrong" + (f" · {u} unlabelled" if u else "")
        for a, b, f, g, u in counts
    ]
    dom = cells["dominant_generator"].astype(object).where(cells["dominant_generator"].notna(), "-")
    frame = pd.DataFrame({
        "cell_id": np.repeat(cells["cell"].to_numpy(np.int64), c),
        "x": np.repeat(cells["x"].to_numpy(np.float64), c),
        "y": np.repeat(cells["y"].to_numpy(np.float64), c),
        "category": np.tile(np.asarray(CATEGORIES, dtype=object), k),
        "cat_order": np.tile(np.arange(c), k),
        "count": counts.reshape(-1),
        "n": np.repeat(n, c),
        "theta": t0.reshape(-1),
        "theta2": t1.reshape(-1),
        "mean_conf": np.repeat(np.nan_to_num(cells["mean_conf"].to_numpy(np.float64), nan=0.0), c),
        "accuracy": np.repeat(acc, c),
        "accuracy_text": np.repeat(np.asarray([percent(a) for a in acc], dtype=object), c),
        "dominant_generator": np.repeat(dom.to_numpy(dtype=object), c),
        "share_fake": np.repeat(np.round(cells["share_fake"].to_numpy(np.float64), 3), c),
        "counts": np.repeat(np.asarray(summary, dtype=object), c),
    })
    return frame[frame["count"] > 0].reset_index(drop=True)


def _push_side(mean_contrib: np.ndarray, mean_logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dimension, its mean contribution) per row of ``mean_contrib [K, 16]``: the largest push towards the side
    ``mean_logit [K]`` lies on (fake when >= 0), as ``views.attention.dimension_order`` orders one image's."""
    sign = np.where(mean_logit >= 0, 1.0, -1.0)[:, None]
    dims = np.argmax(mean_contrib * sign, axis=1)
    return dims, mean_contrib[np.arange(len(dims)), dims]


def driver_text(dim: int, contribution: float, names: Sequence[str] = ()) -> str:
    """``"dim 3 · smooth skin (+0.42 towards fake)"``: a dimension's mean push on the fake logit."""
    return f"{dimension_label(dim, names)} ({contribution:+.2f} towards {'fake' if contribution >= 0 else 'real'})"


def cell_drivers(images: pd.DataFrame, w2: np.ndarray, names: Sequence[str] = ()) -> pd.DataFrame:
    """Per cell of ``images`` (binned; ``cell``, ``z0..z15``, ``p_fake``): ``cell, driver_dim, driver_push,
    driver``: the dimension whose mean contribution ``mean(z_i) * w2_i`` pushes hardest towards the side of
    the cell's mean fake logit, and that in words (``driver_text``, named with ``names``)."""
    if images.empty:
        return pd.DataFrame(columns=["cell", "driver_dim", "driver_push", "driver"])
    contrib = pd.DataFrame(images[Z_COLUMNS].to_numpy(np.float64) * np.asarray(w2, np.float64)[None, :])
    p = np.clip(images["p_fake"].to_numpy(np.float64), 1e-7, 1 - 1e-7)
    contrib["_logit"] = np.log(p / (1 - p))
    means = contrib.groupby(images["cell"].to_numpy()).mean()
    dims, push = _push_side(means.drop(columns="_logit").to_numpy(), means["_logit"].to_numpy())
    return pd.DataFrame({"cell": means.index.astype(np.int64), "driver_dim": dims.astype(np.int64),
                         "driver_push": push, "driver": [driver_text(d, c, names) for d, c in zip(dims, push)]})


def selection_driver(members: pd.DataFrame, w2: np.ndarray, names: Sequence[str] = ()) -> str | None:
    """``driver_text`` of a set of images taken together (e.g. the selected cells' members); None when empty."""
    if members.empty:
        return None
    return str(cell_drivers(members.assign(cell=0), w2, names)["driver"].iloc[0])


def with_drivers(slices: pd.DataFrame, drivers: pd.DataFrame) -> pd.DataFrame:
    """``slices`` (``pie_slices``) with each cell's ``driver`` text (``cell_drivers``) for the tooltip."""
    if slices.empty:
        return slices.assign(driver=pd.Series(dtype=object))
    d = drivers.set_index("cell")["driver"]
    return slices.assign(driver=slices["cell_id"].map(d).fillna("-").astype(object))


def hatch(color: str, stripes: int = 6, gap: str = "#ffffff") -> dict:
    """A Vega linear gradient with hard stops: diagonal stripes of ``color`` and ``gap`` (reads as hatching)."""
    stops = []
    for i in range(stripes):
        a, m, b = i / stripes, (i + 0.6) / stripes, (i + 1) / stripes
        stops += [{"offset": a, "color": color}, {"offset": m, "color": color},
                  {"offset": m, "color": gap}, {"offset": b, "color": gap}]
    return {"gradient": "linear", "x1": 0, "y1": 0, "x2": 1, "y2": 1, "stops": stops}


def overview_chart(slices: pd.DataFrame, grid: int, selected: list[int] | None = None, size: int | None = None,
                   param: str = "cell", height: int = MAP_HEIGHT) -> alt.Chart:
    """Pie glyphs at cell centres (x, y in [0, 1]) with a click selection ``param`` on ``cell_id``.

    ``size=None``: the chart is as wide as its container (``st.vega_lite_chart(..., width="stretch")``) and
    ``height`` px high (less for a map wider than high); the map is centred and scaled to the largest size that
    fits, cells stay square and the pies grow with it (Vega expressions on the chart's ``width`` / ``height``).
    ``size`` (px): a fixed
    chart whose longer side is ``size``. ``selected`` (cell ids) is the selection's initial value, so a cell
    picked earlier is highlighted (thick outline) when the page is drawn again. Rendered as SVG (each slice
    is a ``<path>`` whose ``aria-label`` names its ``cell_id``). The largest pie stays inside its cell.
    """
    x_lo, x_hi, y_lo, y_hi = _map_extent(slices, grid)
    span_x, span_y = x_hi - x_lo, y_hi - y_lo
    sel = alt.selection_point(
        name=param, fields=["cell_id"], on="click", clear="dblclick",
        value=[{"cell_id": int(c)} for c in selected] if selected else alt.Undefined,
    )
    params: list = [sel]
    width: int | str  # px, or "container": as wide as the element
    x_dom: alt.ExprRef | list[float]
    y_dom: alt.ExprRef | list[float]
    max_r: alt.ExprRef | float
    if size is None:  # px per map unit from the drawn size: the same map fills any container
        unit = alt.param(name=f"{param}_unit", expr=f"max(1, min(width / {span_x:.6f}, height / {span_y:.6f}))")
        params.append(unit)
        xm, ym, u = (x_lo + x_hi) / 2, (y_lo + y_hi) / 2, unit.name
        x_dom = alt.ExprRef(f"[{xm:.6f} - width / {u} / 2, {xm:.6f} + width / {u} / 2]")
        y_dom = alt.ExprRef(f"[{ym:.6f} - height / {u} / 2, {ym:.6f} + height / {u} / 2]")
        max_r = alt.ExprRef(f"max(3, 0.48 * {u} / {max(grid, 1)})")
        width, height = "container", round(height * min(max(span_y / span_x, 0.6), 1.0))  # a wide map: less
    else:
        unit_px = size / max(span_x, span_y)  # px per map unit; cells stay square
        width, height = round(span_x * unit_px), round(span_y * unit_px)
        x_dom, y_dom, max_r = [x_lo, x_hi], [y_lo, y_hi], max(3.0, 0.48 * unit_px / max(grid, 1))
    chart = (
        alt.Chart(slices)
        .mark_arc(cursor="pointer")
        .encode(
            x=alt.X("x:Q", scale=alt.Scale(domain=x_dom, nice=False, zero=False), axis=None),
            y=alt.Y("y:Q", scale=alt.Scale(domain=y_dom, nice=False, zero=False), axis=None),
            theta=alt.Theta("theta:Q", scale=None),
            theta2=alt.Theta2("theta2:Q"),
            radius=alt.Radius("n:Q", scale=alt.Scale(type="sqrt", zero=True, range=[1.5, max_r])),
            color=alt.Color("category:N", scale=alt.Scale(domain=CATEGORIES, range=COLORS), legend=None),
            fill=_wrong_hatched(),
            opacity=alt.Opacity("mean_conf:Q", scale=alt.Scale(domain=[0, 1], range=[0.35, 1.0]),
                                legend=None),
            order=alt.Order("cat_order:Q"),
            stroke=alt.condition(sel, alt.value("#111111"), alt.value("white"), empty=False),
            strokeWidth=alt.condition(sel, alt.value(2.0), alt.value(0.4), empty=False),
            tooltip=_tooltip("driver" in slices.columns),
        )
        .add_params(*params)
        .properties(width=width, height=height, usermeta={"embedOptions": {"renderer": "svg", "actions": False}},
                    autosize=alt.AutoSizeParams(type="fit", contains="padding") if size is None
                    else alt.AutoSizeParams(type="pad"))
        .configure_view(strokeWidth=0)
    )
    return chart


def with_selection(spec: dict, selected: list[int] | tuple[int, ...], param: str = "cell") -> dict:
    """A copy of the Vega-Lite dict ``spec`` whose selection ``param`` starts with the cells ``selected`` (no
    value when empty): what ``overview_chart(..., selected)`` gives, without building the chart again per click.
    The selection is looked for in the top-level and the layers' ``params``; ``KeyError`` when none is found."""
    value = [{"cell_id": int(c)} for c in selected]
    found = False

    def fixed(params: list[dict]) -> list[dict]:
        nonlocal found
        out = []
        for p in params:
            if p.get("name") == param and "select" in p:
                found = True
                p = {k: v for k, v in p.items() if k != "value"} | ({"value": value} if value else {})
            out.append(p)
        return out

    new = dict(spec)
    if "params" in new:
        new["params"] = fixed(new["params"])
    if "layer" in new:
        new["layer"] = [{**layer, "params": fixed(layer["params"])} if "params" in layer else layer
                        for layer in new["layer"]]
    if not found:
        raise KeyError(f"no selection parameter {param!r} in this spec")
    return new


def _map_extent(slices: pd.DataFrame, grid: int) -> tuple[float, float, float, float]:
    """``(x_lo, x_hi, y_lo, y_hi)``: the non-empty cells' centres plus half a cell on each side."""
    half = 0.5 / max(grid, 1)
    if not len(slices):
        return 0.0, 1.0, 0.0, 1.0
    return (float(slices["x"].min()) - half, float(slices["x"].max()) + half,
            float(slices["y"].min()) - half, float(slices["y"].max()) + half)


def _tooltip(with_driver: bool = False) -> list:
    """The cell's tooltip; ``with_driver``: also the dimension pushing it most (``cell_drivers``)."""
    driver = [alt.Tooltip("driver:N", title="pushes most")] if with_driver else []
    return [
        alt.Tooltip("cell_id:Q", title="cell"),
        alt.Tooltip("n:Q", title="images"),
        alt.Tooltip("counts:N", title="counts"),
        alt.Tooltip("accuracy_text:N", title="accuracy"),  # the text the selected-cell panel shows (percent)
        alt.Tooltip("mean_conf:Q", title="mean confidence", format=".2f"),
        alt.Tooltip("share_fake:Q", title="share fake", format=".0%"),
        alt.Tooltip("dominant_generator:N", title="dominant generator"),
    ] + driver


def _wrong_hatched() -> dict:
    """Fill: the category colour, hatched (pale stripes) for the wrongly predicted slices."""
    conds = [{"test": f"datum.category === '{CATEGORIES[i]}'", "value": hatch(COLORS[i - 1])} for i in (1, 3)]
    return {"condition": conds, "field": "category", "type": "nominal",
            "scale": {"domain": CATEGORIES, "range": COLORS}, "legend": None}


def legend_svg() -> str:
    """The overview's legend as inline SVG: the five slice kinds (wrong ones hatched, as in the pies) and
    the opacity ramp of mean confidence."""
    defs = "".join(
        f'<pattern id="h{i}" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<rect width="3" height="5" fill="{COLORS[i - 1]}"/><rect x="3" width="2" height="5" fill="white"/></pattern>'
        for i in (1, 3))
    items, x = [], 8
    for i, cat in enumerate(CATEGORIES):
        fill = f"url(#h{i})" if i in (1, 3) else COLORS[i]
        items.append(f'<circle cx="{x}" cy="10" r="7" fill="{fill}"/>'
                     f'<text x="{x + 11}" y="14" font-size="12">{cat}</text>')
        x += 24 + 7 * len(cat)
    ramp = "".join(f'<circle cx="{8 + 20 * k}" cy="34" r="7" fill="{COLORS[0]}" opacity="{0.35 + 0.65 * k / 4:.2f}"/>'
                   for k in range(5))
    ramp += '<text x="100" y="38" font-size="12">mean confidence 0 → 1 (opacity) · area = number of images</text>'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{max(x, 560)}" height="46" '
            f'font-family="sans-serif" fill="#333"><defs>{defs}</defs>{"".join(items)}{ramp}</svg>')


def overview_caption(by_generator: bool = False) -> str:
    """The line above the map: what position, area, colour, hatching and opacity mean (as the legend shows)."""
    colours = ("slices = the generator head's guess for images the detector calls fake, blue = predicted real; "
               if by_generator else
               "blue = real, orange = fake, grey = unlabelled; solid = predicted right, hatched = predicted wrong; ")
    return ("One pie per cell of similar images (position: 2-D map of the 16 dimensions). Area = number of "
            f"images; {colours}opacity = mean confidence. Click a pie to select its cell, shift-click to add, "
            "double-click to clear.")


def grid_choices(current: int) -> list[int]:
    """The grid slider's options: GRID_MIN, then the even sizes up to 60, and ``current`` (a bundle's own grid)."""
    return sorted(set(range(GRID_MIN, 61, 2)) | {int(current)})


def boundary_text(row) -> str:
    """One decision-boundary cell in words (a row of ``boundary_cells``): images, share fake, accuracy,
    mean confidence; "n/a" where a cell has no labelled image."""
    share = "n/a" if pd.isna(row.share_fake) else f"{row.share_fake:.0%}"
    acc = "n/a" if pd.isna(row.accuracy) else f"{row.accuracy:.0%}"
    conf = "n/a" if pd.isna(row.mean_conf) else f"{row.mean_conf:.2f}"
    return f"{row.n} images · {share} fake · accuracy {acc} · confidence {conf}"


def selected_summary(cells: pd.DataFrame, selected: list[int]) -> dict:
    """Totals over the ``selected`` cells of a cell table: n, the four counts, accuracy, mean confidence."""
    part = cells[cells["cell"].isin(selected)]
    n = int(part["n"].sum())
    out: dict[str, Any] = {"cells": len(part), "n": n}
    for c in COUNT_COLUMNS:
        out[c] = int(part[c].sum())
    labelled = n - out["n_unlabelled"]
    out["accuracy"] = (out["n_real_ok"] + out["n_fake_ok"]) / labelled if labelled else float("nan")
    w = part["n"].to_numpy(np.float64)
    mc = part["mean_conf"].to_numpy(np.float64)
    ok = np.isfinite(mc)
    out["mean_conf"] = float((mc[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() and w[ok].sum() else float("nan")
    gens = part["dominant_generator"].dropna().astype(str)
    out["dominant_generator"] = gens.mode().iloc[0] if len(gens) else None
    return out


def boundary_cells(cells: pd.DataFrame, k: int = 5, min_n: int = 3) -> pd.DataFrame:
    """The ``k`` cells (with at least ``min_n`` images) nearest the decision boundary: mixed labels and
    low confidence first (score = mean_conf - min(share_fake, 1 - share_fake)). Useful starting points."""
    c = cells[cells["n"] >= min_n].copy()
    if c.empty:
        return c
    share = c["share_fake"].fillna(0.5)
    c["boundary_score"] = c["mean_conf"].fillna(0) - np.minimum(share, 1 - share)
    return c.sort_values(["boundary_score", "n"], ascending=[True, False]).head(k)


def selected_members(images: pd.DataFrame, selected: list[int], filters: Filters) -> pd.DataFrame:
    """The images of the ``selected`` cells that pass ``filters`` (table order kept)."""
    members = images[images["cell"].isin(selected)]
    return members[filter_mask(members, filters)] if filters.active() else members


@dataclass(frozen=True)
class SelectionFacts:
    """What the overview's panel says of the selected cells: ``summary`` (``selected_summary``), the ids of
    their images passing the filters (``member_ids``, table order), and the dimension that pushes them
    hardest in words (``driver``; None without the head's weights or without members)."""

    summary: dict
    member_ids: tuple[str, ...]
    driver: str | None


def selection_facts(images: pd.DataFrame, cells: pd.DataFrame, selected: list[int], filters: Filters,
                    w2: np.ndarray | None, names: Sequence[str] = ()) -> SelectionFacts:
    """``SelectionFacts`` of the ``selected`` cells of ``cells`` (the filtered cell table) over ``images`` (the
    gridded image table, ``z0..z15`` and ``p_fake``); ``w2`` ``[16]``: the head's weights."""
    members = selected_members(images, selected, filters)
    driver = selection_driver(members, w2, names) if w2 is not None else None
    return SelectionFacts(selected_summary(cells, selected), tuple(members["image_id"].astype(str)), driver)


def boundary_list(cells: pd.DataFrame, k: int = 5) -> list[tuple[int, str]]:
    """``boundary_cells`` of a cell table as (cell, ``boundary_text``) pairs, nearest the boundary first."""
    b = boundary_cells(cells, k=k)
    return [(int(c), boundary_text(r)) for c, r in zip(b["cell"].tolist(), b.itertuples())]
