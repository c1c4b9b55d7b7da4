"""CLIP preprocessing: resize shortest side (bicubic), centre crop, scale, normalise.

Equal to ``transformers.CLIPImageProcessor`` within 1e-2 per pixel (the difference is float32 rounding
only): the bicubic resize is the very same Pillow call on the full image, so the
uint8 pixels are bit-identical; see tests/model/test_preprocess.py. It is faster because it skips the
processor's numpy <-> PIL round trips, float64 rescale and transposed normalise: one fused
multiply-subtract writes straight into a preallocated ``[B, 3, S, S]`` float32 batch, grey images are
resized on one channel instead of three (bit-identical), and already-sized images are not resampled.
Shortcuts that change pixels (``Image.reduce``, JPEG ``draft``, ``resize(box=...)``, ``reducing_gap``)
are deliberately not used on that path: one uint8 level is 0.015 after normalisation, above the tolerance.
``benchmarks/preprocess_speed.py`` prints the timings.

Strips and panoramas (the one exception): resizing the shortest side of a 65500 x 1 image to 224 px would
make a 14672000 x 224 image, of which the centre crop keeps 224 x 224; a tiny PNG could ask Pillow for
gigabytes. Such images are **cropped before resizing**, not refused: when the resize is an upscale whose
output would exceed ``MAX_RESIZED_CROPS`` crops (``ClipPreprocessor.crops_before_resizing``), only the
source pixels under the centre crop (plus the bicubic support) are resized, one axis at a time, horizontal
first as Pillow does for an upscale. The model sees exactly the centre crop anyway, so such files cost no
more than any other and none is lost. The pixels equal the full resize's crop up to the rounding of Pillow's
filter coefficients (its box corners are float32): a few values differ by one or two uint8 levels
(``tests/inputs/test_hostile_inputs.py`` bounds how many), so those images hold CLIPImageProcessor parity
within two levels instead of 1e-2. Downscales are never cropped first: their resized image is smaller than
the decoded source, which Pillow's pixel limit bounds. So every image whose shortest side is at least
``size`` (any camera photo), and every upscale up to 4:1 (when ``size == crop_size``), keeps the exact path.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..inputs.imageio import to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESS_VERSION = "asap-pre-2"
MAX_RESIZED_CROPS = 4
"""An upscale to more than this many crops' pixels resizes only the centre crop's source (module doc)."""


def resize_output_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """``(new_width, new_height)`` with the shortest side ``shortest_edge``, as CLIPImageProcessor.

    Same arithmetic as ``transformers.image_transforms.get_resize_output_image_size(...,
    default_to_square=False)``: the long side is ``int(shortest_edge * long / short)`` (truncated).
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _source_span(start: int, n: int, scale: float, limit: int) -> tuple[int, int]:
    """Source pixels ``[lo, hi)`` that output pixels ``start .. start + n - 1`` of a bicubic resize by
    ``1 / scale`` read: their centres' span widened by the filter support (2 source pixels, times ``scale``
    when reducing) and one pixel for rounding, clamped to ``[0, limit)``."""
    margin = 2.0 * max(scale, 1.0) + 1.0
    return max(0, math.floor(start * scale - margin)), min(limit, math.ceil((start + n) * scale + margin))


def resized_region(image: Image.Image, size: tuple[int, int], region: tuple[int, int, int, int]) -> Image.Image:
    """``image.resize(size, BICUBIC)`` cut to ``region = (left, top, width, height)`` (in resized pixels),
    computed from the source pixels that region reads only: memory and time follow the region, not ``size``.

    One axis per Pillow call, horizontal first (Pillow's order for an upscale; the order changes the
    values where the first pass clips). Equal to the full resize's crop up to the rounding of Pillow's
    filter coefficients (box corners are float32 there): a few values in 100,000 differ by one or two levels.
    """
    (w, h), (left, top, out_w, out_h) = image.size, region
    sx, sy = w / size[0], h / size[1]
    x0, x1 = _source_span(left, out_w, sx, w)
    y0, y1 = _source_span(top, out_h, sy, h)
    src = image.crop((x0, y0, x1, y1))
    bicubic = Image.Resampling.BICUBIC
    rows = src.resize((out_w, y1 - y0), bicubic,
                      box=(left * sx - x0, 0, min((left + out_w) * sx - x0, x1 - x0), y1 - y0))
    return rows.resize((out_w, out_h), bicubic,
                       box=(0, top * sy - y0, out_w, min((top + out_h) * sy - y0, y1 - y0)))


