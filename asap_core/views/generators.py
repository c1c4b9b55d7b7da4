"""Generator attribution views (seed 003): the confusion-matrix heat map, per-generator recall / precision,
and the overview's pies coloured by *predicted* generator.

Plain functions over ``asap_core.analyses.attribution`` results; no Streamlit.
"""
from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from ..analyses.attribution import attribution_accuracy, confusion_matrix, validation_mask
from . import overview as ov

REAL_COLOR = ov.COLORS[0]  # the overview's blue: predicted real
#: generator colours (Tableau 10 without its blue, then Tableau 20's lighter shades)
PALETTE: list[str] = ["#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                      "#17becf", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
                      "#9edae5", "#c7c7c7"]
COLOR_BY = ("label", "predicted generator")


def generator_colors(names: list[str]) -> tuple[list[str], list[str]]:
    """``(domain, range)``: ``"real"`` (the overview's blue) then each generator name with its colour."""
    cols = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    return ["real", *names], [REAL_COLOR, *cols]


# ----------------------------------------------------------------------------- confusion matrix


def confusion_long(cm: pd.DataFrame) -> pd.DataFrame:
    """A (count) confusion matrix -> long table ``truth, predicted, count, row_total, fraction`` (row share)."""
    tot = cm.sum(axis=1)
    rows = []
    for t in cm.index:
        for p in cm.columns:
            n = cm.loc[t, p]
            rows.append({"truth": str(t), "predicted": str(p), "count": int(n), "row_total": int(tot.loc[t]),
                         "fraction": float(n / tot.loc[t]) if tot.loc[t] else 0.0})
    return pd.DataFrame(rows, columns=["truth", "predicted", "count", "row_total", "fraction"])


def confusion_chart(cm: pd.DataFrame, normalize: bool = True, cell: int = 40) -> alt.LayerChart:
    """Heat map of a (count) confusion matrix: rows true generator, columns predicted; colour = row share
    (``normalize``) or count; each square labelled with its count."""
    data = confusion_long(cm)
    order = [str(c) for c in cm.columns]
    rows = [str(r) for r in cm.index]
    value = "fraction" if normalize else "count"
    base = alt.Chart(data).encode(
        x=alt.X("predicted:N", sort=order, title="predicted generator", axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("truth:N", sort=rows, title="true generator"))
    heat = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", title="row share" if normalize else "images",
                        scale=alt.Scale(scheme="blues", domain=[0, 1] if normalize else alt.Undefined),
                        legend=alt.Legend(gradientLength=max(240, cell * len(rows) - 20),
                                          format=".0%" if normalize else "d")),
        tooltip=[alt.Tooltip("truth:N", title="true"), "predicted", "count",
                 alt.Tooltip("fraction:Q", format=".0%", title="row share")])
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("count:Q"),
        color=alt.condition(f"datum.{value} > {0.5 if normalize else max(1, data['count'].max()) / 2}",
                            alt.value("white"), alt.value("#333")))
    return (heat + text).properties(width=max(cell * len(order), 280), height=max(cell * len(rows), 280))


def per_generator_table(cm: pd.DataFrame) -> pd.DataFrame:
    """One row per true generator of a square count matrix: ``generator, n, correct, recall, precision,
    most_confused_with`` (the most frequent wrong prediction, None when there is none)."""
    names = [str(c) for c in cm.columns]
    m = cm.reindex(index=cm.columns, fill_value=0).to_numpy(np.int64)
    n = m.sum(axis=1)
    diag = np.diag(m)
    col = m.sum(axis=0)
    off = m.copy()
    np.fill_diagonal(off, 0)
    confused = [names[int(off[i].argmax())] if off[i].max() > 0 else None for i in range(len(names))]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(n > 0, diag / np.maximum(n, 1), np.nan)
        precision = np.where(col > 0, diag / np.maximum(col, 1), np.nan)
    return pd.DataFrame({"generator": names, "n": n, "correct": diag, "recall": recall, "precision": precision,
                         "most_confused_with": confused})


