"""Uploaded images into a fresh folder, safely: zip archives (their folders kept, so ``real/`` and ``fake/``
set the labels as in :mod:`.scan`) and loose image files (placed under ``real/`` or ``fake/``, or left in the
root as unlabelled).

Refused, with an ``InputError`` that names the upload and member and says the fix (nothing of a refused
upload is kept):

- names that leave the folder: absolute (``/x``, ``\\x``, ``C:x``) or with a ``..`` part;
- symbolic links and encrypted members;
- more than ``limits.max_files`` images, an image over ``limits.max_file_bytes``, all images together over
  ``limits.max_total_bytes`` (uncompressed), a member inflating more than ``limits.max_ratio`` : 1 (a zip
  bomb), an archive whose images together inflate more than that (many small members, or members sharing
  one compressed stream), an archive of more than ``MAX_MEMBERS`` entries of any kind;
- a file that has the name of a folder of the same upload (``a.jpg`` and ``a.jpg/b.jpg``).

Skipped and listed in ``Unpacked.skipped`` with the reason: entries that are not images
(``imageio.IMAGE_EXTENSIONS``), hidden and system entries (``.x``, macOS ``__MACOSX/``), names a file system
cannot hold, repeated names. Sizes are checked against the archive's declared sizes before anything is
written, then again against the bytes actually inflated (a header can lie). Loose files get names of our
own making (``0001-photo.jpg``): an uploaded file name is never used as a path.

``plan_uploads`` makes every check from the archives' directories without writing (so a caller can count
and charge the images first), ``write_plan`` writes; ``unpack_uploads`` does both. ``folder_bytes`` and
``prune_expired`` keep the disk that uploads take in bounds.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import stat
import time
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import InputError
from ..settings import Settings
from .imageio import IMAGE_EXTENSIONS

MIB = 1024 * 1024
MAX_MEMBERS = 20_000  # entries of any kind an archive may list (its central directory is read whole)
RATIO_FLOOR_BYTES = 1 * MIB  # members (and archives' images in all) smaller than this are not ratio-checked
HOSTED_MAX_IMAGES = 200  # images one upload may hold on a public explorer
# on a public explorer all images of one upload may take this many times ASAP_MAX_UPLOAD_MB once unpacked:
# the upload itself is at most ASAP_MAX_UPLOAD_MB (Streamlit's server.maxUploadSize), photos barely
# compress in a zip, and 4x leaves room for PNG, BMP or TIFF while bounding the disk one analysis takes
HOSTED_TOTAL_FACTOR = 4
# disk an analysed image takes besides its own bytes, counted against ASAP_UPLOAD_STORAGE_MB before an upload
# is unpacked: its thumbnail twice (run cache, bundle) and table rows took 11 KiB (tiny CLIP, noisy 512-px
# JPEGs); a ViT-B/32 embedding adds 2 KiB, on-demand maps a few more: this leaves room for larger models
ANALYSIS_BYTES_PER_IMAGE = 64 * 1024
LABEL_FOLDERS = ("real", "fake")  # where loose images go for each label (the strong words of scan)
MAX_PART_BYTES = 200  # longest file or folder name kept (UTF-8 bytes; most file systems stop at 255)
_CHUNK = MIB
_UNSAFE_CHARS = re.compile(r"[^\w.\- ]+")
_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_HINT = "re-create the zip from inside the image folder (e.g. `cd images && zip -r ../images.zip real fake`)"


@dataclass(frozen=True)
class UploadLimits:
    """How much one upload may hold: images, bytes per image and in all (uncompressed), inflation ratio."""

    max_files: int = 5_000
    max_file_bytes: int = 256 * MIB
    max_total_bytes: int = 4 * 1024 * MIB
    max_ratio: float = 100.0  # photos deflate to ~1:1, a flat BMP to ~100:1, zip bombs to 1000:1 and more


def upload_limits(s: Settings) -> UploadLimits:
    """The limits for ``s``: a public explorer (``s.hosted``) allows ``HOSTED_MAX_IMAGES`` images of at most
    ``ASAP_MAX_UPLOAD_MB`` each and ``HOSTED_TOTAL_FACTOR`` times that in all; locally the defaults."""
    if not s.hosted:
        return UploadLimits()
    return UploadLimits(max_files=HOSTED_MAX_IMAGES, max_file_bytes=s.max_upload_bytes,
                        max_total_bytes=HOSTED_TOTAL_FACTOR * s.max_upload_bytes)


@dataclass
class Unpacked:
    """What ``unpack_uploads`` wrote: ``files`` ('/'-separated paths relative to ``root``), ``skipped``
    ``(upload/member, reason)`` pairs, ``total_bytes`` written."""

    root: Path
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total_bytes: int = 0


@dataclass
class _Planned:
    """One image to write: its relative path parts, where it was found, and its bytes or zip member."""

    parts: tuple[str, ...]
    where: str
    size: int
    data: bytes | None = None
    archive: zipfile.ZipFile | None = None
    info: zipfile.ZipInfo | None = None
    totals: _ArchiveTotals | None = None

    def zip_member(self) -> tuple[zipfile.ZipFile, zipfile.ZipInfo, _ArchiveTotals]:
        """The archive, member and zip totals of an image planned from a zip (one without ``data``)."""
        if self.archive is None or self.info is None or self.totals is None:
            raise ValueError(f"{self.where} was not planned from a zip archive")
        return self.archive, self.info, self.totals


@dataclass
class _ArchiveTotals:
    """One zip's image members together: bytes declared unpacked, compressed bytes (at most the zip's own
    size: members may share one compressed stream) and bytes inflated so far (bytes)."""

    upload: str
    declared: int
    compressed: int
    inflated: int = 0


@dataclass
class UploadPlan:
    """An upload checked and ready to write (nothing written yet): its images, the skipped entries
    ``(upload/member, reason)``, and the bytes the uploads take as sent."""

    planned: list[_Planned]
    skipped: list[tuple[str, str]]
    upload_bytes: int

    @property
    def n_images(self) -> int:
        """Images that will be written (repeated names count once)."""
        return len(self.relpaths)

    @property
    def relpaths(self) -> list[str]:
        """The images' '/'-separated paths below the folder they will be written to (first of a name only)."""
        return list(dict.fromkeys("/".join(p.parts) for p in self.planned))

    @property
    def unpacked_bytes(self) -> int:
        """Bytes the images take once unpacked (declared sizes; the writing checks them again)."""
        return sum(p.size for p in self.planned)


