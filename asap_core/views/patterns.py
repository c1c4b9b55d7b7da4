"""Pattern view (ASAP; docs/design.md §3.12): saved patterns, their impact and ranking, charts, export as one zip.

Plain functions over ``asap_core.analyses.patterns``; no Streamlit. Impact = mean drop of p_fake when the pattern's
regions are painted out, against an area-matched random mask (``patterns.pattern_impact``).
"""
from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from ..analyses.patterns import Pattern, contact_sheet, export_patterns
from ..storage.schema import DECISION_THRESHOLD
from .grid import image_names

N_RANDOM = 3
SEED = 0
RANK_COLUMNS = ["rank", "name", "n_images", "impact", "random_impact", "excess", "excess_se", "n_flipped",
                "n_flipped_random", "mean_area", "source", "note"]


def regions_text(p: Pattern) -> str:
    """How a pattern's regions are defined, in words."""
    if p.masks is not None:
        return f"stored regions ({p.side}x{p.side} patches)"
    return f"top {p.fraction:.0%} of patches by fake-logit relevance"


def pattern_frame(patterns: Sequence[Pattern]) -> pd.DataFrame:
    """One row per saved pattern: ``name, source, n_images, regions, note, created``."""
    return pd.DataFrame([{"name": p.name, "source": p.source, "n_images": len(p.image_ids),
                          "regions": regions_text(p), "note": p.note, "created": p.created} for p in patterns],
                        columns=["name", "source", "n_images", "regions", "note", "created"])


def ids_needing_maps(patterns: Sequence[Pattern]) -> list[str]:
    """Image ids whose relevance maps define regions (selection patterns without stored masks)."""
    out: list[str] = []
    for p in patterns:
        if p.masks is None:
            out += p.image_ids
    return list(dict.fromkeys(out))


#: what a visitor reads for each column of the ranking (no field names such as ``excess_se``)
RANK_TITLES = {"rank": "rank", "name": "pattern", "n_images": "images", "impact": "drop when masked",
               "random_impact": "drop, random mask", "excess": "extra drop", "excess_se": "± (std. error)",
               "n_flipped": "verdicts flipped", "n_flipped_random": "flipped by random mask",
               "mean_area": "share of image masked", "source": "made from", "note": "note"}
#: the titles of the signed p_fake columns (shown as +0.123)
SIGNED_TITLES = tuple(RANK_TITLES[c] for c in ("impact", "random_impact", "excess", "excess_se"))


def ranking_display(ranked: pd.DataFrame) -> pd.DataFrame:
    """The columns of a ``rank_patterns`` table worth showing, in a readable order, titled in words
    (:data:`RANK_TITLES`)."""
    shown = ranked[[c for c in RANK_COLUMNS if c in ranked.columns]].reset_index(drop=True)
    return shown.rename(columns=RANK_TITLES)


def impact_chart(ranked: pd.DataFrame) -> alt.Chart:
    """Horizontal bars per pattern (best first): mean drop of p_fake with the pattern's regions masked and
    with an area-matched random mask; the gap is the pattern's excess impact."""
    order = ranked["name"].tolist()
    long = pd.concat([
        pd.DataFrame({"name": ranked["name"], "mask": "pattern regions", "drop": ranked["impact"],
                      "flipped": ranked["n_flipped"].astype(float)}),
        pd.DataFrame({"name": ranked["name"], "mask": "random, same area", "drop": ranked["random_impact"],
                      "flipped": ranked["n_flipped_random"].astype(float)}),
    ], ignore_index=True)
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("name:N", sort=order, title=None),
        yOffset=alt.YOffset("mask:N", sort=["pattern regions", "random, same area"]),
        x=alt.X("drop:Q", title="mean drop of p_fake when masked (below 0: it rises)"),
        color=alt.Color("mask:N", scale=alt.Scale(domain=["pattern regions", "random, same area"],
                                                  range=["#ff7f0e", "#9e9e9e"]),
                        legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["name", "mask", alt.Tooltip("drop:Q", format="+.3f"), alt.Tooltip("flipped:Q", title="flipped")],
    ).properties(width=460, height=alt.Step(14))


