"""Robustness / laundering view: which images, which settings, and how p_fake moves (plain functions).

A setting is ``(jpeg_quality or None, scale)``: resize by ``scale``, then JPEG at ``jpeg_quality``
(``laundering.launder``). The page's sliders give one setting; "each step alone" adds JPEG only and resize
only, so the user sees which step moves the detector.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import altair as alt
import numpy as np
import pandas as pd

from ..analyses.laundering import laundering_summary, laundering_table
from ..method.relevance import overlay
from ..storage.schema import DECISION_THRESHOLD, FAKE_LOGIT
from .grid import image_names

MAX_IMAGES = 64
Setting = tuple[int | None, float]  # (JPEG quality or None: no JPEG step, resize factor)


def choose_images(images: pd.DataFrame, picked: Sequence[str], cells: Sequence[int], n_sample: int,
                  seed: int = 0) -> tuple[list[str], str]:
    """``(image ids, where they come from)``: the picked images, else the selected cells' images, else a
    seeded sample of ``n_sample`` (half real, half fake where possible); at most ``MAX_IMAGES``."""
    known = set(images["image_id"])
    ids = [i for i in picked if i in known]
    if ids:
        return ids[:MAX_IMAGES], f"the {min(len(ids), MAX_IMAGES)} picked image{'s' if len(ids) != 1 else ''}"
    if cells:
        members = images.loc[images["cell"].isin(list(cells)), "image_id"].tolist()
        if members:
            shown = members[:MAX_IMAGES]
            more = f" (first {len(shown)} of {len(members)})" if len(members) > len(shown) else ""
            return shown, f"the images of the selected cell{'s' if len(cells) > 1 else ''}{more}"
    n = max(1, min(int(n_sample), MAX_IMAGES, len(images)))
    rng = np.random.default_rng(seed)
    groups = [g["image_id"].to_numpy() for _, g in images.groupby(images["label"].fillna("unlabelled"), sort=True)]
    per = [rng.permutation(g).tolist() for g in groups]
    out: list[str] = []
    while len(out) < n and any(per):  # round-robin over the labels: a balanced sample
        for g in per:
            if g and len(out) < n:
                out.append(g.pop(0))
    return out, f"a random sample of {len(out)} images (no image or cell selected)"


def settings_for(quality: int, scale: float, each_step: bool) -> list[Setting]:
    """The settings to run: ``(quality, scale)`` and, with ``each_step``, JPEG only and resize only."""
    out: list[Setting] = [(int(quality), float(scale))]
    if each_step:
        out += [(int(quality), 1.0), (None, float(scale))]
    return list(dict.fromkeys(out))


def setting_label(quality, scale: float) -> str:
    """``"JPEG q75 · resize 0.50"`` and the like (``"no JPEG"``, ``"no resize"`` when a step is off)."""
    q = "no JPEG" if quality is None or pd.isna(quality) else f"JPEG q{int(quality)}"
    s = "no resize" if float(scale) == 1.0 else f"resize {float(scale):.2f}"
    return f"{q} · {s}"


def run_settings(bundle, ids: list[str], settings: Sequence[Setting], encoder=None, with_maps: bool = False,
                 method: str = "last-block", progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """``laundering_table`` per setting (each cached in the bundle on its own), concatenated: one row per
    image and setting, plus ``setting`` (label) and ``setting_order`` columns. ``progress(done, total)``
    counts images over all settings."""
    frames = []
    n = len(ids)
    for k, (q, s) in enumerate(settings):
        prog = (lambda d, t, k=k: progress(k * n + d, len(settings) * n)) if progress else None
        t = laundering_table(bundle, ids, qualities=[q], scales=[s], encoder=encoder, with_maps=with_maps,
                             method=method, progress=prog)
        frames.append(t.assign(setting=setting_label(q, s), setting_order=k))
    return pd.concat(frames, ignore_index=True)


def summary_frame(table: pd.DataFrame) -> pd.DataFrame:
    """``laundering_summary`` per setting with a ``setting`` label, in the order the settings were run."""
    summ = laundering_summary(table.drop(columns=["setting", "setting_order"], errors="ignore"))
    summ.insert(0, "setting", [setting_label(q, s) for q, s in zip(summ["quality"], summ["scale"])])
    order = table.drop_duplicates("setting").set_index("setting")["setting_order"]
    return summ.assign(_o=summ["setting"].map(order)).sort_values("_o").drop(columns="_o").reset_index(drop=True)


def shift_chart(table: pd.DataFrame, images: pd.DataFrame | None = None) -> alt.LayerChart:
    """Per image a line from p_fake of the original to p_fake after each setting (columns: settings);
    colour = label; the dashed rule at 0.5 is the decision threshold. The tooltip names each image by its
    file (``images``: the bundle's image table; else the id's start)."""
    orig = table.drop_duplicates(["image_id", "setting"]).copy()
    first = orig.drop_duplicates("image_id").assign(setting="original", setting_order=-1,
                                                    p_fake=lambda d: d["p_fake_original"])
    data = pd.concat([first, orig], ignore_index=True)
    data["label"] = data["label"].fillna("unlabelled")
    data["file"] = _names(data["image_id"], images)
    order = ["original", *table.sort_values("setting_order")["setting"].drop_duplicates().tolist()]
    lines = alt.Chart(data).mark_line(point=True, opacity=0.6).encode(
        x=alt.X("setting:N", sort=order, title=None,
                axis=alt.Axis(labelAngle=0, labelExpr="split(datum.label, ' · ')")),
        y=alt.Y("p_fake:Q", scale=alt.Scale(domain=[0, 1]), title="p_fake"),
        detail="image_id:N",
        color=alt.Color("label:N", scale=alt.Scale(domain=["real", "fake", "unlabelled"],
                                                   range=["#1f77b4", "#ff7f0e", "#9e9e9e"])),
        tooltip=["file", "label", "setting", alt.Tooltip("p_fake:Q", format=".3f")])
    rule = alt.Chart(pd.DataFrame({"v": [DECISION_THRESHOLD]})).mark_rule(strokeDash=[4, 3], color="#999") \
        .encode(y="v:Q")
    return (rule + lines).properties(width=max(300, 130 * len(order)), height=280)


def display_table(table: pd.DataFrame, images: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per image x setting table for ``st.dataframe``: the file name (with ``images``), short ids."""
    cols = ["image_id", "label", "setting", "p_fake_original", "p_fake", "delta", "flipped"]
    if "map_corr" in table.columns:
        cols.append("map_corr")
    out = table.sort_values(["setting_order", "image_id"], kind="stable")[cols].reset_index(drop=True)
    if images is not None:
        out.insert(0, "file", _names(out["image_id"], images))
    out["image_id"] = out["image_id"].str[:10]
    return out


