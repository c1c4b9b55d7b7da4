"""Hosted mode (``ASAP_HOSTED=1``): what a public explorer lets its visitors do.

- Bundles only from a configured root (``ASAP_BUNDLE_ROOT``), named relative to it; no ``..``, no absolute
  paths, no symlinks out of the root.
- Uploads limited by size and type, decoded by ``imageio`` with Pillow's pixel limit.
- Model ids only from an allow-list (``ASAP_MODEL_ALLOWLIST``, comma-separated); ``trust_remote_code`` is never
  set anywhere in asap_core.
- Bundles hold only open formats (JSON, Parquet, safetensors, plain-dtype .npy, JPEG inside Parquet): a
  bundle carrying a pickle-capable file (``.pkl``, ``.pt``, ``.bin``, an object-dtype ``.npy``, ...) is refused.
- A budget of on-demand relevance images per visitor (client address, or a proxy's header) and day, not per
  browser session: opening fresh sessions does not reset it.
- ``WorkSlots``: at most ``ASAP_HEAVY_SLOTS`` on-demand computations at once; the others wait their turn.
- What visitors read never holds a server path (``public_text``) or an exception name; ``error_id`` ties
  what they read to the full message in the server log.
"""
from __future__ import annotations

import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from PIL import Image

from .errors import BundleError, ImageLoadError, InputError
from .inputs.imageio import IMAGE_EXTENSIONS, decode_image
from .settings import Settings, settings

SAFE_BUNDLE_SUFFIXES = frozenset({".json", ".parquet", ".safetensors", ".md", ".txt", ".csv", ".png", ".jpg", ".npy"})
BUDGET_WINDOW_S = 24 * 3600  # a visitor's relevance budget renews after this many seconds
MAX_NAME_CHARS = 200  # longest bundle name a visitor may send


def hosted_mode() -> bool:
    """True when ``ASAP_HOSTED`` is on."""
    return settings().hosted


