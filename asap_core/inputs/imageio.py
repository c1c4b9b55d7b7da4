"""Robust image reading: file bytes -> SHA-1 image id + RGB ``PIL.Image``.

Every failure becomes an :class:`~asap_core.errors.ImageLoadError` naming the file and the reason, so a
run can report the file and skip it. Conversions to RGB (see :func:`to_rgb`):

- EXIF orientation is applied (the image is returned upright).
- Animated GIF / WebP / multi-page TIFF: the first frame.
- Transparency (RGBA, LA, PA, palette or grey with a transparent colour) is composited on **white**,
  exactly as ``transformers.CLIPImageProcessor`` does, so preprocessing parity holds.
- 16-bit grey (``I;16*``) and 32-bit int (``I``, read as 16-bit data) are scaled to 8 bit by
  ``round(v / 257)`` (Pillow's own ``convert`` would clip everything above 255 to white);
  float (``F``) is read as [0, 1] when its maximum is <= 1, else as [0, 255].
- CMYK, YCbCr, 1-bit, palette and grey go through ``Image.convert("RGB")``.

Image ids are SHA-1 hex digests of the file's bytes (:func:`sha1_hex`). The decode paths read a file
once and check the bytes in hand against the id taken when the run hashed it (:func:`read_checked`): a
file rewritten in between fails with ``CHANGED_REASON`` instead of storing new pixels under the old id.

Pixel budget, from the header before any decode (:func:`pixel_limit`, :func:`image_size`): locally Pillow's
``Image.MAX_IMAGE_PIXELS`` at 1x (the environment variable ``ASAP_MAX_IMAGE_PIXELS`` sets it process-wide;
``0`` or ``none`` disables the check); in hosted mode ``ASAP_MAX_UPLOAD_PIXELS`` (64 Mpx: camera photos pass),
refused in plain words. Accepted images decode in bounded memory: the RGB conversion runs a band of rows at a
time, and in hosted mode large images are reduced to ``WORKING_SIDE`` as early as the format allows (JPEG
``draft``, else a box reduce right after decoding). Bundle thumbnails are read under a pixel limit
the caller passes (``schema.THUMB_MAX_PIXELS``; :func:`decode_thumbnail`, :func:`thumbnail_fits`).
``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageLoadError
from ..settings import settings

PathLike = str | os.PathLike

_BOMB_HINT = (
    "if you trust this file, raise the limit with the environment variable ASAP_MAX_IMAGE_PIXELS"
    " (pixels; 0 disables the check)"
)
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
#: Working size of a hosted decode (px): an image whose shortest side is at least twice this is reduced by
#: an integer factor as early as its format allows, keeping the shortest side >= ``WORKING_SIDE``. CLIP
#: preprocessing resizes the shortest side to the model's input (224 or 336 px) and thumbnails are
#: ``schema.THUMB_SIDE`` px, so every consumer still reads at least 3x the pixels it keeps.
WORKING_SIDE = 1024
#: Source pixels converted to RGB at a time (one band of rows): the conversion's temporaries stay this small.
_BAND_PIXELS = 1 << 20
#: WebP decodes through libwebp's animation decoder, which holds two full-size RGBA canvases and a copy of the
#: frame besides Pillow's image (about 16 bytes per pixel at the peak, 4 for the other formats): hosted mode
#: accepts WebP up to this share of the pixel budget (32 Mpx of 64: a peak near 500 MB, as a 64 Mpx PNG's).
WEBP_BUDGET_SHARE = 0.5
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_CHUNK = 1 << 20
_SHA1_HEX = re.compile(r"[0-9a-f]{40}")
CHANGED_REASON = ("changed while it was being analysed (its content no longer matches the hash taken at the "
                  "start); run analyze again")


def _supported_extensions() -> frozenset[str]:
    wanted = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
    try:
        registered = set(Image.registered_extensions())
    except Exception:  # pragma: no cover - very old or broken Pillow
        return frozenset(wanted)
    return frozenset(ext for ext in wanted if ext in registered)


IMAGE_EXTENSIONS: frozenset[str] = _supported_extensions()
"""Lower-case file suffixes (with the dot) that this module decodes."""


# ----------------------------------------------------------------------------- file bytes


def _os_error_reason(path: PathLike, exc: OSError) -> tuple[str, str]:
    """(reason, hint) for an ``OSError`` raised while opening or reading ``path``."""
    p = Path(path)
    if exc.errno == errno.ELOOP:
        return "symbolic link loop", "fix or remove the link"
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
        if p.is_symlink():
            return f"broken symbolic link (target {os.readlink(p)!r} does not exist)", "fix or remove the link"
        return "file not found", "check the path; the file may have been moved or deleted"
    if isinstance(exc, IsADirectoryError) or exc.errno == errno.EISDIR:
        return "is a directory, not a file", "point to an image file"
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied", "make the file readable (chmod +r) or run as a user who can read it"
    return f"cannot read file ({exc.strerror or exc})", "check the file and the disk"


def _open_regular(path: PathLike):
    """Open ``path`` for binary reading after checking it is a regular file (never blocks on FIFOs)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ImageLoadError(str(path), *_os_error_reason(path, exc)) from exc
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(str(path), "is a directory, not a file", "point to an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(str(path), "not a regular file (device, socket or pipe)", "point to an image file")
    try:
        return open(path, "rb"), st.st_size
    except OSError as exc:
        raise ImageLoadError(str(path), *_os_error_reason(path, exc)) from exc


def read_bytes(path: PathLike) -> bytes:
    """All bytes of ``path``; raises ImageLoadError when the file is missing, unreadable or empty."""
    fh, _ = _open_regular(path)
    try:
        with fh:
            data = fh.read()
    except OSError as exc:
        raise ImageLoadError(str(path), *_os_error_reason(path, exc)) from exc
    if not data:
        raise ImageLoadError(str(path), "empty file (0 bytes)", "the file was probably not fully copied")
    return data


def sha1_hex(data: bytes) -> str:
    """Hex SHA-1 of ``data``: the image id."""
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def is_content_id(key: object) -> bool:
    """Whether ``key`` is an image id, i.e. a SHA-1 hex digest (what :func:`sha1_hex` returns)."""
    return isinstance(key, str) and _SHA1_HEX.fullmatch(key) is not None


def read_checked(path: PathLike, image_id: str | None) -> bytes:
    """All bytes of ``path`` (as :func:`read_bytes`), checked against ``image_id``: ``ImageLoadError`` with
    ``CHANGED_REASON`` when they hash to another id (the file was rewritten after it was hashed).

    Only image ids (:func:`is_content_id`) are checked; ``None`` and other row keys (tests and benchmarks
    key rows with labels such as ``"id3"``) make no claim about the bytes.
    """
    data = read_bytes(path)
    if is_content_id(image_id) and sha1_hex(data) != image_id:
        raise ImageLoadError(str(path), CHANGED_REASON)  # the reason says the fix: runs report reasons only
    return data


def file_sha1(path: PathLike) -> str:
    """Hex SHA-1 of the bytes of ``path`` (the image id), read in 1 MiB chunks.

    Raises ImageLoadError when the file cannot be read (an empty file hashes normally).
    """
    h = hashlib.sha1(usedforsecurity=False)
    fh, _ = _open_regular(path)
    try:
        with fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise ImageLoadError(str(path), *_os_error_reason(path, exc)) from exc
    return h.hexdigest()


# ----------------------------------------------------------------------------- decoding


def _probe_size(data: bytes) -> tuple[int, int] | None:
    """Header size of an image without Pillow's bomb check (only used to word the size error)."""
    prefix = data[:16]
    try:
        Image.init()
        for fmt in list(Image.ID):
            factory, accept = Image.OPEN[fmt]
            try:
                ok = not accept or accept(prefix)
                if ok and not isinstance(ok, str):
                    width, height = factory(io.BytesIO(data), "").size
                    return int(width), int(height)
            except Exception:
                continue
    except Exception:
        return None
    return None


def pixel_limit() -> int | None:
    """Largest image this process decodes, in pixels (None: no limit), checked from the header first.

    Hosted mode: ``settings().max_upload_pixels``, 64 Mpx by default: that covers the 61 Mpx of full-frame
    cameras and the 48-50 Mpx modes of phones, while one decoded image stays at 256 MB (RGBA) before the
    working-size reduction. Locally: Pillow's ``Image.MAX_IMAGE_PIXELS`` (``ASAP_MAX_IMAGE_PIXELS``; ``0``
    disables it) at 1x, where Pillow itself only refuses above 2x. The lower of the two in hosted mode.
    """
    s = settings()  # also applies ASAP_MAX_IMAGE_PIXELS to Pillow (once per process)
    local = int(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else None
    if s.hosted:
        return min(int(s.max_upload_pixels), local) if local else int(s.max_upload_pixels)
    return local


def _megapixels(px: int) -> str:
    """``px`` in megapixels as words use them: "179", "1.6", "0.002"."""
    mp = px / 1e6
    return f"{mp:.0f}" if mp >= 9.5 else f"{mp:.2g}"


def _too_large(path: PathLike, size: tuple[int, int] | None, limit: int, kind: str = "") -> ImageLoadError:
    """The refusal of an image over ``limit`` pixels: plain words in hosted mode (no setting named);
    ``kind``: "WebP " when the limit is WebP's own."""
    w, h = size if size else (0, 0)
    if settings().hosted:
        what = f"this image is {w} x {h} pixels ({_megapixels(w * h)} megapixels)" if size else \
            "this image is too large"
        side = int((limit ** 0.5) // 100 * 100) or int(limit ** 0.5)
        other = " or convert it to PNG or JPEG" if kind else ""
        return ImageLoadError(str(path), f"{what}; this explorer accepts {kind + 'images ' if kind else ''}up to "
                                         f"{_megapixels(limit)} megapixels",
                              f"resize it to at most {_megapixels(limit)} megapixels (e.g. {side} x {side}){other} "
                              "and upload it again.")
    what = f"{w} x {h} pixels" if size else "the image size"
    return ImageLoadError(str(path), f"decompression bomb: {what} exceeds the limit ({limit} pixels, "
                                     f"{_megapixels(limit)} megapixels)", _BOMB_HINT)


def _scale_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map [lo, hi] -> [0, 255] with rounding and clipping; returns uint8."""
    out = (np.clip(arr.astype(np.float64), lo, hi) - lo) * (255.0 / (hi - lo))
    return np.rint(out).astype(np.uint8)


def _float_high(image: Image.Image) -> float:
    """Top of the range of a float (``F``) image: 1.0 when its finite maximum is <= 1, else 255.0 (read a
    band of rows at a time)."""
    w, h = image.size
    rows = max(1, _BAND_PIXELS // max(1, w))
    top_value = None
    for top in range(0, h, rows):
        arr = np.asarray(image.crop((0, top, w, min(h, top + rows))), dtype=np.float32)
        finite = arr[np.isfinite(arr)]
        if finite.size:
            m = float(finite.max())
            top_value = m if top_value is None else max(top_value, m)
    return 1.0 if top_value is not None and top_value <= 1.0 else 255.0


def _band_to_rgb(image: Image.Image, hi: float) -> Image.Image:
    """One band of any mode -> RGB (see :func:`to_rgb`); ``hi``: the float range top (:func:`_float_high`)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        gray = _scale_to_uint8(np.asarray(image), 0.0, 65535.0)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float32)
        gray = _scale_to_uint8(np.nan_to_num(arr, nan=0.0, posinf=hi, neginf=0.0), 0.0, hi)
        return Image.fromarray(gray, "L").convert("RGB")
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _rgb_reduced(image: Image.Image, factor: int = 1) -> Image.Image:
    """``image`` in RGB (as :func:`to_rgb`), box-averaged by ``factor`` (``Image.reduce``; 1: unchanged size).

    Converted a band of about ``_BAND_PIXELS`` source pixels at a time (bands a multiple of ``factor`` rows,
    so the boxes are those of a whole-image reduce): the conversion's temporaries (RGBA on white, 16-bit or
    float scaling) are one band, never full-size copies. An RGB image at factor 1 is returned as is.
    """
    factor = max(1, int(factor))
    if image.mode == "RGB":
        return image if factor == 1 else image.reduce(factor)
    w, h = image.size
    hi = _float_high(image) if image.mode == "F" else 255.0
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    rows = max(1, _BAND_PIXELS // max(1, w) // factor) * factor
    for top in range(0, h, rows):
        band = _band_to_rgb(image.crop((0, top, w, min(h, top + rows))), hi)
        out.paste(band.reduce(factor) if factor > 1 else band, (0, top // factor))
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (transparency composited on white; 16-bit scaled, not clipped), converted a
    band of rows at a time (no full-size temporaries). Returns ``image`` itself when it already is RGB."""
    return _rgb_reduced(image, 1)


def _orientation(image: Image.Image) -> int:
    """EXIF orientation (1..8) of ``image``; 1 when absent or unreadable."""
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:
        return 1
    return value if value in _TRANSPOSE else 1


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` turned as EXIF ``orientation`` says (as ``ImageOps.exif_transpose``)."""
    method = _TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def _reason_for(exc: Exception) -> str:
    """Plain words for a decoder failure (no exception class names)."""
    msg = str(exc).strip()
    low = msg.lower()
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if "truncated" in low or isinstance(exc, EOFError):
        return "truncated image data"
    if "could not create decoder" in low or "broken" in low or "corrupt" in low:
        return "corrupt or truncated image data"
    return "cannot decode the image data (damaged or an unsupported variant of its format)"


@contextmanager
def _decoding(path: PathLike, data: bytes) -> Iterator[None]:
    """Run a Pillow read of ``data``: warnings silenced, every failure an ``ImageLoadError`` naming ``path``."""
    if not data:
        raise ImageLoadError(str(path), "empty file (0 bytes)", "the file was probably not fully copied")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")  # e.g. corrupt EXIF notes
            yield
    except ImageLoadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            str(path), "not an image (cannot identify format)", "remove the file or convert it to JPEG/PNG"
        ) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageLoadError(str(path), _reason_for(exc), "re-export or re-download the file") from exc


def _open_within(data: bytes, path: PathLike, limit: int | None) -> Image.Image:
    """``data`` opened by Pillow, its header read and no pixels: ``ImageLoadError`` when the header declares
    more than ``limit`` pixels (width x height of the first frame). Call inside :func:`_decoding`."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # over twice Pillow's limit: refused by Pillow from the header
        raise _too_large(path, _probe_size(data), limit or 2 * int(Image.MAX_IMAGE_PIXELS or 0)) from None
    if limit is not None and im.width * im.height > limit:
        raise _too_large(path, im.size, limit)
    if limit is not None and im.format == "WEBP" and settings().hosted:
        webp = int(limit * WEBP_BUDGET_SHARE)
        if im.width * im.height > webp:
            raise _too_large(path, im.size, webp, "WebP ")
    return im


def image_size(data: bytes, path: PathLike, limit: int | None | Literal["auto"] = "auto") -> tuple[int, int]:
    """``(width, height)`` from the header of ``data`` (the bytes of ``path``), no pixels decoded; raises
    ``ImageLoadError`` when it is not an image or declares more than ``limit`` pixels ("auto":
    :func:`pixel_limit`). The cheap check to run before queueing a decode."""
    with _decoding(path, data):
        return _open_within(data, path, pixel_limit() if isinstance(limit, str) else limit).size
    raise AssertionError("unreachable")  # pragma: no cover - _decoding re-raises


def _reduce_factor(size: tuple[int, int], working_side: int | None) -> int:
    """Integer box factor that keeps the shortest side of ``size`` >= ``working_side`` (1: no reduction)."""
    return max(1, min(size) // int(working_side)) if working_side else 1


def decode_image(data: bytes, path: PathLike, draft_size: int | None = None,
                 working_side: int | None | Literal["auto"] = "auto") -> Image.Image:
    """Decode ``data`` (the bytes of ``path``) into an upright RGB image (first frame), in bounded memory.

    The header's size is checked against :func:`pixel_limit` before any pixel is decoded (``ImageLoadError``
    in plain words above it). ``working_side`` ("auto": ``WORKING_SIDE`` in hosted mode, None locally):
    images whose shortest side is at least twice it are reduced as early as the format allows, keeping the
    shortest side >= ``working_side``: JPEG in the DCT domain (``draft``) while decoding, other formats by an
    integer box average right after decoding, band by band with the RGB conversion (:func:`_rgb_reduced`).
    None decodes every pixel (the local ``analyze`` path: CLIPImageProcessor parity).
    ``draft_size``: opt-in fast path for JPEG only. The decoder scales by 1/2, 1/4 or 1/8 in the DCT
    domain while keeping **both** sides >= ``draft_size`` (so the shortest side stays >= it). This is
    not bit-equal to a full decode: after CLIP preprocessing the pixels differ by more than the 1e-2
    parity bound (benchmarks/preprocess_speed.py). Use it for thumbnails or speed (large JPEGs decode
    several times faster), never where CLIPImageProcessor parity is required.
    Raises ImageLoadError (and nothing else) when the bytes cannot be decoded. Warnings are silenced
    with ``warnings.catch_warnings``, which is process-global before Python 3.14: decode in processes
    (or one thread) if other threads rely on their own warning filters.
    """
    side = (WORKING_SIDE if settings().hosted else None) if isinstance(working_side, str) else working_side
    with _decoding(path, data):
        im = _open_within(data, path, pixel_limit())
        want = min(int(x) for x in (draft_size, side) if x) if (draft_size or side) else None
        if want and im.format in _JPEG_FORMATS:
            im.draft("RGB", (want, want))
        im.load()
        orientation = _orientation(im)
        return _upright(_rgb_reduced(im, _reduce_factor(im.size, side)), orientation)
    raise AssertionError("unreachable")  # pragma: no cover - _decoding re-raises


def thumbnail_fits(data: bytes | None, max_pixels: int) -> bool:
    """Whether ``data`` is an image whose header declares at most ``max_pixels`` (no pixel decoded): what a
    bundle's thumbnail must be before it is decoded or served (``schema.THUMB_MAX_PIXELS``)."""
    if not data:
        return False
    try:
        image_size(data, "thumbnail", max_pixels)
    except ImageLoadError:
        return False
    return True


def decode_thumbnail(data: bytes | None, size: int, max_pixels: int) -> Image.Image:
    """A bundle thumbnail's bytes -> RGB image (JPEG drafted towards ``size``: both sides stay >= it); a grey
    ``size`` square when missing, unreadable or over ``max_pixels`` from its header (``schema.THUMB_MAX_PIXELS``)."""
    if data:
        try:
            with _decoding("thumbnail", data):
                im = _open_within(data, "thumbnail", max_pixels)
                if im.format in _JPEG_FORMATS:
                    im.draft("RGB", (int(size), int(size)))
                im.load()
                return _rgb_reduced(im, 1)
        except ImageLoadError:
            pass
    return Image.new("RGB", (int(size), int(size)), (200, 200, 200))


def load_image(path: PathLike, draft_size: int | None = None) -> tuple[str, Image.Image]:
    """``(image_id, RGB image)`` for ``path``: SHA-1 of the bytes and :func:`decode_image`."""
    data = read_bytes(path)
    return sha1_hex(data), decode_image(data, path, draft_size=draft_size)


def make_thumbnail(image: Image.Image, longest: int) -> bytes:
    """JPEG bytes (quality 85) of ``image`` shrunk so its longest side is <= ``longest`` pixels."""
    thumb = to_rgb(image)
    if max(thumb.size) > longest:
        thumb = thumb.copy() if thumb is image else thumb
        thumb.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=85)
    return buf.getvalue()


__all__ = [
    "CHANGED_REASON",
    "IMAGE_EXTENSIONS",
    "WORKING_SIDE",
    "decode_image",
    "decode_thumbnail",
    "file_sha1",
    "image_size",
    "is_content_id",
    "load_image",
    "make_thumbnail",
    "pixel_limit",
    "read_bytes",
    "read_checked",
    "sha1_hex",
    "thumbnail_fits",
    "to_rgb",
]
