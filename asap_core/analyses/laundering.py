"""Robustness to laundering: re-encode images (resize, then JPEG) and watch p_fake and the maps move.

Cozzolino et al. ("Raising the bar of AI-generated image detection with CLIP") report CLIP-based detectors
hold up better than earlier detectors on such impaired / laundered images; this module lets a user see how the
bundle's detector does. ``launder`` is one re-encoding; ``laundering_table`` runs a grid of JPEG qualities and
resize factors over a set of images (one row per image and setting, cached in the bundle);
``laundering_summary`` condenses it per setting; ``laundered_view`` gives one image's before / after maps.
"""
from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import InputError
from ..inputs.imageio import to_rgb
from ..method.bundle_models import bundle_distiller, bundle_model_key, bundle_models
from ..method.relevance import relevance_for_images
from ..method.relevance_store import bundle_maps
from ..storage.cache import cached_call, hash_key
from ..storage.schema import DECISION_THRESHOLD, FAKE_LOGIT

DEFAULT_QUALITIES: tuple[int, ...] = (95, 75, 50)
DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.75, 0.5)
MAX_SCALE = 4.0
CACHE_NAMESPACE = "laundering"
CACHE_VERSION = "laundering-1"


def _check_setting(jpeg_quality: int | None, scale: float) -> tuple[int | None, float]:
    if jpeg_quality is not None:
        q = int(jpeg_quality)
        if not 1 <= q <= 100:
            raise InputError(f"JPEG quality {jpeg_quality} is not in 1..100.", "use e.g. 95, 75 or 50.")
        jpeg_quality = q
    s = float(scale)
    if not 0.0 < s <= MAX_SCALE:
        raise InputError(f"Resize factor {scale} is not in (0, {MAX_SCALE:g}].", "use e.g. 1.0, 0.75 or 0.5.")
    return jpeg_quality, s


MAX_ASPECT = 4  # strips are cut to their centre (long side <= 4 x short) before laundering: the model sees the centre


def _centre_region(im: Image.Image) -> Image.Image:
    """``im``, or its centre with the long side at most ``MAX_ASPECT`` times the short one (which holds all
    the model sees), so that resizing and re-encoding a strip stay as cheap as for an ordinary image."""
    w, h = im.size
    short = min(w, h)
    if max(w, h) <= MAX_ASPECT * short:
        return im
    keep = MAX_ASPECT * short
    left, top = (w - min(w, keep)) // 2, (h - min(h, keep)) // 2
    return im.crop((left, top, left + min(w, keep), top + min(h, keep)))


def launder(image: Image.Image, jpeg_quality: int | None = 75, scale: float = 1.0) -> Image.Image:
    """Resize by ``scale`` (bicubic; each side ``max(1, round(side * scale))``), then JPEG re-encode at
    ``jpeg_quality`` (1..100, Pillow's default 4:2:0 chroma subsampling) in memory; ``None`` skips the JPEG
    step. Returns a new RGB image."""
    q, s = _check_setting(jpeg_quality, scale)
    im = _centre_region(to_rgb(image))
    if s != 1.0:
        w, h = im.size
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
    if q is None:
        return im.copy()
    buf = io.BytesIO()
    try:
        im.save(buf, "JPEG", quality=q)
    except (OSError, ValueError) as exc:  # e.g. a side over JPEG's 65,500 pixels
        raise InputError(f"A {im.width}x{im.height} image cannot be JPEG-encoded ({exc}).",
                         "launder at a smaller scale.") from None
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


def _p_fake(encoder, distiller, pics: Sequence[Image.Image], batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(pics), batch_size):
        emb = encoder.encode_images(list(pics[start:start + batch_size])).numpy()
        out.append(distiller.predict(emb)[1])
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps (any equal shape); NaN when either is constant."""
    x = np.asarray(a, np.float64).reshape(-1)
    y = np.asarray(b, np.float64).reshape(-1)
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else float("nan")


def _settings(qualities: Sequence[int | None], scales: Sequence[float]) -> list[tuple[int | None, float]]:
    out = [_check_setting(q, s) for q, s in itertools.product(qualities, scales)]
    if not out:
        raise InputError("No laundering setting was given.", "pass at least one quality and one scale.")
    return list(dict.fromkeys(out))


def laundering_table(bundle, image_ids: Sequence[str], qualities: Sequence[int | None] = DEFAULT_QUALITIES,
                     scales: Sequence[float] = DEFAULT_SCALES, encoder=None, with_maps: bool = False,
                     method: str = "last-block", batch_size: int = 32,
                     progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Re-encode ``image_ids`` at every (quality, scale) of ``qualities`` x ``scales`` and rerun the detector.

    One row per image and setting, image-major: image_id, label, quality (``<NA>`` = no JPEG step), scale,
    p_fake (laundered), p_fake_original (the detector on the decoded original, same path), delta
    (``p_fake - p_fake_original``), flipped (the prediction crossed 0.5); with ``with_maps`` also map_corr,
    the Pearson correlation of the fake-logit relevance map before and after. Cached in the bundle;
    ``encoder`` (default: the bundle's own) is loaded only on a cache miss. ``progress(done, total)`` per image.
    """
    ids = bundle.check_ids(image_ids)
    if not ids:
        raise InputError("No images were chosen for laundering.", "select at least one image.")
    settings = _settings(qualities, scales)

    def compute() -> pd.DataFrame:
        enc, _ = bundle_models(bundle, encoder)
        return _launder_rows(bundle, ids, settings, enc, with_maps, method, max(1, int(batch_size)), progress)

    key = hash_key(CACHE_VERSION, ids, settings, bool(with_maps), method if with_maps else "",
                   bundle_model_key(bundle, encoder))
    return cached_call(bundle.cache_dir, CACHE_NAMESPACE, key, compute,
                       lambda t, d: t.to_parquet(d / "table.parquet", index=False),
                       lambda d: pd.read_parquet(d / "table.parquet"))