@dataclass(frozen=True)
class ClipPreprocessor:
    """Turns PIL images into CLIP pixel values ``[B, 3, crop, crop]`` (float32).

    ``size``: target length of the shortest side in pixels; ``crop_size``: side of the centre crop
    (zero-padded before normalisation, as CLIPImageProcessor does, when ``crop_size > size``);
    ``mean``/``std``: per-channel normalisation of pixel values scaled to [0, 1].
    Non-RGB inputs are converted like CLIPImageProcessor (transparency on white); see ``imageio.to_rgb``.
    """

    size: int = 224
    crop_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    _scale: np.ndarray = field(init=False, repr=False, compare=False)
    _shift: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        std = np.asarray(self.std, dtype=np.float64)
        mean = np.asarray(self.mean, dtype=np.float64)
        # x_norm = (x / 255 - mean) / std = x * scale - shift, folded into one multiply-subtract
        object.__setattr__(self, "_scale", (1.0 / (255.0 * std)).astype(np.float32).reshape(3, 1, 1))
        object.__setattr__(self, "_shift", (mean / std).astype(np.float32).reshape(3, 1, 1))

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, image_size: int | None = None) -> ClipPreprocessor:
        """Read ``preprocessor_config.json`` from a local checkpoint directory when present.

        Falls back to the CLIP defaults with ``image_size`` (the vision model's input side).
        """
        path = Path(model_dir) / "preprocessor_config.json"
        if not path.is_file():
            side = image_size or 224
            return cls(size=side, crop_size=side)
        cfg = json.loads(path.read_text())
        return cls.from_config(cfg, image_size)

    @classmethod
    def from_config(cls, cfg: dict, image_size: int | None = None) -> ClipPreprocessor:
        """Build from a ``CLIPImageProcessor`` config dict."""
        size = cfg.get("size", image_size or 224)
        if isinstance(size, dict):
            size = size.get("shortest_edge") or size.get("height") or image_size or 224
        crop = cfg.get("crop_size", size)
        if isinstance(crop, dict):
            crop = crop.get("height") or size
        return cls(
            size=int(size),
            crop_size=int(crop),
            mean=tuple(cfg.get("image_mean", CLIP_MEAN)),
            std=tuple(cfg.get("image_std", CLIP_STD)),
        )

    @property
    def version(self) -> str:
        """Identifies the preprocessing in cache keys."""
        return f"{PREPROCESS_VERSION}:s{self.size}:c{self.crop_size}:m{self.mean}:sd{self.std}"

    def crops_before_resizing(self, width: int, height: int) -> bool:
        """Whether ``resize_and_crop`` resizes only the centre crop's source region of a ``width x height``
        image: an upscale (shortest side below ``size``) to more than ``MAX_RESIZED_CROPS`` crops' pixels,
        i.e. a strip or panorama (see the module docstring)."""
        if min(width, height) >= self.size:
            return False
        new_w, new_h = resize_output_size(width, height, self.size)
        return new_w * new_h > MAX_RESIZED_CROPS * self.crop_size ** 2

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """Resize so the shortest side is ``size`` (bicubic), then centre-crop ``crop_size``.

        Keeps mode ``L`` (grey, no transparency) as ``L``: resizing one channel gives bit-identical
        values to resizing its RGB copy; every other mode is converted to RGB first. Strips and panoramas
        (``crops_before_resizing``) resize only what the crop keeps: memory stays at a few crops.
        """
        if image.mode != "L" or image.info.get("transparency") is not None:
            image = to_rgb(image)
        w, h = image.size
        new_w, new_h = resize_output_size(w, h, self.size)
        c = self.crop_size
        top = (new_h - c) // 2
        left = (new_w - c) // 2
        if self.crops_before_resizing(w, h):  # the resize of the crop's region only; left/top now relative to it
            image = resized_region(image, (new_w, new_h), (max(left, 0), max(top, 0), min(new_w, c), min(new_h, c)))
            (new_w, new_h), top, left = image.size, min(top, 0), min(left, 0)
        elif (new_w, new_h) != (w, h):  # Pillow returns a plain copy for an equal size: skip it
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        if top < 0 or left < 0:  # smaller than the crop: zero-pad centred (ceil on the leading side)
            canvas = Image.new(image.mode, (max(new_w, c), max(new_h, c)))
            canvas.paste(image, (max(-left, 0), max(-top, 0)))
            image, top, left = canvas, max(top, 0), max(left, 0)
        if (left, top, image.width, image.height) == (0, 0, c, c):
            return image
        return image.crop((left, top, left + c, top + c))

    def to_array(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """One image -> normalised ``[3, crop, crop]`` float32 (written into ``out`` when given)."""
        return self._normalise(np.asarray(self.resize_and_crop(image)), out)

    def _normalise(self, pix: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 ``[c, c]`` (grey) or ``[c, c, 3]`` -> normalised ``[3, c, c]`` float32 (into ``out``)."""
        c = self.crop_size
        if out is None:
            out = np.empty((3, c, c), dtype=np.float32)
        src = pix[None] if pix.ndim == 2 else pix.transpose(2, 0, 1)
        np.multiply(src, self._scale, out=out)
        np.subtract(out, self._shift, out=out)
        return out

    def crops(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images already cut to the model input (``crop x crop`` px, e.g. masked ``resize_and_crop`` outputs)
        -> ``[B, 3, crop, crop]`` float32, normalised without resampling; ``ValueError`` for another size."""
        c = self.crop_size
        out = np.empty((len(images), 3, c, c), dtype=np.float32)
        for i, im in enumerate(images):
            if im.size != (c, c):
                raise ValueError(f"crops() takes {c}x{c} images, got {im.size[0]}x{im.size[1]}")
            self._normalise(np.asarray(to_rgb(im)), out=out[i])
        return out

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """List of PIL images -> ``np.ndarray [B, 3, crop, crop]`` float32 (no torch needed)."""
        c = self.crop_size
        out = np.empty((len(images), 3, c, c), dtype=np.float32)
        for i, im in enumerate(images):
            self.to_array(im, out=out[i])
        return out

    def __call__(self, images: Sequence[Image.Image]):
        """List of PIL images -> ``torch.FloatTensor [B, 3, crop, crop]``."""
        import torch

        return torch.from_numpy(self.batch(images))
