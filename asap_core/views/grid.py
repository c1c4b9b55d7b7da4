"""Image view (docs/design.md §3.9): a cell's images on a similarity grid.

Images of the selected cells are arranged by ``isomatch_grid`` on their z0..z15, drawn as 64 px
thumbnails (JPEG data URIs: static URLs would make every brush wait for reloads) framed red where the
prediction is wrong, green where right, grey when unlabelled. An interval brush and shift-click pick images.
"""
from __future__ import annotations

import base64
import io

import altair as alt
import numpy as np
import pandas as pd
from PIL import Image

from ..inputs.imageio import decode_thumbnail
from ..method.isomatch import isomatch_grid
from ..storage.schema import THUMB_MAX_PIXELS, Z_COLUMNS

MAX_GRID_IMAGES = 400
THUMB_PX = 64
FRAME_COLORS = {"right": "#2ca02c", "wrong": "#d62728", "unlabelled": "#9e9e9e"}


def subsample(members: pd.DataFrame, max_items: int = MAX_GRID_IMAGES, random_state: int = 0) -> pd.DataFrame:
    """At most ``max_items`` rows: a seeded random sample (table order kept) when there are more."""
    if len(members) <= max_items:
        return members
    idx = np.sort(np.random.default_rng(random_state).choice(len(members), size=max_items, replace=False))
    return members.iloc[idx]


def outcome(df: pd.DataFrame) -> np.ndarray:
    """[n] object array: "right", "wrong" or "unlabelled" (drives the frame colour)."""
    correct = df["correct"].astype("boolean")
    out = np.where(correct.fillna(False).to_numpy(dtype=bool), "right", "wrong").astype(object)
    out[correct.isna().to_numpy()] = "unlabelled"
    return out


def image_names(images: pd.DataFrame, ids) -> list[str]:
    """How legends and pickers name the images ``ids``: each file's name (``relpath``, else ``path``, without
    its folders); where two of ``ids`` share a file name, the folder-relative path (``relpath``) or the name
    and the id's first 6 characters; an id not in ``images``: its first 10 characters. Never a server
    path's folders, so a hosted explorer may show it."""
    ids = [str(i) for i in ids]
    col = "relpath" if "relpath" in images.columns else "path" if "path" in images.columns else None
    if col:  # the rows of ``ids`` first: never a copy of a whole (million-row) table
        rows = images.loc[images["image_id"].isin(ids), ["image_id", col]]
        files = rows.drop_duplicates("image_id").set_index("image_id")[col]
    else:
        files = pd.Series(dtype=object)
    rel = [str(files[i]).replace("\\", "/") if i in files.index and pd.notna(files[i]) else None for i in ids]
    base = [r.rsplit("/", 1)[-1] if r else None for r in rel]
    taken = pd.Series([b for b in base if b], dtype=object).value_counts()
    out = []
    for i, r, b in zip(ids, rel, base):
        if b is None:
            out.append(i[:10])
        elif taken.get(b, 0) < 2:
            out.append(b)
        else:
            out.append(r if col == "relpath" else f"{b} · {i[:6]}")
    return out


def grid_layout(members: pd.DataFrame, random_state: int = 0) -> tuple[pd.DataFrame, int, int]:
    """IsoMatch placement of ``members`` -> ``(layout, n_rows, n_cols)``.

    ``layout`` has one row per image: ``image_id, gx (column), gy (row, 0 = top), file, label, pred,
    p_fake, generator, outcome, cell``.
    """
    if members.empty:
        return pd.DataFrame(columns=["image_id", "gx", "gy", "file", "label", "pred", "p_fake", "generator",
                                     "outcome", "cell"]), 0, 0
    feats = members[Z_COLUMNS].to_numpy(np.float64)
    rows, cols, n_rows, n_cols = isomatch_grid(feats, random_state=random_state)
    file_col = "relpath" if "relpath" in members.columns else "path"
    layout = pd.DataFrame({
        "image_id": members["image_id"].astype(str).to_numpy(),
        "gx": cols.astype(np.int64),
        "gy": rows.astype(np.int64),
        "file": members[file_col].astype(str).to_numpy(),
        "label": members["label"].astype(object).where(members["label"].notna(), "unlabelled").to_numpy(),
        "pred": members["pred"].astype(str).to_numpy(),
        "p_fake": np.round(members["p_fake"].to_numpy(np.float64), 3),
        "generator": (members["generator"].astype(object).where(members["generator"].notna(), "-").to_numpy()
                      if "generator" in members.columns else "-"),
        "outcome": outcome(members),
        "cell": members["cell"].to_numpy(np.int64),
    })
    return layout.sort_values(["gy", "gx"], kind="stable").reset_index(drop=True), n_rows, n_cols


def tile_size(n_cols: int) -> int:
    """Grid tile edge in px for ``n_cols`` columns: big tiles for small cells, 56 px from 15 columns on."""
    for limit, px in ((5, 120), (8, 96), (14, 72)):
        if n_cols <= limit:
            return px
    return 56


def thumb_px(tile: int) -> int:
    """Thumbnail edge drawn inside a ``tile`` (the rest is the coloured frame)."""
    return int(round(tile * 0.86))


