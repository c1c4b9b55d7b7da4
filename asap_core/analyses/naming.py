"""Naming the dimensions: the evidence a user reads before naming one, and the words nearest each end.

For each dimension: its top and bottom images (``views.dimensions.top_images``), its concept crops (the top
images cropped to the patches its relevance map ranks highest: ``dimension_crops``) and, where the bundle's
CLIP has a text tower and a tokenizer, the nearest words of an editable vocabulary (``word_scores``).

Words go the same way as images: CLIP text embedding, L2-normalised (as image embeddings are), then the
bundle's distiller (``Distiller.forward``: the stored vision-only projection ``VisionOnlyProjection``'s
components, the standardisation, then W1) to ``z [V, 16]``. Per dimension, the words with the highest z are
its "high" end, the lowest its "low" end. Text and image embeddings sit apart in CLIP's space (the modality
gap), so a word's z is read only relative to other words, never against images' values. The scores are
cached in the bundle's ``cache/dimension_words`` under (text encoder key, distiller fingerprint, vocabulary).
The names themselves are stored by ``storage.bundle.set_dimension_name``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..method.bundle_models import bundle_distiller
from ..storage.cache import cached_call, hash_key, is_cached
from ..storage.schema import N_DIMS
from .concepts import crop_to_mask, keep_mask

CACHE_NAMESPACE = "dimension_words"
NAMING_VERSION = "naming-1"
MAX_WORDS = 400  # longest vocabulary one ranking takes (a visitor edits it: the text tower's work stays small)
MAX_WORD_CHARS = 60
N_WORDS = 8  # words shown per end of a dimension
CROP_FRACTION = 0.25  # share of patches a concept crop keeps (the map's most relevant quarter)

#: words and phrases about how images look and where generators leave traces (one per line in the editor)
DEFAULT_VOCABULARY: tuple[str, ...] = (
    # faces and people
    "face", "portrait", "smooth skin", "skin texture", "wrinkles", "freckles", "pores", "makeup", "symmetric face",
    "asymmetric face", "eyes", "mismatched eyes", "eyelashes", "teeth", "smile", "lips", "ears", "earrings",
    "hair", "strands of hair", "beard", "glasses", "reflections in glasses", "hands", "fingers", "extra fingers",
    "child", "old person", "group of people", "crowd", "celebrity", "model", "selfie", "headshot",
    # lighting and colour
    "studio lighting", "soft light", "harsh shadows", "backlight", "golden hour", "night", "neon lights",
    "flash photography", "overexposed", "underexposed", "high contrast", "low contrast", "saturated colours",
    "muted colours", "black and white", "sepia", "colour cast", "warm tones", "cool tones", "glow",
    # focus, optics, noise
    "blurry background", "bokeh", "shallow depth of field", "sharp focus", "out of focus", "motion blur",
    "lens flare", "vignetting", "chromatic aberration", "wide angle", "fisheye", "telephoto", "macro",
    "sensor noise", "film grain", "smooth gradient", "banding", "oversharpened", "halo around edges",
    # compression and processing
    "jpeg artifacts", "compression blocks", "low resolution", "high resolution", "upscaled", "pixelated",
    "resized", "cropped", "screenshot", "scanned photo", "photo of a screen", "moire pattern", "watermark",
    "logo", "text", "caption", "signature", "border", "frame", "collage", "filter", "hdr", "photoshopped",
    "retouched", "airbrushed",
    # rendering and style
    "photograph", "snapshot", "amateur photo", "professional photo", "stock photo", "smartphone photo",
    "dslr photo", "digital art", "painting", "oil painting", "watercolour", "drawing", "sketch", "cartoon",
    "anime", "illustration", "3d render", "cgi", "video game", "concept art", "fantasy", "surreal", "hyperrealistic",
    "plastic look", "waxy", "glossy", "dreamy", "cinematic", "symmetrical composition", "centered subject",
    # scenes and objects
    "indoor", "outdoor", "landscape", "cityscape", "street", "buildings", "architecture", "interior", "kitchen",
    "bedroom", "office", "sky", "clouds", "sunset", "water", "ocean", "beach", "mountains", "forest", "trees",
    "flowers", "grass", "snow", "desert", "animal", "dog", "cat", "bird", "horse", "car", "food", "plate",
    "furniture", "window", "mirror", "reflection", "clothing", "fabric texture", "pattern", "repeating texture",
    "busy background", "plain background", "white background", "empty space", "clutter", "small objects",
    "distorted objects", "melted shapes", "impossible geometry", "garbled text", "straight lines", "perspective",
)


# ----------------------------------------------------------------------------- the vocabulary
def parse_vocabulary(text: str) -> list[str]:
    """One word or phrase per line -> the vocabulary: stripped, inner whitespace collapsed, empty lines and
    repeats (case-insensitive) dropped, order kept. ``InputError`` for more than ``MAX_WORDS`` entries or an
    entry longer than ``MAX_WORD_CHARS`` characters."""
    words, seen = [], set()
    for line in str(text or "").splitlines():
        w = " ".join(line.split())
        if not w or w.lower() in seen:
            continue
        if len(w) > MAX_WORD_CHARS:
            raise InputError(f"the vocabulary entry '{w[:MAX_WORD_CHARS]}…' is longer than {MAX_WORD_CHARS} "
                             "characters.", "use short words or phrases, one per line.")
        seen.add(w.lower())
        words.append(w)
    if len(words) > MAX_WORDS:
        raise InputError(f"the vocabulary holds {len(words)} entries; at most {MAX_WORDS} are ranked.",
                         f"keep the {MAX_WORDS} words you care about most.")
    return words


def vocabulary_text(words: Sequence[str] = DEFAULT_VOCABULARY) -> str:
    """The vocabulary as the editor shows it: one entry per line."""
    return "\n".join(words)


# ----------------------------------------------------------------------------- words -> z
@dataclass(frozen=True)
class WordScores:
    """A vocabulary mapped to the dimensions: ``words`` [V] and ``z`` ``[V, 16]`` (the distiller's dimension
    values of each word's text embedding)."""

    words: tuple[str, ...]
    z: np.ndarray

    def ends(self, dim: int, k: int = N_WORDS) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """(the ``k`` words with the highest z of ``dim``, highest first; the ``k`` lowest, lowest first), each
        as ``(word, z)``. Ties keep vocabulary order. Fewer than ``2 k`` words are split between the ends."""
        col = np.asarray(self.z, np.float64)[:, int(dim)]
        order = np.argsort(-col, kind="stable")
        k_high = min(int(k), (len(order) + 1) // 2)
        k_low = min(int(k), len(order) - k_high)
        high = [(self.words[i], float(col[i])) for i in order[:k_high]]
        low = [(self.words[i], float(col[i])) for i in order[::-1][:k_low]]
        return high, low


def project_texts(distiller, text_embeds: np.ndarray) -> np.ndarray:
    """Normalised text embeddings ``[V, D]`` -> ``z [V, 16]`` through the distiller, exactly as images go
    (``Distiller.predict``: projection, standardisation, W1). ``InputError`` when D does not match."""
    z, _ = distiller.predict(np.asarray(text_embeds, np.float32))
    return z


def words_cache_key(text_key: str, distiller_fingerprint: str, words: Sequence[str]) -> str:
    """Cache key of one ranking: text encoder (weights, preprocessing, tokenizer), distiller, vocabulary."""
    return hash_key(NAMING_VERSION, text_key, distiller_fingerprint, list(words))


def words_cached(bundle, words: Sequence[str], text_encoder) -> bool:
    """True when ``word_scores(bundle, words, text_encoder)`` would read its result instead of computing it."""
    key = words_cache_key(text_encoder.cache_key, bundle_distiller(bundle).fingerprint, tuple(str(w) for w in words))
    return is_cached(bundle.cache_dir, CACHE_NAMESPACE, key)


def word_scores(bundle, words: Sequence[str], text_encoder=None) -> WordScores:
    """``WordScores`` of ``words`` on an open bundle; cached in ``bundle.cache_dir`` (a read-only cache: used,
    not stored). ``text_encoder``: a ``model.text.ClipTextEncoder`` (default: the bundle's CLIP through
    ``model.factory.load_text_encoder``, which raises ``NoTextTower`` when it has no text tower or tokenizer)."""
    words = tuple(str(w) for w in words)
    if not words:
        raise InputError("The vocabulary is empty.", "enter at least one word, one per line.")
    if text_encoder is None:
        # torch only when the text tower is loaded: this module is imported where bundles open without torch
        from ..model.factory import load_text_encoder

        text_encoder = load_text_encoder(bundle.encoder_info.model_id)
    distiller = bundle_distiller(bundle)

    def compute() -> np.ndarray:
        return project_texts(distiller, text_encoder.encode_texts(list(words))).astype(np.float32)

    def save(z: np.ndarray, d: Path) -> None:
        np.save(d / "z.npy", z)
        (d / "words.json").write_text(json.dumps(list(words), ensure_ascii=False))

    key = words_cache_key(text_encoder.cache_key, distiller.fingerprint, words)
    z = cached_call(bundle.cache_dir, CACHE_NAMESPACE, key, compute, save, lambda d: np.load(d / "z.npy"))
    return WordScores(words, z)


# ----------------------------------------------------------------------------- concept crops
def square_crop(image: Image.Image) -> Image.Image:
    """The centred square of ``image`` (what CLIP sees after its resize and centre crop)."""
    w, h = image.size
    s = min(w, h)
    return image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


def dimension_crops(images: Sequence[Image.Image], maps: np.ndarray, dim: int,
                    fraction: float = CROP_FRACTION) -> list[Image.Image]:
    """The concept crops of dimension ``dim``: each image (e.g. a top image's thumbnail) centre-squared and
    cropped to the bounding box of the top ``fraction`` of patches of its ``dim`` map (``maps [n, 17, s, s]``,
    same order); the rest of the box is kept, so a crop shows its context."""
    if len(images) != len(maps):
        raise InputError(f"{len(images)} images for {len(maps)} maps.", "pass one map per image, same order.")
    if not 0 <= int(dim) < N_DIMS:
        raise InputError(f"there is no dimension {dim}.", f"dimensions are 0..{N_DIMS - 1}.")
    return [crop_to_mask(square_crop(im.convert("RGB")), keep_mask(np.asarray(m[int(dim)], np.float64), fraction))
            for im, m in zip(images, maps)]


__all__ = ["CACHE_NAMESPACE", "CROP_FRACTION", "DEFAULT_VOCABULARY", "MAX_WORDS", "MAX_WORD_CHARS", "NAMING_VERSION",
           "N_WORDS", "WordScores", "dimension_crops", "parse_vocabulary", "project_texts", "square_crop",
           "vocabulary_text", "word_scores", "words_cache_key"]