def _launder_rows(bundle, ids, settings, encoder, with_maps, method, batch_size, progress) -> pd.DataFrame:
    distiller = bundle_distiller(bundle)
    labels = bundle.images.set_index("image_id")["label"]
    per = max(1, batch_size // max(1, len(settings)))
    frames = []
    for start in range(0, len(ids), per):
        chunk = ids[start:start + per]
        originals = [bundle.decode(i, "its laundering") for i in chunk]
        p0 = _p_fake(encoder, distiller, originals, batch_size)
        pics = [launder(im, q, s) for im in originals for q, s in settings]
        p = _p_fake(encoder, distiller, pics, batch_size)
        n_set = len(settings)
        part = pd.DataFrame({
            "image_id": np.repeat(chunk, n_set),
            "label": np.repeat(labels.loc[chunk].to_numpy(dtype=object), n_set),
            "quality": pd.array([q for _ in chunk for q, _ in settings], dtype="Int64"),
            "scale": np.tile([s for _, s in settings], len(chunk)).astype(np.float64),
            "p_fake": p,
            "p_fake_original": np.repeat(p0, n_set),
        })
        part["delta"] = part["p_fake"] - part["p_fake_original"]
        part["flipped"] = (part["p_fake"] >= DECISION_THRESHOLD) != (part["p_fake_original"] >= DECISION_THRESHOLD)
        if with_maps:
            before = np.asarray(bundle_maps(bundle, chunk, method, encoder=encoder), np.float32)[:, FAKE_LOGIT]
            after = relevance_for_images(encoder, distiller, pics, method)[:, FAKE_LOGIT]
            part["map_corr"] = [map_correlation(before[k // n_set], after[k]) for k in range(len(pics))]
        frames.append(part)
        if progress:
            progress(min(start + per, len(ids)), len(ids))
    return pd.concat(frames, ignore_index=True)


def laundering_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (quality, scale) of a ``laundering_table``: n, mean_delta, mean_abs_delta, n_flipped,
    flip_rate, accuracy and accuracy_original (labelled images, threshold 0.5), roc_auc and
    roc_auc_original (when both classes are present), mean_map_corr (when the table has maps)."""
    from sklearn.metrics import roc_auc_score

    rows = []
    for (q, s), g in table.groupby(["quality", "scale"], dropna=False, sort=True):
        lab = g[g["label"].isin(["real", "fake"])]
        y = (lab["label"] == "fake").to_numpy()
        both = len(np.unique(y)) == 2

        def acc(col: str, lab: pd.DataFrame = lab, y: np.ndarray = y) -> float:  # this group's rows
            return float(((lab[col] >= DECISION_THRESHOLD).to_numpy() == y).mean()) if len(lab) else float("nan")

        def auc(col: str, lab: pd.DataFrame = lab, y: np.ndarray = y, both: bool = both) -> float:
            return float(roc_auc_score(y, lab[col])) if both else float("nan")

        row = {
            "quality": q, "scale": s, "n": len(g),
            "mean_delta": float(g["delta"].mean()), "mean_abs_delta": float(g["delta"].abs().mean()),
            "n_flipped": int(g["flipped"].sum()), "flip_rate": float(g["flipped"].mean()),
            "accuracy": acc("p_fake"), "accuracy_original": acc("p_fake_original"),
            "roc_auc": auc("p_fake"), "roc_auc_original": auc("p_fake_original"),
        }
        if "map_corr" in g:
            row["mean_map_corr"] = float(g["map_corr"].mean())
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        out["quality"] = out["quality"].astype("Int64")
    return out


def laundered_view(bundle, image_id: str, jpeg_quality: int | None, scale: float, encoder=None,
                   method: str = "last-block") -> dict:
    """One image before and after laundering, for display.

    ``{"original": PIL, "laundered": PIL, "p_fake_original", "p_fake", "maps_original" [17, side, side],
    "maps" [17, side, side] (float32), "map_corr" (fake-logit maps)}``. The original's maps come from the
    bundle's map cache; the laundered image's are computed (one forward + one batched VJP).
    """
    q, s = _check_setting(jpeg_quality, scale)
    image_id = bundle.check_ids([image_id])[0]
    enc, distiller = bundle_models(bundle, encoder)
    original = bundle.decode(image_id, "its laundering")
    laundered = launder(original, q, s)
    p = _p_fake(enc, distiller, [original, laundered], 2)
    before = np.asarray(bundle_maps(bundle, [image_id], method, encoder=enc), np.float32)[0]
    after = relevance_for_images(enc, distiller, [laundered], method)[0].astype(np.float32)
    return {"original": original, "laundered": laundered, "p_fake_original": float(p[0]), "p_fake": float(p[1]),
            "maps_original": before, "maps": after,
            "map_corr": map_correlation(before[FAKE_LOGIT], after[FAKE_LOGIT])}


__all__ = ["DEFAULT_QUALITIES", "DEFAULT_SCALES", "launder", "laundered_view", "laundering_summary",
           "laundering_table", "map_correlation"]