def jpeg_bytes(im: Image.Image, quality: int = 90) -> bytes:
    """``im`` encoded as JPEG (RGB). Images handed to ``st.image`` as JPEG bytes no wider than the width they
    are shown at are served as they are; a PIL image is encoded, and re-encoded smaller, on every rerun."""
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def thumb_jpeg(jpeg: bytes | None, size: int = THUMB_PX, quality: int = 80) -> bytes:
    """A JPEG thumbnail with longest side at most ``size`` px; a grey square when ``jpeg`` is None, unreadable
    or far over a thumbnail's pixels (``schema.THUMB_MAX_PIXELS``, from its header)."""
    im = decode_thumbnail(jpeg, size, THUMB_MAX_PIXELS)
    im.thumbnail((size, size), Image.Resampling.BILINEAR)
    return jpeg_bytes(im, quality)


def jpeg_uri(jpeg: bytes) -> str:
    """JPEG bytes as a ``data:`` URI. ``st.image`` sends such a string inside the page's own message, where an
    image file is registered, hashed and fetched by one more HTTP request per image (54 on an attention page)."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def thumb_uri(jpeg: bytes | None, size: int = THUMB_PX, quality: int = 80) -> str:
    """``thumb_jpeg`` as a ``data:`` URI."""
    return jpeg_uri(thumb_jpeg(jpeg, size, quality))


def with_thumbs(layout: pd.DataFrame, jpegs: list[bytes | None], size: int = THUMB_PX) -> pd.DataFrame:
    """``layout`` plus a ``url`` column of thumbnail data URIs (``jpegs`` in layout order)."""
    out = layout.copy()
    out["url"] = [thumb_uri(j, size) for j in jpegs]
    return out


#: the brush's event stream: a drag that does not start with shift held (Vega-Lite's default, filtered)
BRUSH_ON = "[pointerdown[!event.shiftKey], window:pointerup] > window:pointermove!"


def grid_chart(layout: pd.DataFrame, n_rows: int, n_cols: int, tile: int = 72, brush: str = "brush",
               pick: str = "pick") -> alt.LayerChart:
    """Thumbnails at (gx, gy) over red/green frames; interval ``brush`` and shift-click ``pick`` selections.

    ``layout`` needs the columns of :func:`grid_layout` plus ``url``. Picked (brushed or clicked) images
    get a thick blue outline drawn by the chart itself.
    """
    n_rows, n_cols = max(n_rows, 1), max(n_cols, 1)
    xs = alt.Scale(domain=[-0.5, n_cols - 0.5], nice=False, zero=False)
    ys = alt.Scale(domain=[-0.5, n_rows - 0.5], nice=False, zero=False, reverse=True)
    x = alt.X("gx:Q", scale=xs, axis=None)
    y = alt.Y("gy:Q", scale=ys, axis=None)
    # a shift-click must not start a new (empty) brush: it adds one image to the brushed ones
    b = alt.selection_interval(name=brush, encodings=["x", "y"], clear="dblclick", on=BRUSH_ON,
                               mark=alt.BrushConfig(fill="#1f5fbf", fillOpacity=0.12, stroke="#1f5fbf"))
    p = alt.selection_point(name=pick, fields=["image_id"], on="click", toggle="event.shiftKey",
                            clear="dblclick")
    inner = thumb_px(tile)
    frame_px = tile * 0.97
    tooltip = [alt.Tooltip("file:N"), alt.Tooltip("label:N"), alt.Tooltip("pred:N", title="prediction"),
               alt.Tooltip("p_fake:Q", format=".3f"), alt.Tooltip("generator:N"), alt.Tooltip("cell:Q")]
    base = alt.Chart(layout)
    frames = base.mark_square(filled=True, size=frame_px ** 2, opacity=1).encode(
        x=x, y=y,
        color=alt.Color("outcome:N", scale=alt.Scale(domain=list(FRAME_COLORS), range=list(FRAME_COLORS.values())),
                        legend=alt.Legend(title="prediction", orient="bottom")),
    )
    images = base.mark_image(width=inner, height=inner, cursor="pointer").encode(
        x=x, y=y, url="url:N", tooltip=tooltip,
    ).add_params(b, p)
    # Outline picked images. An empty selection means "everything" in Vega-Lite, so test the stores
    # directly and outline only when something is actually selected.
    test = (f"(length(data('{pick}_store')) > 0 && vlSelectionTest('{pick}_store', datum)) || "
            f"(length(data('{brush}_store')) > 0 && vlSelectionTest('{brush}_store', datum))")
    picked = base.mark_square(filled=False, size=tile ** 2, strokeWidth=4, color="#1f3fff").encode(
        x=x, y=y, opacity=alt.condition(test, alt.value(1.0), alt.value(0.0)),
    )
    return (frames + picked + images).properties(
        width=n_cols * tile, height=n_rows * tile,
        usermeta={"embedOptions": {"renderer": "svg", "actions": False}},
        autosize=alt.AutoSizeParams(type="pad"),
    ).configure_view(strokeWidth=0)
