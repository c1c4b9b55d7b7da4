"""Concept view of a cell (FaXplainer Fig. 1D): the result of ``analyses.concepts.compute_concepts`` as
cards (numbers + exemplar crops) for display."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from PIL import Image

from ..storage.labels import dimension_label


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def square(image, size: int = 96):
    """``image`` letter-boxed onto a white ``size`` x ``size`` square (crops come in many shapes)."""
    im = image.convert("RGB")
    scale = size / max(im.size)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BILINEAR)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return out


def concept_cards(result: Any, n_exemplars: int = 6, size: int = 96) -> list[dict]:
    """One dict per concept: ``concept, n_segments, n_images, share_fake, mean_p_fake, dominant_dims, crops``.

    ``crops`` are ``size`` px square PIL images (exemplar segments nearest the centroid, letter-boxed);
    empty when the result cannot produce them (e.g. the source images moved and no thumbnail exists).
    """
    cards = []
    table = result.concepts
    for r in table.to_dict("records"):
        c = int(r["concept"])
        try:
            crops = [square(im, size) for im in result.exemplar_crops(c, n_exemplars)]
        except Exception:
            crops = []
        cards.append({
            "concept": c,
            "n_segments": int(r.get("n_segments", 0)),
            "n_images": int(r.get("n_images", 0)),
            "share_fake": _num(r.get("share_fake")),
            "mean_p_fake": _num(r.get("mean_p_fake")),
            "dominant_dims": [int(d) for d in (r.get("dominant_dims") or [])],
            "crops": crops,
        })
    return cards


def describe(card: dict, names: Sequence[str] = ()) -> str:
    """One line under a concept: segments, images, share fake, mean p_fake, dominant dimensions (labelled with
    ``names``, the bundle's dimension names: "dim 3 · smooth skin")."""
    share = "n/a" if math.isnan(card["share_fake"]) else f"{card['share_fake']:.0%}"
    dims = "; ".join(dimension_label(d, names) for d in card["dominant_dims"]) or "-"
    return (f"{card['n_segments']} segments from {card['n_images']} images · share fake {share} · "
            f"mean p_fake {card['mean_p_fake']:.2f} · dimensions: {dims}")