#: what a visitor reads for the columns of ``per_generator_table``
GENERATOR_TITLES = {"generator": "generator", "n": "images", "correct": "named right", "recall": "recall",
                    "precision": "precision", "most_confused_with": "most often taken for"}
NEVER_CONFUSED = "never confused"


def per_generator_display(table: pd.DataFrame) -> pd.DataFrame:
    """``per_generator_table`` as a visitor reads it: columns titled in words (:data:`GENERATOR_TITLES`), and
    "never confused" where no image of a generator was taken for another (never "None")."""
    out = table.assign(most_confused_with=table["most_confused_with"].astype(object)
                       .where(table["most_confused_with"].notna(), NEVER_CONFUSED))
    return out.rename(columns=GENERATOR_TITLES)


def accuracy_line(fake_cm: pd.DataFrame, n_generators: int, scope: str) -> str:
    """One line on a fakes-only count confusion matrix (``confusion_tables``' second): accuracy, images counted,
    chance level."""
    acc, n = attribution_accuracy(fake_cm), int(fake_cm.to_numpy().sum())
    if n == 0 or math.isnan(acc):
        return f"No {scope} fake with a known generator to count."
    return (f"Accuracy {acc:.1%} on {n:,} {scope} fakes · chance {1 / max(n_generators, 1):.1%} "
            f"({n_generators} generators)")


# ----------------------------------------------------------------------------- overview by generator


def attribution_cells(images: pd.DataFrame, attribution: pd.Series, grid: int, filters: ov.Filters) -> pd.DataFrame:
    """Per cell and attribution category (``"real"`` or a predicted generator): ``cell, category, count``.

    ``images`` already binned on ``grid`` (column ``cell``); ``attribution`` indexed by image_id (the
    ``attribution`` column of ``generator_predictions``); only images passing ``filters`` count.
    """
    keep = ov.filter_mask(images, filters) if filters.active() else np.ones(len(images), dtype=bool)
    part = images.loc[keep, ["image_id", "cell"]]
    cat = attribution.reindex(part["image_id"]).fillna("real").to_numpy(dtype=object)
    return (pd.DataFrame({"cell": part["cell"].to_numpy(np.int64), "category": cat})
            .groupby(["cell", "category"], sort=True).size().rename("count").reset_index())