@dataclass
class HostedPolicy:
    """The limits of a hosted explorer; ``from_settings()`` takes them from ``asap_core.settings``.

    ``bundle_root``: folder of the bundles visitors may open; ``model_allowlist``: model ids visitors may
    pick; ``max_upload_bytes``; ``relevance_budget``: images with on-demand maps per client and
    ``BUDGET_WINDOW_S``. ``used``: client -> (images charged, start of the client's window, epoch seconds).
    """

    bundle_root: Path
    model_allowlist: tuple[str, ...] = ()
    max_upload_bytes: int = 10 * 1024 * 1024
    relevance_budget: int = 200
    used: dict[str, tuple[int, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def from_settings(cls, s: Settings | None = None) -> "HostedPolicy":
        """The policy the settings describe; ``InputError`` when ``ASAP_BUNDLE_ROOT`` is missing."""
        s = s or settings()
        if s.bundle_root is None:
            raise InputError("ASAP_HOSTED=1 needs ASAP_BUNDLE_ROOT: the folder that holds the bundles to serve.",
                             "set ASAP_BUNDLE_ROOT=/srv/asap-bundles (bundles as sub-folders).")
        return cls(s.bundle_root, s.model_allowlist, s.max_upload_bytes, s.relevance_budget)

    def list_bundles(self) -> list[str]:
        """Names of the root's sub-folders that hold a ``bundle.json``; hidden folders (a run's temp or backup
        folder, ``.git``, ...) are never offered."""
        if not self.bundle_root.is_dir():
            return []
        return sorted(p.parent.name for p in self.bundle_root.glob("*/bundle.json")
                      if not p.parent.name.startswith(".") and p.parent.is_dir() and not p.parent.is_symlink())

    def resolve_bundle(self, name: str) -> Path:
        """The bundle folder for a visitor-given ``name``: one of ``list_bundles()`` exactly, else ``InputError``
        (escapes, sub-folders, hidden folders, control characters, over-long names)."""
        shown = visitor_echo(name)
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise InputError(f"'{shown}' is not a bundle name here.", "pick one of the listed bundles.")
        if name not in self.list_bundles():
            if ".." in Path(name).parts or name.startswith(("/", "\\", "~")):
                raise InputError(f"'{shown}' leaves the bundle folder.", "pick one of the listed bundles.")
            raise InputError(f"There is no bundle '{shown}' on this explorer.", "pick one of the listed bundles.")
        path = (self.bundle_root / name).resolve()
        if path.parent != self.bundle_root:
            raise InputError(f"'{shown}' points outside the bundle folder.", "pick one of the listed bundles.")
        check_bundle_files(path)
        return path

    def bundle_problem(self, name: str) -> str | None:
        """Why the listed bundle ``name`` cannot be opened, in words a visitor may read (no server paths); None
        when it passes the same checks as ``Bundle.open`` (schema, ids, open formats)."""
        from .storage.bundle import validate

        try:
            validate(self.resolve_bundle(name))
        except (BundleError, InputError) as exc:
            return public_text(exc.message, self.bundle_root)
        except OSError as exc:  # unreadable folder: said without the path
            return f"bundle '{visitor_echo(name)}' cannot be read ({exc.strerror or 'input/output error'})."
        return None

    def first_usable(self, preferred: str | None = None) -> str | None:
        """``preferred`` if it is listed and opens, else the first listed bundle that does; None if none does."""
        names = self.list_bundles()
        order = ([preferred] if preferred in names else []) + [n for n in names if n != preferred]
        return next((n for n in order if self.bundle_problem(n) is None), None)

    def check_model(self, model_id: str) -> str:
        """``model_id`` if it is on the allow-list, else ``InputError``."""
        if model_id not in self.model_allowlist:
            raise InputError(f"Model '{model_id}' is not offered on this explorer.",
                             f"choose one of: {', '.join(self.model_allowlist) or '(none configured)'}.")
        return model_id

    def check_upload(self, name: str, data: bytes) -> Image.Image:
        """Decode an uploaded image safely; ``InputError`` / ``ImageLoadError`` name what is wrong."""
        suffix = Path(name).suffix.lower()
        if suffix not in IMAGE_EXTENSIONS:
            raise InputError(f"{name}: '{suffix or 'no extension'}' is not an image type accepted here.",
                             f"upload one of: {', '.join(sorted(IMAGE_EXTENSIONS))}.")
        if len(data) > self.max_upload_bytes:
            mb = 1024 * 1024  # the MB of ASAP_MAX_UPLOAD_MB and of Streamlit's maxUploadSize
            raise InputError(f"{name}: {len(data) / mb:.1f} MB is over the {self.max_upload_bytes / mb:g} MB limit.",
                             "upload a smaller image (resize or recompress it).")
        return decode_image(data, name)

    def charge_relevance(self, client: str, n_images: int, now: float | None = None) -> None:
        """Count ``n_images`` of on-demand relevance against ``client``'s budget (a client address, not a browser
        session: new sessions share it); ``InputError`` past it. Thread-safe."""
        now = time.time() if now is None else now
        with self._lock:
            used, since = self.used.get(client, (0, now))
            if now - since >= BUDGET_WINDOW_S:
                used, since = 0, now
            if used + n_images > self.relevance_budget:
                hours = max(1, round((since + BUDGET_WINDOW_S - now) / 3600))
                raise InputError(f"You have used {used} of the {self.relevance_budget} images with new attention "
                                 f"maps this explorer computes per visitor and day; {n_images} more would pass "
                                 "the limit.",
                                 f"pick images whose maps are already shown elsewhere, or come back in about "
                                 f"{hours} h.")
            self.used[client] = (used + n_images, since)


class WorkSlots:
    """At most ``n`` heavy computations at once in this server (``ASAP_HEAVY_SLOTS``); the others wait.

    ``with slots.hold(timeout, on_wait):`` runs the block once a slot is free; ``on_wait(position)`` is called
    first when the visitor has to wait (``position``: computations ahead, running or waiting);
    ``InputError`` after ``timeout`` seconds without a slot.
    """

    def __init__(self, n: int) -> None:
        self.n = max(1, int(n))
        self._sem = threading.BoundedSemaphore(self.n)
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0

    @contextmanager
    def hold(self, timeout: float = 300.0, on_wait=None) -> Iterator[None]:
        if not self._sem.acquire(blocking=False):
            with self._lock:
                self.waiting += 1
                ahead = self.running + self.waiting - 1
            if on_wait is not None:
                on_wait(ahead)
            try:
                got = self._sem.acquire(timeout=timeout)
            finally:
                with self._lock:
                    self.waiting -= 1
            if not got:
                raise InputError("The explorer is busy: every slot for new computations stayed taken for "
                                 f"{timeout:.0f} s.", "try again in a minute; what is already computed still shows.")
        with self._lock:
            self.running += 1
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
            self._sem.release()


_ABS_PATH = re.compile(r"(?<![\w.:/-])(?:~|[A-Za-z]:)?[/\\](?:[^\s'\"`,;()<>\[\]{}|]+[/\\])*[^\s'\"`,;()<>\[\]{}|]*")


def public_text(text: str, root: Path | None = None) -> str:
    """``text`` with every absolute path cut to what a visitor may see: a path under ``root`` becomes its name
    relative to the root, any other its last component (``/srv/models/clip-b32`` -> ``clip-b32``)."""
    def repl(m: re.Match) -> str:
        p = m.group(0).rstrip(".")
        tail = m.group(0)[len(p):]
        if root is not None:
            try:
                rel = Path(p).relative_to(root).as_posix()
                return (rel if rel != "." else "the bundle folder") + tail
            except ValueError:
                pass
        name = re.split(r"[/\\]", p.rstrip("/\\"))[-1]
        return (name or "a server folder") + tail

    return _ABS_PATH.sub(repl, text)


def visitor_echo(value: str, limit: int = 60) -> str:
    """A visitor-sent value as it may be echoed back: printable characters only, at most ``limit`` of them."""
    clean = "".join(c if c.isprintable() else "?" for c in str(value))
    return clean if len(clean) <= limit else clean[:limit] + "…"


def error_id() -> str:
    """A short id that ties what a visitor reads to the full message in the server log."""
    return uuid.uuid4().hex[:8]


def model_label(model_id: str) -> str:
    """How a model is named to visitors: a Hugging Face id as it is, a local folder by its last component."""
    p = str(model_id)
    if p.startswith(("/", "~", ".", "\\")) or re.match(r"^[A-Za-z]:", p) or p.count("/") > 1:
        return Path(p).name or p
    return p


def check_bundle_files(path: Path) -> None:
    """Refuse a bundle that carries files other than open formats (pickle-capable files above all)."""
    if not path.is_dir():
        raise BundleError(f"{path.name} is not a bundle folder.", "pick one of the listed bundles.")
    for f in path.rglob("*"):
        if f.is_symlink():
            raise BundleError(f"{f.relative_to(path)} in bundle {path.name} is a symbolic link.",
                              "bundles served publicly must hold plain files only.")
        if f.is_file() and (f.suffix.lower() not in SAFE_BUNDLE_SUFFIXES
                            or (f.suffix.lower() == ".npy" and not _plain_npy(f))):
            raise BundleError(f"{f.relative_to(path)} in bundle {path.name} is not an open format "
                              f"('{f.suffix}' may hold pickled code).",
                              "bundles hold JSON, Parquet and safetensors only: remove the file or re-run analyze.")


def _plain_npy(f: Path) -> bool:
    """True when ``f`` is a readable ``.npy`` of a plain (non-object) dtype: one that can hold no pickle.

    The concept view caches its segment embeddings as ``.npy`` in ``bundle/cache``; object arrays (the
    only kind that carries a pickle) are refused, as is anything whose header does not parse.
    """
    import numpy as np

    fmt = np.lib.format
    try:
        with open(f, "rb") as fh:
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            _, _, dtype = read(fh)
    except (OSError, ValueError):
        return False
    return not dtype.hasobject


__all__ = ["HostedPolicy", "WorkSlots", "check_bundle_files", "error_id", "hosted_mode", "model_label",
           "public_text", "visitor_echo", "ImageLoadError"]