def per_image_chart(table: pd.DataFrame, images: pd.DataFrame | None = None) -> alt.LayerChart:
    """Per image of one pattern: p_fake of the original (x) against p_fake with the regions masked (y);
    below the diagonal = the regions pushed towards fake; dashed lines at 0.5 (flips cross them). The
    tooltip names each image by its file (``images``: the bundle's image table; else the id's start)."""
    names = image_names(images, table["image_id"]) if images is not None else table["image_id"].str[:10]
    data = table.assign(label=table["label"].fillna("unlabelled"), file=names)
    diag = alt.Chart(pd.DataFrame({"a": [0.0, 1.0]})).mark_line(color="#bbb").encode(x="a:Q", y="a:Q")
    half = pd.DataFrame({"v": [DECISION_THRESHOLD]})
    hline = alt.Chart(half).mark_rule(strokeDash=[4, 3], color="#999").encode(y="v:Q")
    vline = alt.Chart(half).mark_rule(strokeDash=[4, 3], color="#999").encode(x="v:Q")
    pts = alt.Chart(data).mark_circle(size=60, opacity=0.85).encode(
        x=alt.X("p_fake:Q", title="p_fake (original)", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("p_fake_masked:Q", title="p_fake (pattern masked)", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("label:N", scale=alt.Scale(domain=["real", "fake", "unlabelled"],
                                                   range=["#1f77b4", "#ff7f0e", "#9e9e9e"])),
        shape=alt.Shape("flipped:N", title="flipped"),
        tooltip=["file", "label", alt.Tooltip("p_fake:Q", format=".3f"), alt.Tooltip("p_fake_masked:Q", format=".3f"),
                 alt.Tooltip("p_fake_random:Q", format=".3f", title="p_fake (random mask)"), "area", "flipped"])
    return (diag + hline + vline + pts).properties(width=300, height=300)


def impact_line(res: dict) -> str:
    """One line summarising an impact result of ``pattern_impact``."""
    se = res.get("excess_se")
    se_txt = "" if se is None or not np.isfinite(se) else f" ± {se:.3f}"
    return (f"Masking the regions {change_words(res['impact'])} on average (a random mask of the same area: "
            f"{change_words(res['random_impact'])}; excess {res['excess']:+.3f}{se_txt}); {res['n_flipped']} of "
            f"{res['n_images']} predictions flip (random: {res['n_flipped_random']:.1f}).")


def change_words(drop: float) -> str:
    """A mean drop of p_fake in words: ``"lowers p_fake by 0.243"``, ``"raises p_fake by 0.012"``,
    ``"leaves p_fake unchanged"`` (below 0.0005)."""
    if not np.isfinite(drop) or abs(drop) < 5e-4:
        return "leaves p_fake unchanged" if np.isfinite(drop) else "changes p_fake by n/a"
    return f"{'lowers' if drop > 0 else 'raises'} p_fake by {abs(drop):.3f}"


def contact_sheet_png(bundle, pattern: Pattern, max_images: int = 48) -> bytes:
    """The pattern's contact sheet (``patterns.contact_sheet``) as PNG bytes."""
    buf = io.BytesIO()
    contact_sheet(bundle, pattern, max_images=max_images).save(buf, "PNG")
    return buf.getvalue()


def export_zip(bundle, patterns: Sequence[Pattern], with_impact: bool, encoder=None, n_random: int = N_RANDOM,
               seed: int = SEED, method: str = "last-block") -> bytes:
    """``export_patterns`` (patterns.json, patterns.csv, pattern_images.csv with impact, one PNG contact
    sheet per pattern) written to a temporary folder and returned as the bytes of one zip file."""
    with tempfile.TemporaryDirectory(prefix="asap-patterns-") as tmp:
        written = export_patterns(bundle, patterns, tmp, with_impact=with_impact, encoder=encoder,
                                  n_random=n_random, random_state=seed, method=method)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in written:
                zf.write(f, f"patterns/{Path(f).name}")
        return buf.getvalue()


def unique_name(base: str, existing: Sequence[str]) -> str:
    """``base``, or ``base 2``, ``base 3`` ... whichever is not taken yet."""
    taken = set(existing)
    if base not in taken:
        return base
    k = 2
    while f"{base} {k}" in taken:
        k += 1
    return f"{base} {k}"


__all__ = ["N_RANDOM", "SEED", "change_words", "contact_sheet_png", "export_zip", "ids_needing_maps",
           "impact_chart", "impact_line", "pattern_frame", "per_image_chart", "ranking_display", "regions_text",
           "unique_name"]
