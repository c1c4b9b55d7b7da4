"""Relevance maps on demand, cached per image id, encoder, distiller and method (never computed twice)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .cache import RowStore

N_TARGETS = 17


def relevance_namespace(encoder_key: str, distiller_fingerprint: str, method: str) -> str:
    """Folder name of the map store for one encoder + distiller + method."""
    return f"rel-{method}-{encoder_key}-{distiller_fingerprint}"


def map_store(cache_dir: str | Path, encoder_key: str, distiller_fingerprint: str, method: str, side: int) -> RowStore:
    """The RowStore of ``[17, side, side]`` float16 maps under ``cache_dir``."""
    return RowStore(cache_dir, relevance_namespace(encoder_key, distiller_fingerprint, method), (N_TARGETS, side, side))


def compute_missing_maps(store: RowStore, encoder, distiller, images: pd.DataFrame, method: str,
                         batch_size: int | None = None, progress: Callable[[int, int], None] | None = None, *,
                         decoder: str = "auto", num_workers: int | None = None) -> list[tuple[str, str]]:
    """Compute and store maps ``[17, side, side]`` (float16) for the rows of ``images`` (``image_id``,
    ``path``) that ``store`` lacks, ``batch_size`` images per batched VJP (``None``:
    ``device.relevance_batch_size``: 128 on GPU, 8 on CPU); each batch is stored at once.

    Images are decoded by the embedding stage's decoder (``embedding.decoded_batches``: threads on CPU,
    on demand; nvJPEG or processes ahead of the model on GPU; ``decoder="inline"`` decodes in this
    thread). Returns ``(path, reason)`` for images that could not be read any more.
    """
    from contextlib import closing

    from .device import keep_freed_memory, relevance_batch_size
    from .embedding import approximate_decoding, decoded_batches
    from .relevance import AttentionRelevance

    todo = images[images["image_id"].isin(store.missing(images["image_id"]))]
    ids, paths = todo["image_id"].tolist(), todo["path"].tolist()
    failures: list[tuple[str, str]] = []
    total, done = len(ids), 0
    if progress:
        progress(0, total)
    if not total:
        return failures
    keep_freed_memory(encoder.device)
    explainer = AttentionRelevance(encoder, distiller, method)
    fast = approximate_decoding(encoder.dtype)
    bs = relevance_batch_size(encoder.device, batch_size)
    with closing(decoded_batches(paths, range(total), encoder.preprocessor, encoder.device, bs,
                                 decoder=decoder, num_workers=num_workers, fast_decode=fast, thumb_side=0)) as batches:
        for dec, px in batches:
            failures.extend((path, reason) for _, path, reason in dec.failed)
            if px is not None:
                maps = explainer.attribute(px, target=None)
                store.put([ids[i] for i in dec.rows], maps.numpy().astype(np.float16))
            done += len(dec)
            if progress:
                progress(done, total)
    return failures


def precompute_relevance(cache_dir: str | Path, info, load_encoder: Callable, distiller, images: pd.DataFrame,
                         method: str, batch_size: int | None = None,
                         progress: Callable[[int, int], None] | None = None, decoder: str = "auto"
                         ) -> RowStore:
    """Maps for every image of ``images`` into the shared cache; returns the store (to copy into a bundle).

    ``info`` is the checkpoint's ``CheckpointInfo``; ``load_encoder()`` is called only if maps are missing.
    """
    store = map_store(cache_dir, info.cache_key, distiller.fingerprint, method, info.patch_side)
    if store.missing(images["image_id"]):
        compute_missing_maps(store, load_encoder(), distiller, images, method, batch_size, progress, decoder=decoder)
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
        # decoded in threads: a worker process would re-import the app's script under Streamlit
        failures = compute_missing_maps(store, encoder, bundle.distiller, rows, method, progress=progress,
                                        decoder="thread")
        if failures:
            from .errors import BundleError

            path, reason = failures[0]
            raise BundleError(f"{path}: {reason}; its relevance maps cannot be computed.",
                              "keep the analysed images where they were when the bundle was made.")
    return store.get(list(image_ids))
