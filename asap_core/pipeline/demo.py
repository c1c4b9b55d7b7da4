"""The embedded demo: a bundle of ``asap_core/demo_data/`` built once into the cache, with or without CLIP weights.

``asap_core/demo_data/`` (made by ``scripts/make_demo_data.py``, see ``demo_data/SOURCE.md``) holds crops of
scikit-learn's two sample photographs in ``real/`` and samples of two small generative networks in
``fake/vae`` and ``fake/gan``. ``ensure_demo_bundle`` analyses it with the configured CLIP
(``--model`` / ``$ASAP_MODEL`` / the default); when those weights cannot be had (offline, not cached)
it uses a small random CLIP written into the cache, and says so.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from ..errors import BundleError, ModelLoadError
from ..model.encoder import inspect_checkpoint, resolve_model_id
from ..storage.bundle import Bundle
from ..storage.cache import default_cache_dir, hash_key
from ..storage.schema import RANDOM_CLIP_MARKER, RANDOM_CLIP_PREFIX
from .analyze import analyze
from .options import AnalyzeOptions

DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data"
# the random CLIP of the fallback: 64 px input, 8 px patches -> 8x8 relevance maps, D = 64
RANDOM_CLIP = dict(image_size=64, patch_size=8, hidden=64, layers=4, dim=64, seed=0)


def write_random_clip(path: str | Path, image_size: int = 32, patch_size: int = 8, hidden: int = 32,
                      layers: int = 2, dim: int = 64, seed: int = 0) -> Path:
    """Save a randomly initialised CLIP (``CLIPModel`` + ``CLIPImageProcessor``) to ``path``; returns ``path``.

    Vision tower: ``layers`` layers of width ``hidden`` (2 heads, MLP ``2 * hidden``), input ``image_size`` px,
    ``patch_size`` px patches (``image_size // patch_size`` patches per side), projection to ``dim``.
    The text tower is a fixed 1-layer stub. Same arguments and seed give the same weights. The folder is
    marked (``schema.RANDOM_CLIP_MARKER``) so that every bundle analysed with it records ``source: "random"``.
    """
    from transformers.utils import logging as hf_logging

    path = Path(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # (imports inside) no torchvision notice, no "Writing model shards" bar
    hf_logging.disable_progress_bar()
    try:
        return _write_random_clip(path, image_size, patch_size, hidden, layers, dim, seed)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _write_random_clip(path: Path, image_size: int, patch_size: int, hidden: int, layers: int, dim: int,
                       seed: int) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=dim),
        projection_dim=dim,
    )
    CLIPModel(cfg).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(path)
    spec = dict(image_size=image_size, patch_size=patch_size, hidden=hidden, layers=layers, dim=dim, seed=seed)
    (path / RANDOM_CLIP_MARKER).write_text(json.dumps({"random_init": True, **spec}, indent=2))
    return path


def random_clip_dir(cache: Path | None = None) -> Path:
    """The fallback random CLIP (``RANDOM_CLIP``) in the cache, written on first use (atomically)."""
    cache = Path(cache) if cache else default_cache_dir()
    final = cache / f"{RANDOM_CLIP_PREFIX}{_random_clip_key()}"
    if (final / "config.json").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{final.name}"
    write_random_clip(tmp, **RANDOM_CLIP)
    try:
        os.replace(tmp, final)
    except OSError:  # another process wrote it first: theirs is the same
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "config.json").is_file():
            raise
    return final


def _random_clip_key() -> str:
    return hash_key(sorted(RANDOM_CLIP.items()))[:12]


def _demo_data_key() -> str:
    """Hash of the demo JPEGs' relative paths and sizes: a regenerated demo set gets a new bundle."""
    files = sorted(DEMO_DATA.rglob("*.jpg"))
    return hash_key([(str(p.relative_to(DEMO_DATA)), p.stat().st_size) for p in files])


def _resolve(model: str | None) -> tuple[str | None, str, str]:
    """(model for ``analyze`` or None for the random fallback, bundle key, note for the user)."""
    try:
        info = inspect_checkpoint(model)
    except ModelLoadError as exc:
        note = (f"Demo built with a small RANDOM CLIP (no weights found for '{resolve_model_id(model)}'): "
                f"the views work, but the dimensions carry no meaning. To use real CLIP: {exc.hint}")
        return None, f"random-{_random_clip_key()}", note
    return info.model_id, info.cache_key, ""


def demo_bundle_path(model: str | None = None) -> Path:
    """Where the demo bundle for ``model`` (``--model`` / ``$ASAP_MODEL`` / default) lives in the cache.

    ``<cache>/demo-bundle-<key>``, the key from the checkpoint's cache key (or the random CLIP's spec
    when the model cannot be had) and the demo files.
    """
    return _bundle_path(_resolve(model)[1])


def _bundle_path(model_key: str) -> Path:
    return default_cache_dir() / f"demo-bundle-{hash_key(model_key, _demo_data_key())[:16]}"


def ensure_demo_bundle(model: str | None = None, progress=None) -> tuple[Path, str]:
    """Build the demo bundle once (later calls return it at once); returns ``(bundle path, note)``.

    ``note`` is ``""`` with a real CLIP; with the random fallback it says so and how to provide a model.
    ``progress(stage, done, total)`` is passed to ``analyze``.
    """
    model_id, key, note = _resolve(model)
    out = _bundle_path(key)
    try:
        Bundle.open(out)
        return out, note
    except BundleError:
        pass
    if model_id is None:
        model_id = str(random_clip_dir())
    analyze(DEMO_DATA, out, AnalyzeOptions(model=model_id, relevance="last-block"), progress=progress)
    return out, note
