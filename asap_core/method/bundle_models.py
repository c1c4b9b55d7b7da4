"""A bundle's models: its CLIP encoder and its distiller, loaded on first need and shared.

Not a method of ``Bundle``: ``storage`` sits below ``model`` and ``method`` and opens a bundle without
them. This module sits in ``method`` (not ``pipeline``) so that every caller may import it: the map store
(``method.relevance_store``), the analyses, the pipeline and the app's glue.

The encoder comes from the one encoder factory (``model.factory.load_encoder``, cached per checkpoint);
the distiller is loaded once per bundle folder and kept while its model files are unchanged (a bundle
written again in place loads afresh).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from ..storage import schema as S

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..model.encoder import ClipEncoder
    from ..storage.bundle import Bundle
    from .distiller import Distiller

MAX_DISTILLERS = 16  # distillers kept in memory (a few hundred kB each); the least recently used goes first
_DISTILLERS: OrderedDict[tuple, Distiller] = OrderedDict()
_LOCK = threading.Lock()


def _model_stamp(folder: Path) -> tuple:
    """``(folder, (name, mtime_ns, size) of each file)``: changes when the model files are rewritten."""
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return (str(folder.resolve()), tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files))


def bundle_distiller(bundle: Bundle) -> Distiller:
    """The distiller of ``bundle`` (its ``model/`` folder), loaded once per folder and shared: treat it as
    read-only. ``ModelLoadError`` when the folder holds none. Needs torch; the encoder is not loaded."""
    # torch only when a model is needed: the analyses import this module, and bundles open without torch
    from .distiller import Distiller

    folder = bundle.path / S.MODEL_DIR
    key = _model_stamp(folder)
    with _LOCK:
        if key in _DISTILLERS:
            _DISTILLERS.move_to_end(key)
            return _DISTILLERS[key]
        distiller = Distiller.from_pretrained(folder)
        _DISTILLERS[key] = distiller
        while len(_DISTILLERS) > MAX_DISTILLERS:
            _DISTILLERS.popitem(last=False)
        return distiller


def bundle_models(bundle: Bundle, encoder: ClipEncoder | None = None) -> tuple[ClipEncoder, Distiller]:
    """``(encoder, distiller)`` of ``bundle``: ``encoder`` when given (e.g. a local copy of the same
    checkpoint), else the bundle's CLIP from the one encoder factory; the distiller as ``bundle_distiller``.
    ``ModelLoadError`` (with a fix) when either cannot be had."""
    # torch only when a model is needed: the analyses import this module, and bundles open without torch
    from ..model.factory import load_encoder

    distiller = bundle_distiller(bundle)
    return (encoder if encoder is not None else load_encoder(bundle.encoder_info.model_id)), distiller


def bundle_model_key(bundle: Bundle, encoder: ClipEncoder | None = None) -> str:
    """Cache key of results that depend on the encoder (``encoder``'s, else the bundle's, without loading it)
    and on the bundle's distiller."""
    enc_key = encoder.cache_key if encoder is not None else bundle.encoder_info.cache_key
    return f"{enc_key}-{bundle_distiller(bundle).fingerprint}"


def clear_distillers() -> None:
    """Forget the loaded distillers (their memory is freed once no caller holds them)."""
    with _LOCK:
        _DISTILLERS.clear()


__all__ = ["MAX_DISTILLERS", "bundle_distiller", "bundle_model_key", "bundle_models", "clear_distillers"]
