"""Concepts of a set of images (docs/design.md §3.10, FaXplainer's visual concept extraction).

For every image, its fake-logit relevance map is thresholded at three levels (top 10 %, 25 %, 50 % of the
patches: small, medium, large regions); everything else is painted in the CLIP mean colour, the masked
images are re-encoded and mapped to the 16 dimensions. k-means over all segments of the subset gives the
concepts. The heavy part (masked embeddings ``[n * F, D]`` and the patch masks) is cached in the bundle's
``cache/concepts`` keyed by image ids, method, fractions, encoder and distiller, so clustering the same
subset again (any ``k``) never re-encodes.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import AsapError, InputError
from ..method.bundle_models import bundle_distiller, bundle_model_key, bundle_models
from ..method.relevance_store import bundle_maps
from ..model.preprocess import CLIP_MEAN, ClipPreprocessor
from ..storage.cache import cached_call, hash_key
from ..storage.schema import FAKE_LOGIT, Z_COLUMNS

DEFAULT_FRACTIONS: tuple[float, ...] = (0.10, 0.25, 0.50)
N_EXEMPLARS = 6
N_DOMINANT = 3
CACHE_NAMESPACE = "concepts"
CACHE_VERSION = "concepts-2"


# ----------------------------------------------------------------------------- masking


def mean_fill(mean: Sequence[float] = CLIP_MEAN) -> tuple[int, int, int]:
    """The RGB colour (0..255) of a normalisation mean given in [0, 1]: ``round(mean * 255)``."""
    r, g, b = (int(round(float(m) * 255.0)) for m in mean)
    return r, g, b


def keep_mask(relevance: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean ``[side, side]``: the top ``ceil(fraction * side²)`` patches of ``relevance`` (at least one).

    Ties (e.g. the zeros of a clamped map) go to the earlier patch in row-major order; NaN ranks last.
    """
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.ndim != 2:
        raise InputError(f"relevance must be [side, side], got shape {rel.shape}.", "pass one map, e.g. maps[i, 16].")
    if not 0.0 < float(fraction) <= 1.0:
        raise InputError(f"fraction {fraction} is not in (0, 1].", "use e.g. 0.1, 0.25 or 0.5.")
    flat = np.nan_to_num(rel.reshape(-1), nan=-np.inf)
    n_keep = min(max(math.ceil(float(fraction) * flat.size - 1e-9), 1), flat.size)
    order = np.argsort(-flat, kind="stable")
    keep = np.zeros(flat.size, dtype=bool)
    keep[order[:n_keep]] = True
    return keep.reshape(rel.shape)


def _patch_edges(n_pixels: int, side: int) -> np.ndarray:
    """Pixel boundaries ``[side + 1]`` of ``side`` patches along an axis of ``n_pixels``."""
    return (np.arange(side + 1) * n_pixels) // side