def image_label(images: pd.DataFrame, table: pd.DataFrame) -> Callable[[str], str]:
    """``format_func`` for an image picker: ``"file.png · fake"`` (label from ``table``; "unlabelled")."""
    labels = table.drop_duplicates("image_id").set_index("image_id")["label"]
    ids = labels.index.tolist()
    names = dict(zip(ids, image_names(images, ids)))
    return lambda i: f"{names.get(i, str(i)[:10])} · {labels.get(i) if pd.notna(labels.get(i)) else 'unlabelled'}"


def _names(ids: pd.Series, images: pd.DataFrame | None) -> list[str]:
    """File names of ``ids`` (``grid.image_names``; each distinct id once), else the ids' first 10 characters."""
    ids = ids.astype(str)
    if images is None:
        return ids.str[:10].tolist()
    uniq = ids.drop_duplicates().tolist()
    names = dict(zip(uniq, image_names(images, uniq)))
    return [names[i] for i in ids]


def view_tiles(view: dict, size: int = 160, alpha: float = 0.5) -> tuple[list, list[str]]:
    """``(images, captions)`` of one ``laundering.laundered_view``: the original and the laundered image
    (centre squares, ``size`` px, as CLIP sees them) and their fake-logit relevance overlays."""
    def sq(im):
        w, h = im.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return im.convert("RGB").crop(box).resize((size, size))

    a, b = sq(view["original"]), sq(view["laundered"])
    corr = view["map_corr"]
    corr_txt = "n/a" if corr is None or not np.isfinite(corr) else f"{corr:.2f}"
    return ([a, b, overlay(a, view["maps_original"][FAKE_LOGIT], alpha), overlay(b, view["maps"][FAKE_LOGIT], alpha)],
            [f"original · p_fake {view['p_fake_original']:.3f}", f"laundered · p_fake {view['p_fake']:.3f}",
             "fake-logit map, original", f"fake-logit map, laundered (corr {corr_txt})"])


__all__ = ["MAX_IMAGES", "choose_images", "display_table", "image_label", "run_settings", "setting_label",
           "settings_for", "shift_chart", "summary_frame", "view_tiles"]
