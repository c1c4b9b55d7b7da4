"""Relevance maps on demand, cached per image id, encoder, distiller and method (never computed twice)."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import BundleError
from ..model.device import dtype_name, keep_freed_memory, relevance_batch_size
from ..model.embedding import approximate_decoding, decoded_batches
from ..storage.cache import RowSink, RowStore
from ..storage.schema import N_TARGETS
from .bundle_models import bundle_distiller, bundle_models
from .relevance import AttentionRelevance

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


RELEVANCE_VERSION = 1  # bump when the maps of a method change for the same encoder and distiller


def relevance_namespace(encoder_key: str, distiller_fingerprint: str, method: str) -> str:
    """Folder name of the map store for one encoder + distiller + method (and ``RELEVANCE_VERSION``)."""
    return f"rel-v{RELEVANCE_VERSION}-{method}-{encoder_key}-{distiller_fingerprint}"


def map_store(cache_dir: str | Path, encoder_key: str, distiller_fingerprint: str, method: str, side: int) -> RowStore:
    """The RowStore of ``[17, side, side]`` float16 maps under ``cache_dir`` (this process's one store of that
    folder: ``RowStore.shared``)."""
    namespace = relevance_namespace(encoder_key, distiller_fingerprint, method)
    return RowStore.shared(cache_dir, namespace, (N_TARGETS, side, side))


#: Least images per batched VJP from kept last-layer inputs (one layer per image: small batches waste
#: calls; the rate is flat from 8 to 64 on CPU).
LAST_INPUT_BATCH = 64


def last_input_store(cache_dir: str | Path, info, dtype: torch.dtype) -> RowStore:
    """The RowStore of the last layer's inputs ``[T, d]`` float16 that the embedding pass of ``analyze``
    keeps for its ``last-block`` relevance pass (``T = patch_side² + 1``, ``d = info.hidden_size``); keyed
    by encoder and precision. ``precompute_relevance`` deletes the rows once it has used them."""
    return RowStore(cache_dir, f"lastin-v{RELEVANCE_VERSION}-{info.cache_key}-{dtype_name(dtype)}",
                    (info.patch_side ** 2 + 1, info.hidden_size))


def keeps_last_inputs(device: torch.device) -> bool:
    """Whether ``analyze --relevance last-block`` keeps the last-layer inputs on ``device``: on CPU, where the
    model bounds the rate and the kept rows make the relevance pass many times faster (no decode, one layer
    instead of all) for little extra cost in the embedding pass. Not on a GPU: there the decoder bounds
    both passes and the rows' disk traffic has not been measured against decoding again."""
    return device.type == "cpu"


def last_input_bytes(info, n_images: int) -> int:
    """Disk that ``last_input_store`` rows of ``n_images`` take (float16), in bytes."""
    return int(n_images) * (info.patch_side ** 2 + 1) * info.hidden_size * 2


