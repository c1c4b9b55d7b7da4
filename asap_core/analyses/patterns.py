"""Pattern view (ASAP; docs/design.md §3.12): named patterns, their quantified impact, ranking, export.

A pattern is a concept or a user selection with a name and a note. Its *regions* are, per image, a boolean
``[side, side]`` patch mask (True = the pattern's patches). A concept brings its own regions (the segment
nearest the concept's centroid per image); a plain selection has none, and then each image's top 25 % of
patches by fake-logit relevance are its regions.

Impact: every image is cut to the model input (resize + centre crop), the pattern's regions are painted in the
CLIP mean colour (``concepts.apply_mask``) and the image is re-encoded. ``impact`` is the mean *drop* of
p_fake (``p_fake(original) - p_fake(masked)``; positive: the regions made the images look fake), compared with
the same drop for an area-matched random mask (same number of patches, drawn uniformly, ``n_random`` draws)
on the same images. ``excess = impact - random_impact`` ranks patterns; ``n_flipped`` counts the predictions
that cross 0.5. Results are cached in the bundle (``cache/pattern-impact``) keyed by the pattern's content
(ids and regions, not its name), the encoder and the distiller.

Patterns persist as one JSON file each under ``bundle/cache/patterns`` (regions as lists of patch indices,
row-major; never pickle).
"""
from __future__ import annotations

import builtins
import csv
import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from ..errors import BundleError, InputError
from ..inputs.imageio import decode_image, thumbnail_fits
from ..method.bundle_models import bundle_distiller, bundle_model_key, bundle_models
from ..method.relevance_store import bundle_maps
from ..storage.cache import cached_call, hash_key, is_cached
from ..storage.labels import dimension_label
from ..storage.schema import (
    DECISION_THRESHOLD,
    FAKE_LOGIT,
    N_DIMS,
    THUMB_MAX_PIXELS,
    Z_COLUMNS,
    p_fake_from_logit,
)
from .concepts import apply_mask, keep_mask, mean_fill

SOURCES = ("concept", "selection")
DEFAULT_FRACTION = 0.25
STORE_NAMESPACE = "patterns"
IMPACT_NAMESPACE = "pattern-impact"
IMPACT_VERSION = "pattern-impact-1"
MAX_NAME = 100
SUMMARY_KEYS = ("n_images", "impact", "random_impact", "excess", "excess_se", "impact_logit",
                "random_impact_logit", "n_flipped", "n_flipped_random", "mean_area")


