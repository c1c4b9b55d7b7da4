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

Decompression bombs: images above ``2 * Image.MAX_IMAGE_PIXELS`` are refused (Pillow's
``DecompressionBombError``); those between 1x and 2x load silently (the ``DecompressionBombWarning`` is
suppressed). The environment variable ``ASAP_MAX_IMAGE_PIXELS`` sets ``Image.MAX_IMAGE_PIXELS``
process-wide (``0`` or ``none`` disables the check). ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageLoadError
from ..settings import settings
from ..storage.schema import THUMB_SIDE

PathLike = str | os.PathLike

_BOMB_HINT = (
    "if you trust this file, raise the limit with the environment variable ASAP_MAX_IMAGE_PIXELS"
    " (pixels; 0 disables the check)"
)
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
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
    """Header size of an image without Pillow's bomb check (only used to word the bomb error)."""
    prefix = data[:16]
    try:
        Image.init()
        for fmt in list(Image.ID):
            factory, accept = Image.OPEN[fmt]
            try:
                ok = not accept or accept(prefix)
                if ok and not isinstance(ok, str):
                    return tuple(factory(io.BytesIO(data), "").size)  # type: ignore[return-value]
            except Exception:
                continue
    except Exception:
        return None
    return None


def _bomb_error(path: PathLike, data: bytes, exc: Exception) -> ImageLoadError:
    size = _probe_size(data)
    limit = Image.MAX_IMAGE_PIXELS
    what = f"{size[0]} x {size[1]} pixels" if size else "the image size"
    limit_txt = f" ({2 * limit} pixels)" if limit else ""
    return ImageLoadError(str(path), f"decompression bomb: {what} exceeds the limit{limit_txt}", _BOMB_HINT)


def _scale_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map [lo, hi] -> [0, 255] with rounding and clipping; returns uint8."""
    out = (np.clip(arr.astype(np.float64), lo, hi) - lo) * (255.0 / (hi - lo))
    return np.rint(out).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (transparency composited on white; 16-bit scaled, not clipped).

    Returns ``image`` itself when it already is RGB.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        gray = _scale_to_uint8(np.asarray(image), 0.0, 65535.0)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float32)
        finite = arr[np.isfinite(arr)]
        hi = 1.0 if finite.size and float(finite.max()) <= 1.0 else 255.0
        gray = _scale_to_uint8(np.nan_to_num(arr, nan=0.0, posinf=hi, neginf=0.0), 0.0, hi)
        return Image.fromarray(gray, "L").convert("RGB")
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation in place; unreadable EXIF leaves the image as stored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:
        pass
    return image


def _reason_for(exc: Exception) -> str:
    msg = str(exc).strip()
    low = msg.lower()
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if "truncated" in low or isinstance(exc, EOFError):
        return "truncated image data"
    if "could not create decoder" in low or "broken" in low or "corrupt" in low:
        return f"corrupt or truncated image data ({msg})"
    return f"cannot decode image ({type(exc).__name__}: {msg})" if msg else f"cannot decode image ({type(exc).__name__})"


def decode_image(data: bytes, path: PathLike, draft_size: int | None = None) -> Image.Image:
    """Decode ``data`` (the bytes of ``path``) into an upright RGB image (first frame).

    ``draft_size``: opt-in fast path for JPEG only. The decoder scales by 1/2, 1/4 or 1/8 in the DCT
    domain while keeping **both** sides >= ``draft_size`` (so the shortest side stays >= it). This is
    not bit-equal to a full decode: after CLIP preprocessing the pixels differ by more than the 1e-2
    parity bound (benchmarks/preprocess_speed.py). Use it for thumbnails or speed (large JPEGs decode
    several times faster), never where CLIPImageProcessor parity is required.
    Raises ImageLoadError (and nothing else) when the bytes cannot be decoded. Warnings are silenced
    with ``warnings.catch_warnings``, which is process-global before Python 3.14: decode in processes
    (or one thread) if other threads rely on their own warning filters.
    """
    if not data:
        raise ImageLoadError(str(path), "empty file (0 bytes)", "the file was probably not fully copied")
    settings()  # applies ASAP_MAX_IMAGE_PIXELS to Pillow (once per process)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")  # e.g. corrupt EXIF notes
            im = Image.open(io.BytesIO(data))
            if draft_size and im.format in _JPEG_FORMATS:
                im.draft("RGB", (int(draft_size), int(draft_size)))
            im.load()
            im = _orient(im)
            return to_rgb(im)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb_error(path, data, exc) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            str(path), "not an image (cannot identify format)", "remove the file or convert it to JPEG/PNG"
        ) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageLoadError(str(path), _reason_for(exc), "re-export or re-download the file") from exc


def load_image(path: PathLike, draft_size: int | None = None) -> tuple[str, Image.Image]:
    """``(image_id, RGB image)`` for ``path``: SHA-1 of the bytes and :func:`decode_image`."""
    data = read_bytes(path)
    return sha1_hex(data), decode_image(data, path, draft_size=draft_size)


def make_thumbnail(image: Image.Image, longest: int = THUMB_SIDE) -> bytes:
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
    "decode_image",
    "file_sha1",
    "is_content_id",
    "load_image",
    "make_thumbnail",
    "read_bytes",
    "read_checked",
    "sha1_hex",
    "to_rgb",
]
