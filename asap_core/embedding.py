"""Embedding stage: decode files in worker processes while the model encodes, cache every finished batch.

Memory stays flat: at most ``prefetch`` batches of decoded pixels are in flight at any time.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .cache import RowStore
from .errors import ImageLoadError
from .imageio import decode_image, make_thumbnail, read_bytes
from .preprocess import ClipPreprocessor

if TYPE_CHECKING:
    from .encoder import ClipEncoder

Progress = Callable[[int, int], None]


@dataclass
class DecodeResult:
    """Decoded pixels ``[n, 3, S, S]`` for the ok items, their thumbnails, and ``(path, reason)`` failures."""

    ok: list[int] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)
    thumbs: list[bytes] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)


def decode_batch(items: Sequence[tuple[int, str]], preprocessor: ClipPreprocessor, thumb_side: int = 128
                 ) -> DecodeResult:
    """Decode ``(index, path)`` items into CLIP pixels and JPEG thumbnails; failures are collected, not raised."""
    res = DecodeResult()
    for idx, path in items:
        try:
            image = decode_image(read_bytes(path), path)
            res.pixels.append(preprocessor.to_array(image))
            res.thumbs.append(make_thumbnail(image, thumb_side))
            res.ok.append(idx)
        except ImageLoadError as exc:
            res.failed.append((idx, path, exc.reason))
        except Exception as exc:  # noqa: BLE001 - a codec bug must not stop the run; report it
            res.failed.append((idx, path, f"could not be decoded ({type(exc).__name__}: {exc})"))
    return res


def default_workers() -> int:
    """Decode processes: one per core, leaving the model its threads (at least 1)."""
    return max(1, (os.cpu_count() or 1) - 1)


def embed_files(load_encoder: Callable[[], "ClipEncoder"], preprocessor: ClipPreprocessor, paths: Sequence[str], ids: Sequence[str], embed_store: RowStore, thumb_store: RowStore,
                batch_size: int = 64, num_workers: int | None = None, prefetch: int = 3,
                progress: Progress | None = None) -> list[tuple[str, str]]:
    """Embed the images ``paths`` (ids ``ids``) that ``embed_store`` lacks; store embeddings and thumbnails.

    ``load_encoder()`` is called only if something is missing (a fully cached run never loads the model).

    Returns the failures as ``(path, reason)``. Each finished batch is stored at once (an interrupted run
    keeps it). ``num_workers=0`` decodes in this process.
    """
    todo = [i for i, image_id in enumerate(ids) if image_id not in embed_store]
    total, done = len(todo), 0
    failures: list[tuple[str, str]] = []
    if progress:
        progress(0, total)
    if not todo:
        return failures
    encoder = load_encoder()
    workers = default_workers() if num_workers is None else num_workers
    batches = [[(i, paths[i]) for i in todo[s:s + batch_size]] for s in range(0, total, batch_size)]
    pool = mp.get_context("spawn").Pool(workers) if workers > 0 else None
    try:
        pending: deque = deque()

        def submit(batch):
            if pool is None:
                pending.append([decode_batch(batch, preprocessor)])
                return
            chunks = [batch[k::workers] for k in range(workers) if batch[k::workers]]
            pending.append([pool.apply_async(decode_batch, (c, preprocessor)) for c in chunks])

        it = iter(batches)
        for batch in it:
            submit(batch)
            if len(pending) >= prefetch:
                break
        while pending:
            parts = [p if isinstance(p, DecodeResult) else p.get() for p in pending.popleft()]
            nxt = next(it, None)
            if nxt is not None:
                submit(nxt)
            ok = [i for r in parts for i in r.ok]
            for r in parts:
                failures.extend((path, reason) for _, path, reason in r.failed)
            if ok:
                import torch

                pixels = torch.from_numpy(np.stack([px for r in parts for px in r.pixels]))
                emb = encoder.encode(pixels).numpy().astype(np.float32)
                batch_ids = [ids[i] for i in ok]
                thumb_store.put(batch_ids, [t for r in parts for t in r.thumbs])
                embed_store.put(batch_ids, emb)
            done += sum(len(r.ok) + len(r.failed) for r in parts)
            if progress:
                progress(done, total)
    finally:
        if pool is not None:
            pool.terminate()
    return failures