# ----------------------------------------------------------------------------- the pattern


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Pattern:
    """A named pattern: ``image_ids`` and, per image, a bool ``[side, side]`` mask of its regions.

    ``source``: ``"concept"`` or ``"selection"``. ``masks`` maps image id -> region mask (True = the
    pattern's patches); ``None`` means "each image's top ``fraction`` of patches by fake-logit relevance".
    ``created``: ISO time (UTC).
    """

    name: str
    image_ids: list[str]
    source: str = "selection"
    note: str = ""
    masks: dict[str, np.ndarray] | None = None
    fraction: float = DEFAULT_FRACTION
    created: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        self.name = str(self.name).strip()
        if not self.name or len(self.name) > MAX_NAME:
            raise InputError(f"A pattern name must have 1 to {MAX_NAME} characters (got {len(self.name)}).",
                             "give the pattern a short name, e.g. 'bright corner'.")
        if self.source not in SOURCES:
            raise InputError(f"Pattern source '{self.source}' is not one of {', '.join(SOURCES)}.", "")
        self.image_ids = list(dict.fromkeys(str(i) for i in self.image_ids))
        if not self.image_ids:
            raise InputError(f"Pattern '{self.name}' has no images.", "select at least one image.")
        if not 0.0 < float(self.fraction) <= 1.0:
            raise InputError(f"fraction {self.fraction} is not in (0, 1].", "use e.g. 0.25.")
        self.fraction = float(self.fraction)
        if self.masks is not None:
            masks = {str(k): np.asarray(v, dtype=bool) for k, v in self.masks.items()}
            missing = [i for i in self.image_ids if i not in masks]
            if missing:
                raise InputError(f"Pattern '{self.name}' has no region mask for {len(missing)} of its images "
                                 f"(e.g. {missing[0]}).", "give a mask per image, or masks=None.")
            shapes = {m.shape for m in masks.values()}
            if len(shapes) != 1 or len(next(iter(shapes))) != 2 or len(set(next(iter(shapes)))) != 1:
                raise InputError(f"Pattern '{self.name}': region masks must all be square [side, side], got "
                                 f"{sorted(shapes)}.", "pass patch masks, e.g. ConceptResult.masks rows.")
            self.masks = {i: masks[i] for i in self.image_ids}

    @property
    def side(self) -> int | None:
        """Patches per side of the stored masks (None without masks)."""
        return None if self.masks is None else int(next(iter(self.masks.values())).shape[0])

    def to_dict(self) -> dict:
        """JSON-ready dict; masks as lists of kept patch indices (row-major)."""
        masks = None
        if self.masks is not None:
            masks = {i: np.flatnonzero(m.reshape(-1)).tolist() for i, m in self.masks.items()}
        return {"name": self.name, "note": self.note, "source": self.source, "created": self.created,
                "fraction": self.fraction, "image_ids": list(self.image_ids), "side": self.side, "masks": masks}

    @classmethod
    def from_dict(cls, d: dict) -> Pattern:
        """Inverse of ``to_dict``."""
        masks = None
        if d.get("masks") is not None:
            side = int(d["side"])
            masks = {}
            for i, idx in d["masks"].items():
                m = np.zeros(side * side, dtype=bool)
                m[np.asarray(idx, dtype=np.int64)] = True
                masks[i] = m.reshape(side, side)
        return cls(name=d["name"], image_ids=list(d["image_ids"]), source=d.get("source", "selection"),
                   note=d.get("note", ""), masks=masks, fraction=float(d.get("fraction", DEFAULT_FRACTION)),
                   created=d.get("created") or _now())

    def content_key(self) -> str:
        """Hash of what the impact depends on: ids, regions (or fraction), not name or note."""
        if self.masks is None:
            return hash_key("top-fraction", self.image_ids, self.fraction)
        return hash_key("masks", self.image_ids, np.stack([self.masks[i] for i in self.image_ids]))


def pattern_from_selection(name: str, image_ids: Sequence[str], note: str = "",
                           fraction: float = DEFAULT_FRACTION) -> Pattern:
    """A selection pattern: regions = each image's top ``fraction`` of patches by fake-logit relevance."""
    return Pattern(name=name, image_ids=list(image_ids), source="selection", note=note, fraction=fraction)


def pattern_from_concept(result, concept: int, name: str, note: str = "") -> Pattern:
    """A pattern from concept ``concept`` of a ``ConceptResult``: its images, and per image the region of
    the image's segment nearest the concept's centroid (an image may give several segments to a concept)."""
    seg = result.segments
    part = seg[seg["concept"] == int(concept)]
    if part.empty:
        raise InputError(f"There is no concept {concept}.", f"concepts are 0..{result.k - 1}.")
    best = part.sort_values(["image_id", "distance"], kind="stable").drop_duplicates("image_id")
    best = best.sort_values("distance", kind="stable")
    masks = {str(r.image_id): np.asarray(result.masks[int(r.segment)], dtype=bool) for r in best.itertuples()}
    fr = sorted({float(f) for f in best["fraction"]})
    auto = f"concept {concept} ({len(best)} images, regions of {', '.join(f'{f:.0%}' for f in fr)} of the patches)"
    return Pattern(name=name, image_ids=list(masks), source="concept", note=note or auto, masks=masks)


# ----------------------------------------------------------------------------- the store