def _mb(n: int) -> str:
    return f"{n / MIB:.1f} MB"


def is_zip_name(name: str) -> bool:
    """True for an upload whose name says zip archive."""
    return name.lower().endswith(".zip")


def safe_name(name: str, index: int) -> str:
    """A file name of our own for an uploaded ``name``: ``NNNN-<stem>.<suffix>``, only letters, digits and
    ``.-_ `` kept, the client's folders dropped."""
    base = PurePosixPath(name.replace("\\", "/")).name
    suffix = PurePosixPath(base).suffix.lower()
    stem = _UNSAFE_CHARS.sub("_", base[: len(base) - len(suffix)]).strip(" ._")[:60] or "image"
    return f"{index:04d}-{stem}{suffix}"


def _member_parts(upload: str, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The parts of a member's name; ``InputError`` when it leaves the folder, is a link or is encrypted."""
    name = info.filename.replace("\\", "/")
    where = f"{upload}: member '{info.filename}'"
    if name.startswith("/") or _DRIVE.match(name):
        raise InputError(f"{where} has an absolute path; the archive is refused.", f"{_ZIP_HINT}.")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise InputError(f"{where} climbs out of the archive's folder ('..'); the archive is refused.", f"{_ZIP_HINT}.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InputError(f"{where} is a symbolic link; the archive is refused.",
                         "zip the image files themselves (without `zip -y` / `--symlinks`).")
    if info.flag_bits & 0x1:
        raise InputError(f"{where} is encrypted.", "upload a zip without a password.")
    return parts


def _skip_reason(parts: tuple[str, ...]) -> str | None:
    """Why a (safe) member is not kept, or None."""
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return "hidden or system file"
    suffix = PurePosixPath(parts[-1]).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        return f"not an image type ({suffix or 'no extension'})"
    if any(len(p.encode("utf-8")) > MAX_PART_BYTES or not p.isprintable() for p in parts):
        return "name too long or with control characters; rename it"
    return None


def _check_member_size(where: str, info: zipfile.ZipInfo, limits: UploadLimits) -> None:
    """``InputError`` when one member is over the per-file limit or inflates like a zip bomb."""
    if info.file_size > limits.max_file_bytes:
        raise InputError(f"{where} is {_mb(info.file_size)} unpacked, over the {_mb(limits.max_file_bytes)} "
                         "limit per image.", "leave this file out or shrink it, and upload again.")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > RATIO_FLOOR_BYTES and ratio > limits.max_ratio:
        raise InputError(f"{where} inflates {ratio:.0f}:1 (more than {limits.max_ratio:g}:1); refused as a "
                         "possible zip bomb.", "store the images as JPEG or PNG (they barely compress) and zip "
                         "them again.")


def _check_archive_ratio(t: _ArchiveTotals, unpacked: int, limits: UploadLimits) -> None:
    """``InputError`` when a zip's images inflate, in all, past ``limits.max_ratio`` : 1 (``unpacked``: their
    declared or actually inflated bytes): many members under ``RATIO_FLOOR_BYTES`` are a bomb too."""
    ratio = unpacked / max(t.compressed, 1)
    if unpacked > RATIO_FLOOR_BYTES and ratio > limits.max_ratio:
        raise InputError(f"{t.upload}: its images inflate {ratio:.0f}:1 in all ({_mb(unpacked)} from "
                         f"{_mb(t.compressed)}; more than {limits.max_ratio:g}:1); refused as a possible zip bomb.",
                         "store the images as JPEG or PNG (they barely compress) and zip them again.")


def _open_zip(upload: str, data: bytes) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError) as exc:
        raise InputError(f"{upload} is not a readable zip archive ({exc}).",
                         "upload a .zip made by `zip`, 'Compress' or 'Send to > Compressed folder', or the "
                         "images themselves.") from None
    if len(archive.infolist()) > MAX_MEMBERS:
        raise InputError(f"{upload} lists {len(archive.infolist()):,} entries (at most {MAX_MEMBERS:,}).",
                         "upload fewer files.")
    return archive


