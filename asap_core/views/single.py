"""Single-image view: one uploaded image against the open bundle (p_fake, neighbours, cell, maps).

Plain functions over ``single_image.SingleImageResult``; no Streamlit. Uploads only: nothing here fetches
a URL.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..inputs.imageio import IMAGE_EXTENSIONS
from . import attention as va
from .grid import image_names
from .text import as_text

#: file types offered by the uploader (without the dot)
UPLOAD_TYPES: list[str] = sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def verdict_line(res) -> str:
    """``**name** · predicted **fake** (p_fake 0.912, confidence 0.82)`` plus where it sits in the bundle
    (Markdown; the upload's name shown as text)."""
    where = f"nearest cell {res.cell}" if res.cell is not None else "no cell"
    same = " · the same file is in the bundle" if res.in_bundle else ""
    return (f"**{as_text(res.name)}** · predicted **{as_text(res.pred)}** (p_fake {res.p_fake:.3f}, "
            f"confidence {res.confidence:.2f}) · {where}{same}")


#: share of the bundle's own images whose nearest other image is closer than an upload may be before it is
#: called "far from every image of this bundle"
FAR_QUANTILE = 0.99
FAR_SAMPLE = 1000  # bundle images whose nearest-other-image distance is measured (all of them when fewer)


def nearest_distance_limit(z: np.ndarray, q: float = FAR_QUANTILE, sample: int = FAR_SAMPLE, seed: int = 0) -> float:
    """How far a bundle's own images lie from their nearest other image: the ``q`` quantile, over up to
    ``sample`` images (a fixed random sample), of the Euclidean distance in z (``[N, 16]``) to the nearest other
    image. NaN with fewer than 2 images. Cost: ``sample x N`` distances, in blocks."""
    z = np.asarray(z, np.float32)
    n = len(z)
    if n < 2:
        return float("nan")
    rows = np.random.default_rng(seed).choice(n, min(n, int(sample)), replace=False)
    sq = (z.astype(np.float64) ** 2).sum(axis=1)
    nearest = []
    for start in range(0, len(rows), 256):
        r = rows[start:start + 256]
        d2 = sq[r][:, None] + sq[None, :] - 2.0 * (z[r].astype(np.float64) @ z.T.astype(np.float64))
        d2[np.arange(len(r)), r] = np.inf  # not itself
        nearest.append(np.sqrt(np.maximum(d2.min(axis=1), 0.0)))
    return float(np.quantile(np.concatenate(nearest), q))


def far_notice(distance: float, limit: float) -> str | None:
    """The warning shown before the verdict when an upload lies farther (``distance`` in z to its nearest
    bundle image) than ``limit`` (``nearest_distance_limit``); None when it does not."""
    if not np.isfinite(limit) or not np.isfinite(distance) or distance <= limit:
        return None
    return (f"This image is unlike every image of this bundle: its nearest one is {distance:.2f} away in the 16 "
            f"dimensions, farther than {FAR_QUANTILE:.0%} of the bundle's own images are from theirs "
            f"({limit:.2f}). The detector never learnt from images like it, so its verdict below is a guess "
            "outside what it knows.")


def neighbour_captions(nb: pd.DataFrame) -> list[str]:
    """One caption per neighbour row: rank, label, p_fake and distance in z."""
    out = []
    for r in nb.to_dict("records"):
        label = "unlabelled" if r["label"] is None or pd.isna(r["label"]) else str(r["label"])
        gen = r.get("generator")
        gen_txt = f" ({gen})" if label == "fake" and gen is not None and not pd.isna(gen) and str(gen) else ""
        out.append(f"#{r['rank']} {label}{gen_txt} · p {r['p_fake']:.2f} · d {r['distance']:.2f}")
    return out


def neighbour_summary(nb: pd.DataFrame) -> str:
    """How the neighbours are labelled and predicted (majority vote of the k nearest)."""
    k = len(nb)
    if not k:
        return "No neighbours."
    lab = nb["label"].astype(object).where(nb["label"].notna(), "unlabelled").value_counts()
    parts = ", ".join(f"{n} {name}" for name, n in lab.items())
    return f"Of its {k} nearest bundle images in z: {parts}; mean p_fake {float(nb['p_fake'].mean()):.2f}."


def neighbours_display(nb: pd.DataFrame) -> pd.DataFrame:
    """The neighbour table for ``st.dataframe``: file names (no folders: no server paths), short ids."""
    cols = [c for c in ("rank", "image_id", "distance", "label", "generator", "p_fake", "pred", "cell") if c in nb]
    out = nb[cols].copy()
    if "image_id" in nb and ("path" in nb or "relpath" in nb):
        out.insert(1, "file", image_names(nb, nb["image_id"].tolist()))
    out["image_id"] = out["image_id"].str[:10]
    return out


def map_tiles(res, w2: np.ndarray, alpha: float = 0.5, size: int = 112, names: Sequence[str] = ()) -> list[va.Tile]:
    """The upload's tiles, as on the attention page: the image, the fake-logit overlay, then the 16
    dimension overlays ordered by support for the prediction (contribution ``z_i * w2_i``), captions naming
    the dimensions with ``names`` (the bundle's)."""
    contrib = va.contributions(np.asarray(res.z)[None], w2)[0]
    order = va.dimension_order(contrib[None], np.asarray([res.logit]))[0]
    return va.image_tiles(res.image, res.maps, contrib, order, alpha=alpha, size=size, logit=res.logit, names=names)


__all__ = ["UPLOAD_TYPES", "map_tiles", "neighbour_captions", "neighbour_summary", "neighbours_display",
           "verdict_line"]