def compute_missing_maps(store: RowSink, encoder, distiller, images: pd.DataFrame, method: str,
                         batch_size: int | None = None, progress: Callable[[int, int], None] | None = None, *,
                         decoder: str = "auto", num_workers: int | None = None,
                         last_inputs: RowStore | None = None) -> list[tuple[str, str]]:
    """Compute and store maps ``[17, side, side]`` (float16) for the rows of ``images`` (``image_id``,
    ``path``) that ``store`` lacks, ``batch_size`` images per batched VJP (``None``:
    ``device.relevance_batch_size``: 128 on GPU, 8 on CPU); each batch is stored at once.

    ``last-block`` maps of images whose last-layer input ``last_inputs`` holds start from there
    (``AttentionRelevance.attribute_from_last_input``, at least ``LAST_INPUT_BATCH`` at a time: no decode,
    one layer). The others are decoded by the embedding stage's decoder (``embedding.decoded_batches``:
    threads on CPU, on demand; nvJPEG or processes ahead of the model on GPU; ``decoder="inline"``
    decodes in this thread) and run through the whole model. Returns ``(path, reason)`` for images that
    could not be read any more, or whose bytes no longer hash to their ``image_id`` (``imageio.read_checked``).
    """
    todo = images[images["image_id"].isin(store.missing(images["image_id"]))]
    failures: list[tuple[str, str]] = []
    total, done = len(todo), 0
    if progress:
        progress(0, total)
    if not total:
        return failures
    keep_freed_memory(encoder.device)
    explainer = AttentionRelevance(encoder, distiller, method)
    if last_inputs is not None and method == "last-block":
        done, from_pixels = _maps_from_last_inputs(store, explainer, todo["image_id"], last_inputs,
                                                   relevance_batch_size(encoder.device, batch_size), total, progress)
        todo = todo[todo["image_id"].isin(from_pixels)]
    ids, paths = todo["image_id"].tolist(), todo["path"].tolist()
    if not ids:
        return failures
    fast = approximate_decoding(encoder.dtype)
    bs = relevance_batch_size(encoder.device, batch_size)
    with closing(decoded_batches(paths, range(len(ids)), encoder.preprocessor, encoder.device, bs, ids=ids,
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


def _maps_from_last_inputs(store: RowSink, explainer, ids: pd.Series, last_inputs: RowStore, batch_size: int,
                           total: int, progress: Callable[[int, int], None] | None) -> tuple[int, set[str]]:
    """Maps of the ``ids`` whose last-layer input ``last_inputs`` holds, at least ``LAST_INPUT_BATCH`` per
    batched VJP, stored as they are done. Returns (images done, ids that need the pixel path)."""
    import torch

    have = set(ids) - set(last_inputs.missing(ids))
    from_pixels = set(ids) - have
    kept = [i for i in ids if i in have]
    step, done = max(LAST_INPUT_BATCH, batch_size), 0
    for start in range(0, len(kept), step):
        chunk = kept[start:start + step]
        try:
            h = last_inputs.get(chunk)
        except (KeyError, OSError):  # deleted meanwhile (another run finished with them): from the pixels
            from_pixels.update(chunk)
            continue
        maps = explainer.attribute_from_last_input(torch.from_numpy(h), target=None)
        store.put(chunk, maps.numpy().astype(np.float16))
        done += len(chunk)
        if progress:
            progress(done, total)
    return done, from_pixels


def precompute_relevance(cache_dir: str | Path, info, load_encoder: Callable, distiller, images: pd.DataFrame,
                         method: str, batch_size: int | None = None,
                         progress: Callable[[int, int], None] | None = None, decoder: str = "auto",
                         last_inputs: RowStore | None = None) -> RowStore:
    """Maps for every image of ``images`` into the shared cache; returns the store (to copy into a bundle).

    ``info`` is the checkpoint's ``CheckpointInfo``; ``load_encoder()`` is called only if maps are missing.
    ``last_inputs``: the embedding pass's ``last_input_store``; used where it holds an image, and its rows
    of these images are deleted once every map is stored (an interrupted run keeps them for the rerun).
    """
    store = map_store(cache_dir, info.cache_key, distiller.fingerprint, method, info.patch_side)
    if store.missing(images["image_id"]):
        compute_missing_maps(store, load_encoder(), distiller, images, method, batch_size, progress, decoder=decoder,
                             last_inputs=last_inputs)
    if last_inputs is not None:
        last_inputs.discard(images["image_id"])
    return store


def bundle_map_store(bundle, method: str) -> RowStore:
    """The map store of an open ``Bundle`` for ``method`` (in the bundle's ``cache/``). Bundles written before
    store names carried a version hold version-1 maps under ``rel-METHOD-...``: those are read as they are."""
    enc = bundle.encoder_info
    fingerprint = bundle_distiller(bundle).fingerprint
    store = map_store(bundle.cache_dir, enc.cache_key, fingerprint, method, enc.patch_side)
    legacy = f"rel-{method}-{enc.cache_key}-{fingerprint}"
    if RELEVANCE_VERSION == 1 and not store.dir.is_dir() and (bundle.cache_dir / legacy).is_dir():
        return RowStore.shared(bundle.cache_dir, legacy, store.row_shape)
    return store


def missing_maps(bundle, image_ids: list[str], method: str) -> list[str]:
    """The ids of ``bundle`` whose maps for ``method`` are not cached yet (computing them needs the encoder)."""
    return bundle_map_store(bundle, method).missing(image_ids)


def bundle_maps(bundle, image_ids: list[str], method: str = "last-block", encoder=None,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Maps ``[n, 17, side, side]`` (float16) for ``image_ids`` of an open ``Bundle``; computed once, then cached
    in the bundle's ``cache/``. ``encoder`` defaults to the bundle's own (loaded on first need)."""
    store = bundle_map_store(bundle, method)
    missing = store.missing(image_ids)
    if missing:
        encoder, distiller = bundle_models(bundle, encoder)
        rows = bundle.images.set_index("image_id").loc[missing, ["path"]].reset_index()
        # decoded in threads: a worker process would re-import the app's script under Streamlit
        failures = compute_missing_maps(store, encoder, distiller, rows, method, progress=progress,
                                        decoder="thread")
        if failures:
            path, reason = failures[0]
            raise BundleError(f"{path}: {reason}; its relevance maps cannot be computed.",
                              "keep the analysed images where they were when the bundle was made.")
    return store.get_array(list(image_ids))