def generator_slices(cells: pd.DataFrame, counts: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Pie slices (the columns of ``overview.pie_slices``) with one slice per attribution category of each
    cell, in the order ``["real", *names]``; ``counts`` from ``attribution_cells``, ``cells`` the matching
    filtered cell table (positions, confidence, tooltip fields)."""
    domain, _ = generator_colors(names)
    order = {c: i for i, c in enumerate(domain)}
    base = ov.pie_slices(cells).drop_duplicates("cell_id").set_index("cell_id")
    c = counts[counts["cell"].isin(base.index)].copy()
    c["cat_order"] = c["category"].map(order).fillna(len(domain)).astype(int)
    c = c.sort_values(["cell", "cat_order"], kind="stable")
    n = c.groupby("cell")["count"].transform("sum").to_numpy(np.float64)
    end = c.groupby("cell")["count"].cumsum().to_numpy(np.float64)
    start = end - c["count"].to_numpy(np.float64)
    summary = (c.assign(txt=c["category"] + " " + c["count"].astype(str))
               .groupby("cell")["txt"].agg(" · ".join))
    b = base.loc[c["cell"].to_numpy()]
    out = pd.DataFrame({
        "cell_id": c["cell"].to_numpy(np.int64),
        "x": b["x"].to_numpy(np.float64), "y": b["y"].to_numpy(np.float64),
        "category": c["category"].to_numpy(dtype=object), "cat_order": c["cat_order"].to_numpy(np.int64),
        "count": c["count"].to_numpy(np.int64), "n": n.astype(np.int64),
        "theta": 2 * math.pi * start / np.maximum(n, 1), "theta2": 2 * math.pi * end / np.maximum(n, 1),
        "mean_conf": b["mean_conf"].to_numpy(np.float64), "accuracy": b["accuracy"].to_numpy(np.float64),
        "accuracy_text": b["accuracy_text"].to_numpy(dtype=object),
        "dominant_generator": b["dominant_generator"].to_numpy(dtype=object),
        "share_fake": b["share_fake"].to_numpy(np.float64),
        "counts": summary.reindex(c["cell"].to_numpy()).to_numpy(dtype=object),
    })
    return out[out["count"] > 0].reset_index(drop=True)


def generator_overview_chart(slices: pd.DataFrame, grid: int, names: list[str],
                             selected: list[int] | None = None) -> alt.Chart:
    """The overview's pie chart (same geometry, click selection ``cell``) with slices coloured by
    predicted generator (blue: the detector says real)."""
    domain, rng = generator_colors(names)
    scale = alt.Scale(domain=domain, range=rng)
    chart = ov.overview_chart(slices, grid, selected)
    tooltip = [alt.Tooltip("cell_id:Q", title="cell"), alt.Tooltip("n:Q", title="images"),
               alt.Tooltip("counts:N", title="predicted"), alt.Tooltip("category:N", title="this slice"),
               alt.Tooltip("mean_conf:Q", title="mean confidence", format=".2f"),
               alt.Tooltip("dominant_generator:N", title="dominant true generator")]
    return chart.encode(color=alt.Color("category:N", scale=scale, legend=None),
                        fill=alt.Fill("category:N", scale=scale, legend=None), tooltip=tooltip)


def generator_legend_svg(names: list[str]) -> str:
    """Inline SVG legend of the generator colouring (wraps after ~6 entries per line)."""
    domain, rng = generator_colors(names)
    items, x, y, width = [], 8, 12, 640
    for cat, col in zip(domain, rng):
        label = "predicted real" if cat == "real" else cat
        w = 24 + 7 * len(label)
        if x + w > width:
            x, y = 8, y + 20
        items.append(f'<circle cx="{x}" cy="{y - 2}" r="7" fill="{col}"/>'
                     f'<text x="{x + 11}" y="{y + 2}" font-size="12">{_esc(label)}</text>')
        x += w
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + 12}" '
            f'font-family="sans-serif" fill="#333">{"".join(items)}</svg>')


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def generator_overview_spec(images: pd.DataFrame, predictions: pd.DataFrame, names: list[str], grid: int,
                            filters: ov.Filters, selected: list[int]) -> dict:
    """Vega-Lite spec of the overview with slices coloured by predicted generator; ``images`` binned on
    ``grid``, ``predictions`` from ``attribution.generator_predictions``."""
    counts = attribution_cells(images, predictions.set_index("image_id")["attribution"], grid, filters)
    slices = generator_slices(ov.filtered_cells(images, grid, filters), counts, names)
    return generator_overview_chart(slices, grid, names, selected).to_dict()


def confusion_tables(bundle, held_out_only: bool, with_real: bool) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """(count confusion matrix as shown, its fakes-only part, whether the held-out split was recovered).

    ``held_out_only`` counts only images the distiller did not train on, when its split can be recovered
    (else every fake); ``with_real`` adds a "real" row and column."""
    val_ok = validation_mask(bundle) is not None
    cm = confusion_matrix(bundle, only_fakes=not with_real, held_out_only=held_out_only and val_ok)
    fakes = cm.drop(index="real", columns="real", errors="ignore") if with_real else cm
    return cm, fakes, val_ok


def attribution_caption(predictions: pd.DataFrame, image_ids: list[str]) -> str:
    """``"predicted: gan 12 · real 3"``: the predicted generators of ``image_ids``, most common first."""
    att = predictions.set_index("image_id")["attribution"].reindex(image_ids).value_counts()
    return "predicted: " + " · ".join(f"{k} {v}" for k, v in att.items())


__all__ = ["COLOR_BY", "PALETTE", "accuracy_line", "attribution_caption", "attribution_cells", "confusion_chart",
           "confusion_long", "confusion_tables", "generator_colors", "generator_legend_svg",
           "generator_overview_chart", "generator_overview_spec", "generator_slices", "per_generator_table"]
