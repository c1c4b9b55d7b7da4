"""Single image: an uploaded image against an open bundle (p_fake, neighbours, cell, relevance maps).

Upload only: the bytes of a file the user chose. A URL is never fetched. Decoding goes through
``imageio.decode_image`` (the pixel budget read from the header first, bounded memory, every failure an
``ImageLoadError`` naming the file); with a ``policy`` (the caller's: the app passes the hosted
``HostedPolicy``; an analysis reads no settings) its upload checks (type, size) apply as well.
``check_upload`` runs the cheap checks alone (no pixel decoded); ``analyse_upload`` decodes the upload once.
Embedding and maps of recent uploads are kept in memory (by content hash, encoder, distiller and method), so a
rerun of the app's script does not recompute them; nothing of an upload is written to disk. Budgets for
visitors are the app's business (charged in one place, ``app_pages/glue/budget``).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import InputError
from ..inputs.imageio import decode_image, image_size, sha1_hex
from ..method.bundle_models import bundle_models
from ..method.relevance import relevance_for_images
from ..storage.schema import DEFAULT_METHOD, confidence, p_fake_from_logit, predicted_label

N_MEMO = 16
_MEMO: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_MEMO_LOCK = threading.Lock()


class UploadPolicy(Protocol):
    """The upload checks of a deployment (``hosting.HostedPolicy`` has them): type, bytes and pixel budget."""

    def check_upload_header(self, name: str, data: bytes) -> tuple[int, int]:
        """The cheap checks, no pixel decoded; ``(width, height)``."""
        ...

    def check_upload(self, name: str, data: bytes) -> Image.Image:
        """The cheap checks, then one bounded decode; an RGB image."""
        ...


@dataclass
class SingleImageResult:
    """What the app shows for one upload.

    ``image`` (what the model sees: the centre crop, ``crop x crop`` RGB, on which the maps lie; a strip or a
    12 MP photo is kept no larger than that), ``image_id`` (SHA-1 of the bytes), ``in_bundle`` (the same bytes
    are in the bundle), ``p_fake``, ``logit``, ``pred`` (``"fake"`` when p_fake >= 0.5), ``confidence`` (|2 p - 1|),
    ``z`` ``[16]``, ``neighbours`` (the ``k`` nearest bundle images by Euclidean distance in z: rank,
    image_id, distance, label, generator, p_fake, pred, cell, path), ``cell`` (the nearest neighbour's cell),
    ``map_xy`` (mean map position of the neighbours: where it would sit in the overview), ``maps``
    ``[17, side, side]`` float32 (16 dimensions, then the fake logit), ``method``.
    """

    name: str
    image: Image.Image
    image_id: str
    in_bundle: bool
    p_fake: float
    logit: float
    pred: str
    confidence: float
    z: np.ndarray
    neighbours: pd.DataFrame
    cell: int | None
    map_xy: tuple[float, float]
    maps: np.ndarray
    method: str


def _upload_bytes(name: str, data: bytes) -> bytes:
    """The bytes of an upload; ``InputError`` for a URL or non-bytes (nothing is fetched)."""
    if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"{name}: only uploaded file bytes are accepted (got {type(data).__name__}); "
                         "URLs are not fetched.", "download the image yourself and upload the file.")
    return bytes(data)


def check_upload(name: str, data: bytes, policy: UploadPolicy | None = None) -> tuple[int, int]:
    """The cheap checks of an upload, no pixel decoded: bytes (not a URL), the policy's type and size checks,
    and the pixel budget read from the header (``imageio.pixel_limit``). ``(width, height)``; ``InputError``
    / ``ImageLoadError`` name what is wrong. Safe to run before the visitor's budget and a work slot."""
    data = _upload_bytes(name, data)
    if policy is not None:
        return policy.check_upload_header(name, data)
    return image_size(data, name)


def decode_upload(name: str, data: bytes, policy: UploadPolicy | None = None) -> Image.Image:
    """Bytes of an uploaded file -> RGB image (the checks of :func:`check_upload` first, then one bounded
    decode: in hosted mode reduced to ``imageio.WORKING_SIDE``). ``ImageLoadError`` when the bytes are not a
    readable image. The full decode: run it inside a work slot, after the budget check."""
    data = _upload_bytes(name, data)
    if policy is not None:
        return policy.check_upload(name, data)
    return decode_image(data, name)


def _embed_and_maps(encoder, distiller, image: Image.Image, key: tuple, method: str) -> tuple[np.ndarray, np.ndarray]:
    """``(embedding [D] float32, maps [17, side, side] float32)``, from memory when seen before."""
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
        if hit is not None:
            _MEMO.move_to_end(key)
            return hit
    emb = encoder.encode_images([image]).numpy()[0].astype(np.float32)
    maps = relevance_for_images(encoder, distiller, [image], method)[0].astype(np.float32)
    with _MEMO_LOCK:
        _MEMO[key] = (emb, maps)
        while len(_MEMO) > N_MEMO:
            _MEMO.popitem(last=False)
    return emb, maps


def _z_and_logit(distiller, emb: np.ndarray) -> tuple[np.ndarray, float]:
    """``(z [16] float32, fake logit)`` of one embedding ``[D]``."""
    # torch only when an upload is analysed: the page's cheap checks (this module) run without it
    import torch

    with torch.no_grad():
        z, logit = distiller(torch.from_numpy(emb[None]))
    return z.numpy()[0].astype(np.float32), float(logit[0])


def nearest_images(bundle, z: np.ndarray, k: int = 8) -> pd.DataFrame:
    """The ``k`` bundle images nearest to ``z [16]`` (Euclidean in z), nearest first (ties: bundle order)."""
    zs = bundle.z.astype(np.float64)
    d = np.linalg.norm(zs - np.asarray(z, np.float64)[None], axis=1)
    k = max(0, min(int(k), len(d)))
    idx = np.argsort(d, kind="stable")[:k]
    im = bundle.images.iloc[idx]
    cols = [c for c in ("image_id", "label", "generator", "p_fake", "pred", "cell", "map_x", "map_y", "path")
            if c in im.columns]
    out = im[cols].reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, k + 1))
    out.insert(2, "distance", d[idx].astype(np.float32))
    return out


