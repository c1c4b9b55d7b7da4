"""Relevance maps on demand, cached per image id, encoder, distiller and method (never computed twice)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .cache import RowStore
from .errors import ImageLoadError
from .imageio import decode_image, read_bytes

N_TARGETS = 17


def relevance_namespace(encoder_key: str, distiller_fingerprint: str, method: str) -> str:
    """Folder name of the map store for one encoder + distiller + method."""
    return f"rel-{method}-{encoder_key}-{distiller_fingerprint}"


def map_store(cache_dir: str | Path, encoder_key: str, distiller_fingerprint: str, method: str, side: int) -> RowStore:
    """The RowStore of ``[17, side, side]`` float16 maps under ``cache_dir``."""
    return RowStore(cache_dir, relevance_namespace(encoder_key, distiller_fingerprint, method), (N_TARGETS, side, side))


def compute_missing_maps(store: RowStore, encoder, distiller, images: pd.DataFrame, method: str,
                         batch_size: int = 32, progress: Callable[[int, int], None] | None = None
                         ) -> list[tuple[str, str]]:
    """Compute and store maps for the rows of ``images`` (``image_id``, ``path``) that ``store`` lacks.

    Returns ``(path, reason)`` for images that could not be read any more.
    """
    from .relevance import relevance_for_images

    todo = images[images["image_id"].isin(store.missing(images["image_id"]))]
    failures: list[tuple[str, str]] = []
    total = len(todo)
    if progress:
        progress(0, total)
    for start in range(0, total, batch_size):
        chunk = todo.iloc[start:start + batch_size]
        ids, pics = [], []
        for image_id, path in zip(chunk["image_id"], chunk["path"]):
            try:
                pics.append(decode_image(read_bytes(path), path))
                ids.append(image_id)
            except ImageLoadError as exc:
                failures.append((path, exc.reason))
        if pics:
            maps = relevance_for_images(encoder, distiller, pics, method, batch_size=batch_size)
            store.put(ids, np.asarray(maps, np.float16))
        if progress:
            progress(min(start + batch_size, total), total)
    return failures


def precompute_relevance(cache_dir: str | Path, info, load_encoder: Callable, distiller, images: pd.DataFrame,
                         method: str, batch_size: int = 32, progress: Callable[[int, int], None] | None = None
                         ) -> RowStore:
    """Maps for every image of ``images`` into the shared cache; returns the store (to copy into a bundle).

    ``info`` is the checkpoint's ``CheckpointInfo``; ``load_encoder()`` is called only if maps are missing.
    """
    store = map_store(cache_dir, info.cache_key, distiller.fingerprint, method, info.patch_side)
    if store.missing(images["image_id"]):
        compute_missing_maps(store, load_encoder(), distiller, images, method, batch_size, progress)
    return store


def bundle_maps(bundle, image_ids: list[str], method: str = "last-block", encoder=None,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Maps ``[n, 17, side, side]`` (float16) for ``image_ids`` of an open ``Bundle``; computed once, then cached
    in the bundle's ``cache/``. ``encoder`` defaults to the bundle's own (loaded on first need)."""
    enc_meta = bundle.meta["encoder"]
    store = map_store(bundle.cache_dir, enc_meta["cache_key"], bundle.distiller.fingerprint, method,
                      enc_meta["patch_side"])
    missing = store.missing(image_ids)
    if missing:
        encoder = encoder or bundle.encoder(attn_implementation="eager")
        rows = bundle.images.set_index("image_id").loc[missing, ["path"]].reset_index()
        failures = compute_missing_maps(store, encoder, bundle.distiller, rows, method, progress=progress)
        if failures:
            from .errors import BundleError

            path, reason = failures[0]
            raise BundleError(f"{path}: {reason}; its relevance maps cannot be computed.",
                              "keep the analysed images where they were when the bundle was made.")
    return store.get(list(image_ids))