def _plan_zip(upload: str, data: bytes, limits: UploadLimits, out: Unpacked) -> list[_Planned]:
    """The images of one zip upload (nothing written); refusals raise, skips go to ``out.skipped``."""
    archive = _open_zip(upload, data)
    planned = []
    compressed = 0
    for info in archive.infolist():
        if info.is_dir():
            continue
        parts = _member_parts(upload, info)
        if not parts:
            continue
        reason = _skip_reason(parts)
        if reason is not None:
            out.skipped.append((f"{upload}/{info.filename}", reason))
            continue
        where = f"{upload}: member '{info.filename}'"
        _check_member_size(where, info, limits)
        planned.append(_Planned(parts, where, info.file_size, archive=archive, info=info))
        compressed += info.compress_size
    totals = _ArchiveTotals(upload, sum(p.size for p in planned), min(compressed, len(data)))
    _check_archive_ratio(totals, totals.declared, limits)
    for p in planned:
        p.totals = totals
    return planned


def _plan_loose(upload: str, data: bytes, label: str | None, index: int, limits: UploadLimits,
                out: Unpacked) -> list[_Planned]:
    """One loose image (under ``label``'s folder), or a skip when it is not an image type."""
    suffix = PurePosixPath(upload.replace("\\", "/")).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        out.skipped.append((upload, f"not an image type ({suffix or 'no extension'})"))
        return []
    if len(data) > limits.max_file_bytes:
        raise InputError(f"{upload} is {_mb(len(data))}, over the {_mb(limits.max_file_bytes)} limit per image.",
                         "leave this file out or shrink it, and upload again.")
    if label is not None and label not in LABEL_FOLDERS:
        raise InputError(f"label {label!r} is not one of {', '.join(LABEL_FOLDERS)}.", "pick real, fake or none.")
    name = safe_name(upload, index)
    return [_Planned((label, name) if label else (name,), upload, len(data), data=data)]


