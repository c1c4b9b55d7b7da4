"""The one way the library, the CLI and the app get a CLIP encoder: ``load_encoder``, cached; and its text
tower with the tokenizer (for naming dimensions): ``load_text_encoder``, cached the same way.

One attention policy: every encoder is loaded with PyTorch's fused attention (``sdpa``); the rollout
relevance method, the only user of full attention maps, switches the model to eager attention for the
duration of its call (``model.encoder.eager_attention``) and back. ``last-block`` relevance needs no
attention outputs at all (``ClipImageForward.class_token_attention``).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from .device import dtype_name, resolve_dtype
from .encoder import ClipEncoder, inspect_checkpoint, resolve_device
from .text import ClipTextEncoder

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

MAX_LOADED = 2  # encoders kept in memory (a ViT-L/14 is ~1.7 GB in fp32)
_LOADED: OrderedDict[tuple[str, str, str, str], ClipEncoder] = OrderedDict()
_LOCK = threading.Lock()


def load_encoder(model: str | None = None, device: str = "auto", dtype: str | torch.dtype | None = None
                 ) -> ClipEncoder:
    """The encoder of ``model`` (HF id or local folder; ``None``: ``$ASAP_MODEL`` or the default ViT-B/32) on
    ``device`` in ``dtype`` (``None`` / ``"auto"``: bf16 on GPU, fp32 on CPU), loaded once per process and
    shared: treat it as read-only. Keyed by the checkpoint's content (weights + preprocessing), so a folder
    rewritten with other weights loads afresh. Raises ``ModelLoadError`` with a fix when it cannot be had.
    """
    info = inspect_checkpoint(model)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    key = (info.cache_key, str(info.model_dir), str(dev), dtype_name(dt))
    with _LOCK:  # one load at a time: two sessions asking for the same model share one copy
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
        encoder = ClipEncoder.from_pretrained(info.model_id, device=str(dev), dtype=dt)
        _LOADED[key] = encoder
        while len(_LOADED) > MAX_LOADED:
            _LOADED.popitem(last=False)
        return encoder


_TEXT: OrderedDict[tuple[str, str, str], ClipTextEncoder] = OrderedDict()


def load_text_encoder(model: str | None = None, device: str = "cpu") -> ClipTextEncoder:
    """The text tower + tokenizer of ``model`` (as ``load_encoder`` resolves it), fp32 on ``device`` (default
    CPU: a vocabulary of a few hundred words is quick there), loaded once per process and shared (read-only).
    Raises ``model.text.NoTextTower`` when the checkpoint has no text tower or tokenizer (the demo's random
    CLIP), ``ModelLoadError`` when it cannot be had.
    """
    info = inspect_checkpoint(model)
    dev = resolve_device(device)
    key = (info.cache_key, str(info.model_dir), str(dev))
    with _LOCK:
        if key in _TEXT:
            _TEXT.move_to_end(key)
            return _TEXT[key]
        encoder = ClipTextEncoder.from_pretrained(info, device=str(dev))
        _TEXT[key] = encoder
        while len(_TEXT) > MAX_LOADED:
            _TEXT.popitem(last=False)
        return encoder


def clear_encoders() -> None:
    """Forget the loaded encoders, image and text (their memory is freed once no caller holds them)."""
    with _LOCK:
        _LOADED.clear()
        _TEXT.clear()


__all__ = ["MAX_LOADED", "clear_encoders", "load_encoder", "load_text_encoder"]