def _slug(name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "pattern"
    return f"{base}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


class PatternStore:
    """The named patterns of one bundle, one JSON file each in ``bundle.cache_dir / "patterns"``.

    ``add(pattern, overwrite=False)``, ``get(name)``, ``list()`` (oldest first), ``names()``, ``delete(name)``.
    Writes are atomic (temporary file + rename); a read-only bundle raises ``BundleError`` on ``add``.
    """

    def __init__(self, bundle) -> None:
        self.bundle = bundle
        self.dir = Path(bundle.cache_dir) / STORE_NAMESPACE

    def _path(self, name: str) -> Path:
        return self.dir / f"{_slug(name.strip())}.json"

    def add(self, pattern: Pattern, overwrite: bool = False) -> Path:
        """Save ``pattern``; ``InputError`` if the name is taken (unless ``overwrite``), ids are unknown, or
        another saved pattern already holds the same picks (``content_key``: images and regions)."""
        self.bundle.check_ids(pattern.image_ids)
        _check_side(self.bundle, pattern)
        path = self._path(pattern.name)
        if path.exists() and not overwrite:
            raise InputError(f"A pattern named '{pattern.name}' already exists.",
                             "choose another name, or overwrite it.")
        same = self.find_same(pattern)
        if same is not None and not (overwrite and same.name == pattern.name):
            raise InputError(f"These picks are already saved as pattern '{same.name}' (the same {len(same.image_ids)} "
                             "images and regions); nothing was saved.",
                             f"open '{same.name}' in the pattern view, or change the picks to save a new pattern.")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
            tmp.write_text(json.dumps(pattern.to_dict(), indent=1))
            os.replace(tmp, path)
        except OSError as exc:
            raise BundleError(f"Cannot save pattern '{pattern.name}' in {self.dir} ({exc.strerror or exc}).",
                              "open a copy of the bundle in a writable folder, or export the pattern instead."
                              ) from None
        return path

    def get(self, name: str) -> Pattern:
        """The pattern called ``name``; ``InputError`` if there is none."""
        path = self._path(name)
        if not path.is_file():
            raise InputError(f"There is no pattern named '{name}'.",
                             f"saved patterns: {', '.join(self.names()) or '(none)'}.")
        return Pattern.from_dict(json.loads(path.read_text()))

    def list(self) -> list[Pattern]:
        """All saved patterns, oldest first (then by name)."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.glob("[!.]*.json"):
            try:
                out.append(Pattern.from_dict(json.loads(p.read_text())))
            except (OSError, ValueError, KeyError, InputError):
                continue  # a damaged file does not hide the others
        return sorted(out, key=lambda p: (p.created, p.name))

    def names(self) -> builtins.list[str]:  # builtins: ``list`` here is the method above
        return [p.name for p in self.list()]

    def find_same(self, pattern: Pattern) -> Pattern | None:
        """The saved pattern with the same images (in any order) and regions as ``pattern`` (any name or
        note), or None."""
        return next((p for p in self.list() if _same_picks(p, pattern)), None)

    def delete(self, name: str) -> bool:
        """Remove the pattern ``name``; False if there was none."""
        path = self._path(name)
        if not path.is_file():
            return False
        path.unlink()
        return True


# ----------------------------------------------------------------------------- impact


def _same_picks(a: Pattern, b: Pattern) -> bool:
    """Whether two patterns hold the same images and regions (masks, or the same top fraction)."""
    if set(a.image_ids) != set(b.image_ids):
        return False
    if a.masks is None or b.masks is None:
        return a.masks is None and b.masks is None and a.fraction == b.fraction
    return a.side == b.side and all(np.array_equal(a.masks[i], b.masks[i]) for i in a.image_ids)


def _check_side(bundle, pattern: Pattern) -> int:
    side = bundle.encoder_info.patch_side
    if pattern.side is not None and pattern.side != side:
        raise InputError(f"Pattern '{pattern.name}' has {pattern.side}x{pattern.side} patch masks; this bundle's "
                         f"encoder has {side}x{side} patches.", "make the pattern from this bundle's concepts.")
    return side


def _predict(encoder, distiller, pics: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """``(p_fake [n], fake logit [n])`` float64 of model-sized images."""
    import torch

    emb = encoder.encode_crops(pics)
    with torch.no_grad():
        _, logit = distiller(emb)
    logit = logit.double().numpy()
    return np.asarray(p_fake_from_logit(logit)), logit


def region_masks(bundle, pattern: Pattern, encoder=None, method: str = "last-block") -> np.ndarray:
    """The pattern's regions ``[n, side, side]`` bool in the order of ``pattern.image_ids``.

    Stored masks as they are; otherwise the top ``pattern.fraction`` of each image's fake-logit map.
    """
    side = _check_side(bundle, pattern)
    if pattern.masks is not None:
        return np.stack([pattern.masks[i] for i in pattern.image_ids])
    maps = np.asarray(bundle_maps(bundle, pattern.image_ids, method, encoder=encoder), np.float32)[:, FAKE_LOGIT]
    return np.stack([keep_mask(m, pattern.fraction) for m in maps]).reshape(len(maps), side, side)


def _random_masks(regions: np.ndarray, n_random: int, random_state: int) -> np.ndarray:
    """``[n_random, n, side, side]``: per image as many uniformly drawn patches as its region has."""
    n, side, _ = regions.shape
    rng = np.random.default_rng(random_state)
    out = np.zeros((n_random, n, side * side), dtype=bool)
    for i in range(n):
        area = int(regions[i].sum())
        for r in range(n_random):
            out[r, i, rng.choice(side * side, size=area, replace=False)] = True
    return out.reshape(n_random, n, side, side)


def _impact_table(bundle, ids: list[str], regions: np.ndarray, encoder, n_random: int, random_state: int,
                  batch_size: int, progress: Callable[[int, int], None] | None) -> pd.DataFrame:
    """Per-image table of the impact computation (see ``pattern_impact``)."""
    distiller = bundle_distiller(bundle)
    fill = mean_fill(encoder.preprocessor.mean)
    rand = _random_masks(regions, n_random, random_state)
    n = len(ids)
    p0 = np.zeros(n)
    l0 = np.zeros(n)
    pm = np.zeros(n)
    lm = np.zeros(n)
    pr = np.zeros((n_random, n))
    lr = np.zeros((n_random, n))
    per = max(1, int(batch_size) // (2 + n_random))
    for start in range(0, n, per):
        stop = min(start + per, n)
        bases = [bundle.model_input(i, encoder.preprocessor, "the pattern impact") for i in ids[start:stop]]
        pics = list(bases)
        pics += [apply_mask(b, ~regions[start + j], fill) for j, b in enumerate(bases)]
        for r in range(n_random):
            pics += [apply_mask(b, ~rand[r, start + j], fill) for j, b in enumerate(bases)]
        p, lg = _predict(encoder, distiller, pics)
        m = stop - start
        p0[start:stop], l0[start:stop] = p[:m], lg[:m]
        pm[start:stop], lm[start:stop] = p[m:2 * m], lg[m:2 * m]
        for r in range(n_random):
            lo = (2 + r) * m
            pr[r, start:stop], lr[r, start:stop] = p[lo:lo + m], lg[lo:lo + m]
        if progress:
            progress(stop, n)
    side_flip = lambda a, b: (a >= DECISION_THRESHOLD) != (b >= DECISION_THRESHOLD)
    table = bundle.images.set_index("image_id").loc[ids]
    return pd.DataFrame({
        "image_id": ids,
        "label": table["label"].to_numpy(dtype=object),
        "area": regions.reshape(n, -1).sum(axis=1).astype(np.int64),
        "p_fake": p0,
        "p_fake_masked": pm,
        "p_fake_random": pr.mean(axis=0),
        "drop": p0 - pm,
        "drop_random": (p0[None] - pr).mean(axis=0),
        "drop_logit": l0 - lm,
        "drop_logit_random": (l0[None] - lr).mean(axis=0),
        "flipped": side_flip(p0, pm),
        "flipped_random": side_flip(p0[None], pr).mean(axis=0),
    })


def summarise_impact(table: pd.DataFrame) -> dict:
    """Pattern-level numbers from a per-image impact table (keys ``SUMMARY_KEYS``)."""
    n = len(table)
    excess = (table["drop"] - table["drop_random"]).to_numpy(np.float64)
    return {
        "n_images": int(n),
        "impact": float(table["drop"].mean()),
        "random_impact": float(table["drop_random"].mean()),
        "excess": float(np.mean(excess)),
        "excess_se": float(np.std(excess, ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "impact_logit": float(table["drop_logit"].mean()),
        "random_impact_logit": float(table["drop_logit_random"].mean()),
        "n_flipped": int(table["flipped"].sum()),
        "n_flipped_random": float(table["flipped_random"].sum()),
        "mean_area": float(table["area"].mean()),
    }


def impact_cache_key(bundle, pattern: Pattern, n_random: int, random_state: int, method: str, encoder=None) -> str:
    """Cache key of one impact result: pattern content, settings, encoder and distiller."""
    how = method if pattern.masks is None else "stored"
    return hash_key(IMPACT_VERSION, pattern.content_key(), int(n_random), int(random_state), how,
                    bundle_model_key(bundle, encoder))


def impact_cached(bundle, pattern: Pattern, method: str, n_random: int = 3, random_state: int = 0,
                  encoder=None) -> bool:
    """True when the impact of ``pattern`` with these settings is already in the bundle's cache."""
    return is_cached(bundle.cache_dir, IMPACT_NAMESPACE,
                     impact_cache_key(bundle, pattern, n_random, random_state, method, encoder))


def pattern_impact(bundle, pattern: Pattern, encoder=None, n_random: int = 3, random_state: int = 0,
                   method: str = "last-block", batch_size: int = 64,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Impact of ``pattern`` on the bundle's detector.

    Returns ``{"name", "n_images", "impact", "random_impact", "excess", "excess_se", "impact_logit",
    "random_impact_logit", "n_flipped", "n_flipped_random", "mean_area", "table"}``: ``impact`` is the mean
    drop of p_fake when the regions are painted in the CLIP mean colour, ``random_impact`` the same for
    area-matched random masks (mean over ``n_random`` draws), ``excess`` their difference (``excess_se``
    its standard error over images), ``*_logit`` the same in fake-logit units, ``n_flipped`` the predictions
    that cross 0.5 (``n_flipped_random``: mean over draws), ``mean_area`` patches per region. ``table``:
    one row per image (image_id, label, area, p_fake, p_fake_masked, p_fake_random, drop, drop_random,
    drop_logit, drop_logit_random, flipped, flipped_random). Cached in the bundle; the encoder (``encoder``
    or the bundle's own) is loaded only on a cache miss. ``method`` picks the relevance maps for a
    pattern without stored regions.
    """
    if int(n_random) < 1:
        raise InputError(f"n_random = {n_random}: the random baseline needs at least one draw.", "use 3.")
    ids = bundle.check_ids(pattern.image_ids)
    _check_side(bundle, pattern)

    def compute() -> pd.DataFrame:
        enc, _ = bundle_models(bundle, encoder)
        regions = region_masks(bundle, pattern, enc, method)
        return _impact_table(bundle, ids, regions, enc, int(n_random), int(random_state), batch_size, progress)

    key = impact_cache_key(bundle, pattern, n_random, random_state, method, encoder)
    table = cached_call(bundle.cache_dir, IMPACT_NAMESPACE, key, compute,
                        lambda t, d: t.to_parquet(d / "table.parquet", index=False),
                        lambda d: pd.read_parquet(d / "table.parquet"))
    return {"name": pattern.name, **summarise_impact(table), "table": table}


def rank_patterns(bundle, patterns: Sequence[Pattern], encoder=None, n_random: int = 3, random_state: int = 0,
                  method: str = "last-block", progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One row per pattern, best first: rank, name, note, source, created and ``SUMMARY_KEYS``,
    sorted by ``excess`` (impact minus random impact), descending. ``progress(done, total)`` per pattern."""
    rows = []
    for k, p in enumerate(patterns):
        res = pattern_impact(bundle, p, encoder, n_random, random_state, method)  # the model loads on a miss only
        rows.append({"name": p.name, "note": p.note, "source": p.source, "created": p.created,
                     **{key: res[key] for key in SUMMARY_KEYS}})
        if progress:
            progress(k + 1, len(patterns))
    cols = ["rank", "name", "note", "source", "created", *SUMMARY_KEYS]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows).sort_values(["excess", "name"], ascending=[False, True], kind="stable")
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df.reset_index(drop=True)[cols]


# ----------------------------------------------------------------------------- export


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def _square(im: Image.Image) -> Image.Image:
    w, h = im.size
    s = min(w, h)
    return im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


def _outline(draw: ImageDraw.ImageDraw, region: np.ndarray, cell: int, colour=(255, 140, 0)) -> None:
    """Draw the boundary of ``region [side, side]`` on a ``cell`` x ``cell`` tile (no lines between region patches)."""
    s = region.shape[0]
    e = np.round(np.linspace(0, cell, s + 1)).astype(int)
    pad = np.pad(region, 1)
    for r, c in zip(*np.nonzero(region)):
        x0, x1, y0, y1 = e[c], e[c + 1] - 1, e[r], e[r + 1] - 1
        if not pad[r, c + 1]:
            draw.line((x0, y0, x1, y0), fill=colour)  # top
        if not pad[r + 2, c + 1]:
            draw.line((x0, y1, x1, y1), fill=colour)  # bottom
        if not pad[r + 1, c]:
            draw.line((x0, y0, x0, y1), fill=colour)  # left
        if not pad[r + 1, c + 2]:
            draw.line((x1, y0, x1, y1), fill=colour)  # right


def contact_sheet(bundle, pattern: Pattern, cell: int = 96, columns: int = 8, max_images: int = 48) -> Image.Image:
    """A PNG-ready RGB sheet: a title line, then up to ``max_images`` thumbnails (centre square, what CLIP
    sees) in a grid; where the pattern stores regions, the rest of each thumbnail is dimmed and the region
    patches are outlined in orange."""
    ids = pattern.image_ids[:max(int(max_images), 1)]
    cols = max(1, min(int(columns), len(ids)))
    rows = math.ceil(len(ids) / cols)
    pad, title_h = 4, 22
    sheet = Image.new("RGB", (cols * (cell + pad) + pad, title_h + rows * (cell + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    more = f" (first {len(ids)})" if len(ids) < len(pattern.image_ids) else ""
    draw.text((pad, 4), f"{pattern.name}: {len(pattern.image_ids)} images{more}", fill=(0, 0, 0), font=_font(14))
    for k, (image_id, data) in enumerate(zip(ids, bundle.thumbnails(ids))):
        x = pad + (k % cols) * (cell + pad)
        y = title_h + pad + (k // cols) * (cell + pad)
        if not thumbnail_fits(data, THUMB_MAX_PIXELS):  # missing, or not a thumbnail (header over the limit)
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=(180, 180, 180))
            continue
        tile = _square(decode_image(data, f"thumbnail {image_id}")).resize((cell, cell), Image.Resampling.BICUBIC)
        if pattern.masks is not None:
            m = pattern.masks[image_id]
            dim = Image.blend(tile, Image.new("RGB", tile.size, (0, 0, 0)), 0.55)
            region = apply_mask(Image.new("RGB", tile.size, (255, 255, 255)), m, (0, 0, 0)).convert("L")
            tile = Image.composite(tile, dim, region)  # the region as it is, the rest dimmed
            _outline(ImageDraw.Draw(tile), m, cell)
        sheet.paste(tile, (x, y))
    return sheet


def dimension_columns(bundle) -> list[dict]:
    """The dimensions as an export names them: ``index``, ``column`` (``z3``), ``name`` (the user's, "" when
    unnamed) and ``label`` (``storage.labels.dimension_label``: "dim 3 · smooth skin")."""
    names = bundle.dimension_names
    return [{"index": i, "column": Z_COLUMNS[i], "name": names[i], "label": dimension_label(i, names)}
            for i in range(N_DIMS)]


def pattern_mean_z(bundle, p: Pattern) -> np.ndarray:
    """Mean ``z [16]`` over the pattern's images (NaN where none is in the bundle)."""
    z = bundle.images.set_index("image_id").reindex(list(p.image_ids))[Z_COLUMNS].to_numpy(np.float64)
    if not np.isfinite(z).any():
        return np.full(N_DIMS, np.nan)
    return np.nanmean(z, axis=0)


def export_patterns(bundle, patterns: Sequence[Pattern], out_dir: str | Path, with_impact: bool = True,
                    encoder=None, n_random: int = 3, random_state: int = 0, method: str = "last-block") -> list[Path]:
    """Write ``patterns.json`` (full patterns with regions, each pattern's mean z per dimension, plus impact),
    ``patterns.csv`` (one row per pattern, a ``mean <dimension label>`` column per dimension), with impact also
    ``pattern_images.csv`` (one row per pattern and image), and one PNG contact sheet per pattern into
    ``out_dir``; returns the written paths. Dimensions carry their names (``dimension_columns``): in
    ``patterns.json["dimensions"]`` and in the headers. Impact comes from the cache when present."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    patterns = list(patterns)
    impacts: dict[str, dict] = {}
    if with_impact:
        for p in patterns:
            impacts[p.name] = pattern_impact(bundle, p, encoder, n_random, random_state, method)
    written: list[Path] = []
    sheets: dict[str, str] = {}
    used: set[str] = set()
    for p in patterns:
        fname = f"{_slug(p.name)}.png"
        while fname in used:  # two patterns with the same name
            fname = f"{_slug(p.name)}-{len(used)}.png"
        used.add(fname)
        contact_sheet(bundle, p).save(out / fname, "PNG")
        sheets[p.name] = fname
        written.append(out / fname)
    dims = dimension_columns(bundle)
    mean_z = {p.name: pattern_mean_z(bundle, p) for p in patterns}
    records = []
    for p in patterns:
        rec = {**p.to_dict(), "contact_sheet": sheets[p.name],
               "mean_z": {d["label"]: _finite(mean_z[p.name][d["index"]]) for d in dims}}
        if p.name in impacts:
            rec["impact"] = {k: impacts[p.name][k] for k in SUMMARY_KEYS}
        records.append(rec)
    meta = {"bundle": bundle.path.name, "encoder": bundle.encoder_info.model_id,
            "distiller": bundle_distiller(bundle).fingerprint if with_impact else None, "exported": _now(),
            "impact_settings": ({"n_random": n_random, "random_state": random_state, "method": method}
                                if with_impact else None),
            "dimensions": dims, "patterns": records}
    (out / "patterns.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    written.insert(0, out / "patterns.json")
    _write_pattern_csv(out / "patterns.csv", patterns, sheets, impacts, dims, mean_z)
    written.insert(1, out / "patterns.csv")
    if impacts:
        per = pd.concat([impacts[p.name]["table"].assign(pattern=p.name) for p in patterns], ignore_index=True)
        per = per[["pattern", *[c for c in per.columns if c != "pattern"]]]
        per.to_csv(out / "pattern_images.csv", index=False)
        written.insert(2, out / "pattern_images.csv")
    return written


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _write_pattern_csv(file: Path, patterns: Sequence[Pattern], sheets: dict[str, str], impacts: dict[str, dict],
                       dims: list[dict], mean_z: dict[str, np.ndarray]) -> None:
    """``patterns.csv``: one row per pattern; impact columns when computed; ``mean <dimension label>`` per
    dimension (UTF-8: labels hold "·" and the users' names)."""
    keys = ["name", "note", "source", "created", "n_images", "fraction", "contact_sheet"]
    extra = list(SUMMARY_KEYS[1:]) if impacts else []
    z_cols = [f"mean {d['label']}" for d in dims]
    with open(file, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys + extra + z_cols + ["image_ids"])
        w.writeheader()
        for p in patterns:
            row = {"name": p.name, "note": p.note, "source": p.source, "created": p.created,
                   "n_images": len(p.image_ids), "fraction": p.fraction if p.masks is None else "",
                   "contact_sheet": sheets[p.name], "image_ids": ";".join(p.image_ids)}
            if impacts:
                row.update({k: impacts[p.name][k] for k in extra})
            row.update({c: "" if not np.isfinite(v) else f"{v:.6g}" for c, v in zip(z_cols, mean_z[p.name])})
            w.writerow(row)


__all__ = ["Pattern", "PatternStore", "contact_sheet", "dimension_columns", "export_patterns", "pattern_from_concept",
           "pattern_from_selection", "pattern_impact", "pattern_mean_z", "rank_patterns", "region_masks",
           "summarise_impact"]