def _check_totals(planned: list[_Planned], limits: UploadLimits) -> None:
    """``InputError`` when the upload holds too many images or too many bytes in all."""
    if len(planned) > limits.max_files:
        raise InputError(f"The upload holds {len(planned):,} images; at most {limits.max_files:,} can be "
                         "analysed here.", f"upload at most {limits.max_files:,} images (a sample of the set).")
    total = sum(p.size for p in planned)
    if total > limits.max_total_bytes:
        raise InputError(f"The upload's images take {_mb(total)} unpacked, over the {_mb(limits.max_total_bytes)} "
                         "limit.", "upload fewer or smaller images.")


def _check_file_folder(planned: list[_Planned]) -> None:
    """``InputError`` naming a file whose name is also a folder of the upload (``a.jpg`` and ``a.jpg/b.jpg``):
    the two cannot both be written."""
    files: dict[tuple[str, ...], _Planned] = {}
    for p in planned:
        files.setdefault(p.parts, p)
    for p in planned:
        for k in range(1, len(p.parts)):
            first = files.get(p.parts[:k])
            if first is not None:
                raise InputError(f"{first.where} is a file, and the upload also has a folder of that name "
                                 f"({p.where} is inside it); the upload is refused.",
                                 "rename that file or that folder so that no file has a folder's name, and zip "
                                 "the images again.")


def _copy_member(p: _Planned, target: Path, limits: UploadLimits) -> int:
    """Inflate one zip member into ``target``, counting the bytes actually produced; returns them."""
    cap = min(p.size, limits.max_file_bytes)
    archive, info, _ = p.zip_member()
    n = 0
    try:
        with archive.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(_CHUNK):
                n += len(chunk)
                if n > cap:
                    raise InputError(f"{p.where} inflates past its declared {_mb(p.size)}; the archive is refused.",
                                     f"{_ZIP_HINT}.")
                dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise InputError(f"{p.where} is damaged ({exc}).", f"{_ZIP_HINT}.") from None
    except NotImplementedError as exc:
        raise InputError(f"{p.where} uses a compression this app cannot read ({exc}).",
                         "zip the images again with the standard (deflate) compression.") from None
    return n


def _write(planned: list[_Planned], dest: Path, limits: UploadLimits, out: Unpacked) -> None:
    """Write the planned images below ``dest``; repeated names are skipped; the total is checked again."""
    root = dest.resolve()
    seen: set[tuple[str, ...]] = set()
    for p in planned:
        if p.parts in seen:
            out.skipped.append((p.where, "a file of the same name came first; it is kept"))
            continue
        seen.add(p.parts)
        target = root.joinpath(*p.parts)
        if not target.resolve().is_relative_to(root):  # never: parts are checked; a second guard
            raise InputError(f"{p.where} points outside the upload folder.", f"{_ZIP_HINT}.")
        target.parent.mkdir(parents=True, exist_ok=True)
        if p.data is not None:
            target.write_bytes(p.data)
            n = len(p.data)
        else:
            n = _copy_member(p, target, limits)
            _, _, totals = p.zip_member()
            totals.inflated += n
            _check_archive_ratio(totals, totals.inflated, limits)  # a second guard, on the bytes inflated
        out.total_bytes += n
        if out.total_bytes > limits.max_total_bytes:
            raise InputError(f"The upload's images take more than {_mb(limits.max_total_bytes)} unpacked.",
                             "upload fewer or smaller images.")
        out.files.append("/".join(p.parts))