def apply_mask(image: Image.Image, keep: np.ndarray, fill: Sequence[int] | None = None) -> Image.Image:
    """RGB copy of ``image`` with the patches where ``keep [side, side]`` is False painted ``fill`` (0..255)."""
    fill = tuple(fill) if fill is not None else mean_fill()
    arr = np.array(image.convert("RGB"), dtype=np.uint8)  # [H, W, 3], a copy
    keep = np.asarray(keep, dtype=bool)
    rows = np.repeat(keep, np.diff(_patch_edges(arr.shape[0], keep.shape[0])), axis=0)
    pix = np.repeat(rows, np.diff(_patch_edges(arr.shape[1], keep.shape[1])), axis=1)  # [H, W]
    arr[~pix] = np.asarray(fill, dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def mask_image(image: Image.Image, relevance: np.ndarray, fraction: float,
               fill: Sequence[int] | None = None) -> Image.Image:
    """Keep the top ``fraction`` of patches of ``image`` by ``relevance [side, side]``; paint the rest ``fill``.

    ``image`` is already resized and centre-cropped to the model input (S x S px, S a multiple of side in
    practice); ``fill`` is an RGB colour 0..255, by default the CLIP mean colour (``mean * 255``).
    """
    return apply_mask(image, keep_mask(relevance, fraction), fill)


def crop_to_mask(image: Image.Image, keep: np.ndarray) -> Image.Image:
    """Crop ``image`` to the bounding box of the kept patches of ``keep [side, side]``."""
    keep = np.asarray(keep, dtype=bool)
    if not keep.any():
        return image
    r = np.flatnonzero(keep.any(axis=1))
    c = np.flatnonzero(keep.any(axis=0))
    ys = _patch_edges(image.height, keep.shape[0])
    xs = _patch_edges(image.width, keep.shape[1])
    return image.crop((int(xs[c[0]]), int(ys[r[0]]), int(xs[c[-1] + 1]), int(ys[r[-1] + 1])))


# ----------------------------------------------------------------------------- result


@dataclass
class ConceptResult:
    """Concepts of one image subset.

    ``segments``: one row per (image, fraction): image_id, fraction, segment (row number), concept,
    distance (Euclidean, z space, to its centroid), z0..z15 of the masked image, segment_p_fake (the
    distiller on the masked image), label and p_fake of the source image.
    ``concepts``: one row per concept (0 = largest): n_segments, n_images, share_fake (share of the
    labelled segments that come from fake-labelled images; NaN without labels), mean_p_fake (of the source
    images, per segment), dominant_dims (3 dimension indices with the largest standardised shift of the
    centroid from the subset's mean), dominant_shift (those shifts in z units, signed), exemplar_ids,
    exemplar_fractions and exemplar_segments (up to 6 segments nearest the centroid, nearest first).
    ``centers`` ``[k, 16]``; ``masks`` ``[n_segments, side, side]`` bool (kept patches per segment).
    """

    segments: pd.DataFrame
    concepts: pd.DataFrame
    centers: np.ndarray
    masks: np.ndarray
    k: int
    method: str
    fractions: tuple[float, ...]
    _load_image: Callable[[str], Image.Image] | None = field(repr=False, compare=False, default=None)
    _fill: Callable[[], tuple[int, int, int]] = field(repr=False, compare=False, default=mean_fill)

    def segment_image(self, segment: int, crop: bool = True) -> Image.Image:
        """The masked model-input image of one segment (row of ``segments``), cropped to its kept patches."""
        if self._load_image is None:
            raise RuntimeError("this ConceptResult has no image loader (built without a bundle)")
        row = self.segments.iloc[int(segment)]
        masked = apply_mask(self._load_image(row["image_id"]), self.masks[int(segment)], self._fill())
        return crop_to_mask(masked, self.masks[int(segment)]) if crop else masked

    def exemplar_crops(self, concept: int, n: int = N_EXEMPLARS) -> list[Image.Image]:
        """Up to ``n`` masked segment images nearest the centroid of ``concept``, cropped for display."""
        if concept not in set(self.concepts["concept"]):
            raise InputError(f"There is no concept {concept}.", f"concepts are 0..{self.k - 1}.")
        seg = self.segments[self.segments["concept"] == concept].sort_values("distance", kind="stable")
        return [self.segment_image(int(s)) for s in seg["segment"].iloc[:max(int(n), 0)]]


# ----------------------------------------------------------------------------- clustering


def cluster_segments(z: np.ndarray, k: int, random_state: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """k-means (n_init=10) on ``z [n, 16]``: ``(labels [n], centers [k', 16], k')``, concept 0 the largest.

    ``k' = min(k, number of distinct rows of z)``, so every concept has at least one segment.
    """
    from sklearn.cluster import KMeans

    z = np.asarray(z, dtype=np.float64)
    if len(z) == 0:
        raise InputError("There are no segments to cluster.", "select at least one image.")
    k_eff = max(1, min(int(k), len(np.unique(z, axis=0))))
    if k_eff == 1:
        return np.zeros(len(z), dtype=np.int64), z.mean(axis=0, keepdims=True), 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on near-duplicate points
        km = KMeans(n_clusters=k_eff, n_init=10, random_state=random_state).fit(z)
    labels = km.labels_.astype(np.int64)
    sizes = np.bincount(labels, minlength=k_eff)
    order = np.argsort(-sizes, kind="stable")  # old label of new concept 0, 1, ...
    remap = np.empty(k_eff, dtype=np.int64)
    remap[order] = np.arange(k_eff)
    return remap[labels], km.cluster_centers_[order], k_eff


def _concept_table(seg: pd.DataFrame, z: np.ndarray, centers: np.ndarray) -> pd.DataFrame:
    """One row per concept from the segment table (see ``ConceptResult``)."""
    mean = z.mean(axis=0)
    std = z.std(axis=0)
    scale = np.where(std > 1e-12, std, 1.0)
    rows = []
    for c in range(len(centers)):
        part = seg[seg["concept"] == c]
        labelled = part["label"].notna()
        n_lab = int(labelled.sum())
        shift = centers[c] - mean
        dims = np.argsort(-np.abs(shift / scale), kind="stable")[:N_DOMINANT]
        ex = part.sort_values("distance", kind="stable").iloc[:N_EXEMPLARS]
        rows.append({
            "concept": c,
            "n_segments": len(part),
            "n_images": int(part["image_id"].nunique()),
            "share_fake": float((part.loc[labelled, "label"] == "fake").sum() / n_lab) if n_lab else float("nan"),
            "mean_p_fake": float(part["p_fake"].mean()),
            "dominant_dims": [int(d) for d in dims],
            "dominant_shift": [float(shift[d]) for d in dims],
            "exemplar_ids": ex["image_id"].tolist(),
            "exemplar_fractions": [float(f) for f in ex["fraction"]],
            "exemplar_segments": [int(s) for s in ex["segment"]],
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- compute


def _preprocessor_for(bundle, encoder=None) -> ClipPreprocessor:
    """The encoder's preprocessing, else the bundle checkpoint's (read from its files), else CLIP defaults."""
    if encoder is not None:
        return encoder.preprocessor
    info = bundle.encoder_info
    try:
        # torch only here: the other analyses of this module (and bundles) open without it
        from ..model.encoder import inspect_checkpoint

        return inspect_checkpoint(info.model_id).preprocessor
    except (AsapError, OSError):
        return ClipPreprocessor(size=info.image_size, crop_size=info.image_size)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if not fr or any(not 0.0 < f <= 1.0 for f in fr):
        raise InputError(f"fractions {fr} must be non-empty and each in (0, 1].", "use e.g. (0.10, 0.25, 0.50).")
    return fr


def segment_embeddings(bundle, image_ids: list[str], method: str, fractions: tuple[float, ...], encoder,
                       batch_size: int = 64, progress: Callable[[int, int], None] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Masked embeddings ``[n * F, D]`` float32 and keep-masks ``[n * F, side, side]`` bool, image-major.

    Segment ``i * F + j`` is image ``i`` kept at ``fractions[j]`` of its fake-logit map. Not cached here.
    """
    maps = np.asarray(bundle_maps(bundle, image_ids, method, encoder=encoder), np.float32)[:, FAKE_LOGIT]
    pre = encoder.preprocessor
    fill = mean_fill(pre.mean)
    n_seg = len(image_ids) * len(fractions)
    masks = np.zeros((n_seg, *maps.shape[1:]), dtype=bool)
    embeds = np.zeros((n_seg, encoder.embed_dim), dtype=np.float32)
    per_batch = max(1, int(batch_size) // len(fractions))
    for start in range(0, len(image_ids), per_batch):
        pics: list[Image.Image] = []
        for i in range(start, min(start + per_batch, len(image_ids))):
            base = bundle.model_input(image_ids[i], pre, "its concept segments")
            for j, f in enumerate(fractions):
                keep = keep_mask(maps[i], f)
                masks[i * len(fractions) + j] = keep
                pics.append(apply_mask(base, keep, fill))
        lo = start * len(fractions)
        embeds[lo:lo + len(pics)] = encoder.encode_crops(pics).numpy()
        if progress:
            progress(lo + len(pics), n_seg)
    return embeds, masks


def concept_cache_key(bundle, image_ids: Sequence[str], method: str, fractions: Sequence[float],
                      encoder=None) -> str:
    """Cache key of the masked embeddings of one subset (ids, method, fractions, encoder, distiller)."""
    return hash_key(CACHE_VERSION, list(image_ids), method, tuple(float(f) for f in fractions),
                    bundle_model_key(bundle, encoder))


def compute_concepts(bundle, image_ids: list[str], k: int = 3, method: str = "last-block",
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, encoder=None, random_state: int = 0,
                     batch_size: int = 64, progress: Callable[[int, int], None] | None = None) -> ConceptResult:
    """Concepts of ``image_ids`` of an open ``Bundle``: ``len(image_ids) * len(fractions)`` segments, k-means.

    ``k`` is clamped to the number of distinct segments. The masked embeddings are cached in
    ``bundle.cache_dir``; only a cache miss loads the encoder (``encoder`` or the bundle's own).
    ``progress(done, total)`` reports encoded segments.
    """
    ids = bundle.check_ids(image_ids)
    if not ids:
        raise InputError("No images were selected for concepts.", "select a cell or at least one image.")
    if int(k) < 1:
        raise InputError(f"k = {k}: the number of concepts must be at least 1.", "use k >= 1 (default 3).")
    table = bundle.images.set_index("image_id")
    fr = _check_fractions(fractions)

    def compute():
        enc, _ = bundle_models(bundle, encoder)
        return segment_embeddings(bundle, ids, method, fr, enc, batch_size, progress)

    def save(value, d: Path) -> None:
        np.save(d / "embeds.npy", value[0])
        np.save(d / "masks.npy", value[1])
        (d / "info.json").write_text(json.dumps({"image_ids": ids, "method": method, "fractions": fr}))

    def load(d: Path):
        return np.load(d / "embeds.npy"), np.load(d / "masks.npy")

    key = concept_cache_key(bundle, ids, method, fr, encoder)
    embeds, masks = cached_call(bundle.cache_dir, CACHE_NAMESPACE, key, compute, save, load)  # read-only: not stored
    z, seg_p = bundle_distiller(bundle).predict(embeds)

    labels, centers, k_eff = cluster_segments(z, k, random_state)
    src = table.loc[ids]
    n_f = len(fr)
    seg = pd.DataFrame({
        "image_id": np.repeat(ids, n_f),
        "fraction": np.tile(np.asarray(fr, np.float64), len(ids)),
        "segment": np.arange(len(z)),
        "concept": labels,
        "distance": np.linalg.norm(z - centers[labels], axis=1),
    })
    seg = pd.concat([seg, pd.DataFrame(z.astype(np.float32), columns=Z_COLUMNS)], axis=1)
    seg["segment_p_fake"] = seg_p.astype(np.float32)
    seg["label"] = np.repeat(src["label"].to_numpy(dtype=object), n_f)
    seg["p_fake"] = np.repeat(src["p_fake"].to_numpy(np.float32), n_f)

    pre_cache = lru_cache(maxsize=1)(lambda: _preprocessor_for(bundle, encoder))
    return ConceptResult(
        segments=seg, concepts=_concept_table(seg, z.astype(np.float64), centers), centers=centers.astype(np.float32),
        masks=masks, k=k_eff, method=method, fractions=fr,
        _load_image=lambda i: bundle.model_input(i, pre_cache(), "its concept crop", thumbnail_fallback=True),
        _fill=lambda: mean_fill(pre_cache().mean))


__all__ = ["ConceptResult", "apply_mask", "cluster_segments", "compute_concepts", "concept_cache_key",
           "crop_to_mask", "keep_mask", "mask_image", "mean_fill", "segment_embeddings"]
