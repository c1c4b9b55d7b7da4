"""Attention view: per picked image, its 16 dimension maps and the fake-logit map as overlays.

Dimensions are ordered by their contribution to the image's prediction: the contribution of dimension
i is ``z_i * w2_i`` (the distiller's logit is ``w2 · z + b2``); for an image predicted fake the most
positive contributions come first, for one predicted real the most negative. Tiles and tables name the
dimensions with ``storage.labels`` (``names``: ``Bundle.dimension_names``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import altair as alt
import numpy as np
import pandas as pd
from PIL import Image

from ..inputs.imageio import decode_thumbnail
from ..method.relevance import overlay
from ..storage.labels import dimension_label, dimension_labels, target_label
from ..storage.schema import FAKE_LOGIT, THUMB_MAX_PIXELS, Z_COLUMNS
from ..storage.schema import RELEVANCE_METHODS as RELEVANCE_METHODS  # the page's method picker
from .grid import image_names, jpeg_bytes, jpeg_uri

MAX_ATTENTION_IMAGES = 12


def head_weights(distiller) -> np.ndarray:
    """w2 ``[16]`` float64: the classifier weight of each dimension (``distiller.head.weight``)."""
    w = distiller.head.weight.detach().cpu().numpy().reshape(-1)
    return w.astype(np.float64)


def contributions(z: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """``z [n, 16] * w2 [16]`` -> ``[n, 16]``: each dimension's share of the fake logit (before the bias)."""
    return np.asarray(z, np.float64) * np.asarray(w2, np.float64)[None, :]


def dimension_order(contrib: np.ndarray, logit: np.ndarray | None = None) -> np.ndarray:
    """``[n, 16]`` dimension indices, most supportive of each image's prediction first.

    ``logit`` ``[n]`` (defaults to the contributions' sum) gives the predicted side: fake when >= 0.
    Ties keep the lower index first.
    """
    contrib = np.asarray(contrib, np.float64)
    if logit is None:
        logit = contrib.sum(axis=1)
    sign = np.where(np.asarray(logit) >= 0, 1.0, -1.0)[:, None]
    return np.argsort(-(contrib * sign), axis=1, kind="stable")