def plan_uploads(uploads: Sequence[tuple[str, bytes]], loose_label: str | None = None,
                 limits: UploadLimits | None = None) -> UploadPlan:
    """Check ``(name, bytes)`` uploads from the archives' directories, nothing written: an ``UploadPlan``
    (what ``write_plan`` writes), or the ``InputError`` of the first refusal.

    A ``.zip`` upload keeps its folders; any other upload is a loose image, written as ``safe_name`` under
    ``loose_label``'s folder (``"real"``/``"fake"``, or the root for None).
    """
    limits = limits or UploadLimits()
    out = Unpacked(Path("."))
    planned: list[_Planned] = []
    for i, (name, data) in enumerate(uploads, start=1):
        if is_zip_name(name):
            planned += _plan_zip(name, data, limits, out)
        else:
            planned += _plan_loose(name, data, loose_label, i, limits, out)
    _check_totals(planned, limits)
    if not planned:
        raise InputError("The upload holds no images" + (f" ({len(out.skipped)} other files skipped)"
                                                         if out.skipped else "") + ".",
                         f"upload a zip of images or the images themselves ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    _check_file_folder(planned)
    return UploadPlan(planned, out.skipped, sum(len(data) for _, data in uploads))


def write_plan(plan: UploadPlan, dest: str | Path, limits: UploadLimits | None = None) -> Unpacked:
    """Write a checked ``plan`` into the new folder ``dest`` (it must not exist yet), checking the bytes
    actually inflated again; on any refusal ``dest`` is removed and the ``InputError`` raised."""
    limits = limits or UploadLimits()
    dest = Path(dest)
    out = Unpacked(dest, skipped=list(plan.skipped))
    dest.mkdir(parents=True, exist_ok=False)
    try:
        _write(plan.planned, dest, limits, out)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return out


def unpack_uploads(uploads: Sequence[tuple[str, bytes]], dest: str | Path, loose_label: str | None = None,
                   limits: UploadLimits | None = None) -> Unpacked:
    """Unpack ``(name, bytes)`` uploads into the new folder ``dest`` (``plan_uploads``, then ``write_plan``):
    everything is checked before a byte is written."""
    return write_plan(plan_uploads(uploads, loose_label, limits), dest, limits)


def _ages(parent: Path, kept: list[Path], now: float) -> list[tuple[float, Path]]:
    """``(age in s, folder)`` of the sub-folders of ``parent`` that hold none of ``kept``, youngest first."""
    found = []
    for sub in parent.iterdir() if parent.is_dir() else ():
        if not sub.is_dir() or sub.is_symlink():
            continue
        resolved = sub.resolve()
        if any(k == resolved or k.is_relative_to(resolved) for k in kept):
            continue
        try:
            found.append((now - sub.stat().st_mtime, sub))
        except OSError:
            continue
    return sorted(found, key=lambda a: a[0])


def prune_folders(parent: str | Path, max_age_s: float, keep: Iterable[Path] = (), max_count: int | None = None,
                  now: float | None = None) -> list[Path]:
    """Remove the sub-folders of ``parent`` not modified for ``max_age_s`` seconds and, beyond the
    ``max_count`` youngest, the older ones; never one that is (or holds) a path of ``keep``. Returns the
    removed folders."""
    kept = [Path(k).resolve() for k in keep]
    removed = []
    for n, (age, sub) in enumerate(_ages(Path(parent), kept, time.time() if now is None else now)):
        if age > max_age_s or (max_count is not None and n >= max_count):
            shutil.rmtree(sub, ignore_errors=True)
            removed.append(sub)
    return removed


def folder_bytes(path: str | Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed; files that vanish meanwhile count 0);
    0 when ``path`` does not exist."""
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def prune_expired(root: str | Path, max_age_s: float, keep: Iterable[Path] = (), now: float | None = None
                  ) -> list[Path]:
    """Remove the upload folders ``root/<session>/<upload>`` not modified for ``max_age_s`` seconds (never
    one that is or holds a path of ``keep``), then the session folders left empty. Returns the removed
    upload folders. Nothing younger is touched, whatever the disk they take."""
    keep = list(keep)
    removed: list[Path] = []
    for session in Path(root).iterdir() if Path(root).is_dir() else ():
        if not session.is_dir() or session.is_symlink():
            continue
        removed += prune_folders(session, max_age_s, keep=keep, now=now)
        try:
            session.rmdir()  # only when empty
        except OSError:
            pass
    return removed


def check_space(used: int, need: int, cap: int) -> None:
    """``InputError`` when ``need`` more bytes on top of the ``used`` bytes of all uploads pass ``cap``."""
    if used + need > cap:
        raise InputError("This explorer's space for uploads is full right now; try again later.",
                         "uploads are deleted a day after they were made; a smaller upload may still fit, and "
                         "on your own machine ASAP Explorer has no such limit.")


__all__ = ["ANALYSIS_BYTES_PER_IMAGE", "HOSTED_MAX_IMAGES", "HOSTED_TOTAL_FACTOR", "LABEL_FOLDERS", "MAX_MEMBERS",
           "Unpacked", "UploadLimits", "UploadPlan", "check_space", "folder_bytes", "is_zip_name", "plan_uploads",
           "prune_expired", "prune_folders", "safe_name", "unpack_uploads", "upload_limits", "write_plan"]