def analyse_upload(bundle, name: str, data: bytes, encoder=None, k_neighbours: int = 8,
                   method: str = DEFAULT_METHOD, policy: UploadPolicy | None = None) -> SingleImageResult:
    """Analyse one uploaded image (``data``: the file's bytes, ``name``: its file name) with the bundle's
    encoder and distiller: p_fake, z, the ``k_neighbours`` nearest bundle images in z and the cell of the
    nearest, and the 17 relevance maps. ``policy`` (the caller's, e.g. the hosted one) adds the upload limits.
    The encoder defaults to the bundle's own."""
    if int(k_neighbours) < 1:
        raise InputError(f"k_neighbours = {k_neighbours} must be at least 1.", "use e.g. 8.")
    image = decode_upload(name, data, policy)
    image_id = sha1_hex(bytes(data))
    enc, distiller = bundle_models(bundle, encoder)
    key = (image_id, enc.cache_key, distiller.fingerprint, method)
    emb, maps = _embed_and_maps(enc, distiller, image, key, method)
    z, logit = _z_and_logit(distiller, emb)
    p = float(p_fake_from_logit(logit))
    nb = nearest_images(bundle, z, k_neighbours)
    cell = int(nb["cell"].iloc[0]) if "cell" in nb and len(nb) and pd.notna(nb["cell"].iloc[0]) else None
    xy = (float(nb["map_x"].mean()), float(nb["map_y"].mean())) if {"map_x", "map_y"} <= set(nb) else (np.nan, np.nan)
    return SingleImageResult(
        name=Path(str(name)).name, image=enc.preprocessor.resize_and_crop(image).convert("RGB"), image_id=image_id,
        in_bundle=bool((bundle.images["image_id"] == image_id).any()), p_fake=p, logit=logit,
        pred=str(predicted_label(np.asarray(p))), confidence=float(confidence(np.asarray(p))), z=z, neighbours=nb,
        cell=cell, map_xy=xy, maps=maps, method=method)


def clear_memo() -> None:
    """Forget the in-memory embeddings and maps of past uploads."""
    with _MEMO_LOCK:
        _MEMO.clear()


__all__ = ["SingleImageResult", "UploadPolicy", "analyse_upload", "check_upload", "clear_memo", "decode_upload",
           "nearest_images"]