def logits(p_fake: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of ``p_fake`` [n], clipped away from 0 and 1."""
    p = np.clip(np.asarray(p_fake, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


@dataclass
class Tile:
    """One overlay to show: ``image`` (PIL, or its JPEG ``data:`` URI once ``encode_tiles`` has rendered it for
    every visitor), ``caption``, ``target`` (0..15 dimension, 16 fake logit)."""

    image: Image.Image | str
    caption: str
    target: int
    contribution: float | None = None


def decode_thumb(jpeg: bytes | None, size: int = 128) -> Image.Image:
    """Bundle thumbnail bytes -> RGB PIL (a grey square when missing, unreadable or, from its header, far
    larger than a thumbnail: ``imageio.decode_thumbnail``)."""
    return decode_thumbnail(jpeg, size, THUMB_MAX_PIXELS)


def image_tiles(base: Image.Image, maps: np.ndarray, contrib: np.ndarray, order: np.ndarray,
                alpha: float = 0.5, size: int = 112, logit: float | None = None,
                names: Sequence[str] = ()) -> list[Tile]:
    """Tiles for one image: the image itself, the fake-logit overlay, then the 16 dimension overlays in
    ``order``. ``maps`` ``[17, side, side]``; ``contrib`` ``[16]``; overlays are ``size`` px squares.
    ``logit`` (the image's fake logit, bias included) labels the fake-logit tile; default ``sum(contrib)``.
    Captions: ``"dim 3 · smooth skin · +0.42"`` (``names``: the dimensions' names)."""
    base = base.convert("RGB")
    w, h = base.size
    s = min(w, h)
    square = base.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size))
    m = np.asarray(maps, np.float32)
    logit = float(contrib.sum()) if logit is None else float(logit)
    tiles = [Tile(square, "image", -1),
             Tile(overlay(square, m[FAKE_LOGIT], alpha=alpha), f"{target_label(FAKE_LOGIT)} · {logit:+.2f}",
                  FAKE_LOGIT, logit)]
    for d in order:
        d = int(d)
        tiles.append(Tile(overlay(square, m[d], alpha=alpha), f"{dimension_label(d, names)} · {contrib[d]:+.2f}",
                          d, float(contrib[d])))
    return tiles


#: edge of an attention tile as shown (px); tiles are made at this size, so nothing is resized when shown
TILE_PX = 92


def encode_tiles(rows: list[dict], quality: int = 90) -> list[dict]:
    """``rows`` of ``attention_rows`` with each tile's image as a JPEG ``data:`` URI (``grid.jpeg_uri``): what
    every visitor of the same images is sent, rendered once."""
    def encoded(t: Tile) -> Tile:
        return replace(t, image=jpeg_uri(jpeg_bytes(t.image, quality))) if isinstance(t.image, Image.Image) else t

    return [{**r, "tiles": [encoded(t) for t in r["tiles"]]} for r in rows]


def attention_rows(images: pd.DataFrame, ids: list[str], maps: np.ndarray, w2: np.ndarray,
                   jpegs: list[bytes | None], alpha: float = 0.5, size: int = 112,
                   names: Sequence[str] = ()) -> list[dict]:
    """One dict per image of ``ids`` (``maps [n, 17, side, side]`` and ``jpegs`` in the same order):
    ``image_id, file, label, pred, p_fake, logit, order [16], contrib [16], tiles`` (captions name the
    dimensions with ``names``)."""
    table = images.set_index("image_id").loc[ids]
    z = table[Z_COLUMNS].to_numpy(np.float64)
    contrib = contributions(z, w2)
    logit = logits(table["p_fake"].to_numpy())
    order = dimension_order(contrib, logit)
    file_col = "relpath" if "relpath" in table.columns else "path"
    rows = []
    for i, image_id in enumerate(ids):
        r = table.iloc[i]
        rows.append({
            "image_id": image_id, "file": str(r[file_col]),
            "label": None if pd.isna(r["label"]) else str(r["label"]), "pred": str(r["pred"]),
            "p_fake": float(r["p_fake"]), "order": order[i], "contrib": contrib[i],
            "logit": float(logit[i]),
            "tiles": image_tiles(decode_thumb(jpegs[i]), maps[i], contrib[i], order[i], alpha, size, logit[i],
                                 names),
        })
    return rows


def contribution_chart(frame: pd.DataFrame) -> alt.Chart:
    """Grouped bars of ``contribution_frame``: one bar per image and dimension, z_i · w2_i."""
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("dim:O", title="dimension"), xOffset="image:N",  # image: the file name, as the tiles' rows
        y=alt.Y("contribution:Q", title="z_i · w2_i"),
        color=alt.Color("image:N", title="image"),
        tooltip=["image", "dimension", alt.Tooltip("contribution:Q", format="+.3f")],
    ).properties(height=200)


def contribution_frame(images: pd.DataFrame, ids: list[str], w2: np.ndarray, names: Sequence[str] = ()
                       ) -> pd.DataFrame:
    """Long table ``image, dim, dimension, contribution`` for a bar chart of the picked images' contributions;
    ``image`` is the file name (``grid.image_names``), as the rows above the chart name the images;
    ``dimension`` the dimension's label (``storage.labels``, with ``names``)."""
    table = images.set_index("image_id").loc[ids]
    contrib = contributions(table[Z_COLUMNS].to_numpy(np.float64), w2)
    return pd.DataFrame({
        "image": np.repeat(image_names(images, ids), contrib.shape[1]),
        "dim": np.tile(np.arange(contrib.shape[1]), len(ids)),
        "dimension": np.tile(np.asarray(dimension_labels(names), dtype=object), len(ids)),
        "contribution": contrib.reshape(-1),
    })


