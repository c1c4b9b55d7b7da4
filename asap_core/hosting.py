"""Hosted mode (``ASAP_HOSTED=1``): what a public explorer lets its visitors do.

- Bundles only from a configured root (``ASAP_BUNDLE_ROOT``), named relative to it; no ``..``, no absolute
  paths, no symlinks out of the root.
- Uploads limited by size and type, decoded by ``imageio`` with Pillow's pixel limit.
- Model ids only from an allow-list (``ASAP_MODEL_ALLOWLIST``, comma-separated); ``trust_remote_code`` is never
  set anywhere in asap_core.
- Bundles hold only open formats (JSON, Parquet, safetensors, plain-dtype .npy, JPEG inside Parquet): a
  bundle carrying a pickle-capable file (``.pkl``, ``.pt``, ``.bin``, an object-dtype ``.npy``, ...) is refused.
- A budget of work per visitor and day, not per browser session: images with on-demand relevance maps and
  uploaded images (``UPLOAD_IMAGE_UNITS`` each) share it; uploaded bytes have their own daily budget. The
  visitor is ``client_address``: the address ``ASAP_TRUSTED_PROXIES`` hops from the right of the proxies'
  header, else the peer; visitors from loopback share one identity. Budgets live in the durable
  ``storage.state_store`` (shared by every server process on one ``ASAP_STATE_URL``, kept over restarts).
- ``WorkSlots``: at most ``ASAP_HEAVY_SLOTS`` on-demand computations at once; the others wait their turn.
- What visitors read never holds a server path (``public_text``) or an exception name; ``error_id`` ties
  what they read to the full message in the server log.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from .errors import BundleError, ImageLoadError, InputError
from .inputs.imageio import IMAGE_EXTENSIONS, decode_image, image_size
from .settings import MB, Settings, settings

if TYPE_CHECKING:
    from .storage.state_store import Charge, StateStore

SAFE_BUNDLE_SUFFIXES = frozenset({".json", ".parquet", ".safetensors", ".md", ".txt", ".csv", ".png", ".jpg", ".npy"})
BUDGET_WINDOW_S = 24 * 3600  # a visitor's budgets renew this many seconds after their window began
UPLOAD_IMAGE_UNITS = 1  # what one uploaded image costs of the "work" budget, in images with new maps
KIND_WORK = "work"  # budget kind: images with on-demand maps, and uploaded images
KIND_UPLOAD_BYTES = "upload_bytes"  # budget kind: bytes uploaded
LOOPBACK_CLIENT = "ip:loopback"  # every visitor whose address is unknown or on this host: one shared budget
IPV6_PREFIX = 64  # an IPv6 visitor is its /64: a host picks any address inside its own /64
MAX_NAME_CHARS = 200  # longest bundle name a visitor may send
LOG = logging.getLogger("asap_explorer")  # the server log (the app's glue logs under the same name)


def hosted_mode() -> bool:
    """True when ``ASAP_HOSTED`` is on."""
    return settings().hosted


@dataclass
class HostedPolicy:
    """The limits of a hosted explorer; ``from_settings()`` takes them all from ``asap_core.settings``, and a
    limit left out of the constructor is ``settings()``' value.

    ``bundle_root``: folder of the bundles visitors may open; ``model_allowlist``: model ids visitors may
    pick; ``max_upload_bytes``; ``relevance_budget``: units of work (images with on-demand maps, uploaded
    images) per client and ``BUDGET_WINDOW_S``; ``upload_bytes_per_day``: bytes uploaded per client and
    window; ``state_url``: the state store's SQLAlchemy URL (None: ``settings().state_db_url``).
    """

    bundle_root: Path
    # a limit left out is the process's setting: the defaults live in asap_core.settings only
    model_allowlist: tuple[str, ...] = field(default_factory=lambda: settings().model_allowlist)
    max_upload_bytes: int = field(default_factory=lambda: settings().max_upload_bytes)
    relevance_budget: int = field(default_factory=lambda: settings().relevance_budget)
    upload_bytes_per_day: int = field(default_factory=lambda: settings().upload_bytes_per_day)
    state_url: str | None = None

    @classmethod
    def from_settings(cls, s: Settings | None = None) -> HostedPolicy:
        """The policy the settings describe; ``InputError`` when ``ASAP_BUNDLE_ROOT`` is missing."""
        s = s or settings()
        if s.bundle_root is None:
            raise InputError("ASAP_HOSTED=1 needs ASAP_BUNDLE_ROOT: the folder that holds the bundles to serve.",
                             "set ASAP_BUNDLE_ROOT=/srv/asap-bundles (bundles as sub-folders).")
        return cls(s.bundle_root, s.model_allowlist, s.max_upload_bytes, s.relevance_budget,
                   s.upload_bytes_per_day, s.state_db_url)

    @property
    def store(self) -> StateStore:
        """The durable store the budgets are charged to (one per URL and process)."""
        from .storage.state_store import StateStore

        return StateStore.from_url(self.state_url)

    def used(self, client: str, kind: str = KIND_WORK, now: float | None = None) -> int:
        """Units of ``kind`` charged to ``client`` in its current window."""
        return self.store.used(client, kind, now)

    def list_bundles(self) -> list[str]:
        """Names of the root's sub-folders that hold a ``bundle.json``; hidden folders (a run's temp or backup
        folder, ``.git``, ...) and names a visitor could not send back (``listable_name``) are never offered;
        an unreadable root offers none (logged)."""
        try:
            if not self.bundle_root.is_dir():
                return []
            return sorted(p.parent.name for p in self.bundle_root.glob("*/bundle.json")
                          if listable_name(p.parent.name) and p.parent.is_dir() and not p.parent.is_symlink())
        except OSError as exc:
            LOG.error("error id %s: the bundle root cannot be listed: %s", error_id(), exc)
            return []

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

    def bundle_problem(self, name: str, deep: bool = False) -> str | None:
        """Why the listed bundle ``name`` cannot be opened, in words a visitor may read (no server paths, no
        exception names; an unexpected failure is logged under an error id); None when it passes the same checks
        as ``Bundle.open`` (schema, ids, finite coordinates, open formats). ``deep``: every row of its tables is
        read too (``Bundle.open(read_tables=True)``), as the landing bundle must be; a pass is remembered per
        version of its files, so new sessions do not read them again."""
        try:
            open_check(self.resolve_bundle(name), deep)
        except (BundleError, InputError) as exc:
            return public_text(exc.message, self.bundle_root)
        except OSError as exc:  # unreadable folder: said without the path
            return f"bundle '{visitor_echo(name)}' cannot be read ({exc.strerror or 'input/output error'})."
        except Exception as exc:
            eid = error_id()
            LOG.error("error id %s: bundle %r: %s", eid, name, exc, exc_info=(type(exc), exc, exc.__traceback__))
            return f"bundle '{visitor_echo(name)}' cannot be opened (error id {eid})."
        return None

    def first_usable(self, preferred: str | None = None) -> str | None:
        """``preferred`` if it is listed, opens and reads in full (``bundle_problem(deep=True)``: the landing
        bundle must draw), else the first listed bundle that does; None if none does."""
        names = self.list_bundles()
        order = ([preferred] if preferred in names else []) + [n for n in names if n != preferred]
        return next((n for n in order if self.bundle_problem(n, deep=True) is None), None)

    def check_model(self, model_id: str) -> str:
        """``model_id`` if it is on the allow-list, else ``InputError``."""
        if model_id not in self.model_allowlist:
            raise InputError(f"Model '{model_id}' is not offered on this explorer.",
                             f"choose one of: {', '.join(self.model_allowlist) or '(none configured)'}.")
        return model_id

    def check_upload(self, name: str, data: bytes) -> Image.Image:
        """Decode an uploaded image safely; ``InputError`` / ``ImageLoadError`` name what is wrong."""
        self.check_upload_header(name, data)
        return decode_image(data, name)

    def check_upload_header(self, name: str, data: bytes) -> tuple[int, int]:
        """The cheap checks of an upload, no pixel decoded: type, bytes, and the pixel budget read from the
        header; ``(width, height)``. ``InputError`` / ``ImageLoadError`` name what is wrong."""
        suffix = Path(name).suffix.lower()
        if suffix not in IMAGE_EXTENSIONS:
            raise InputError(f"{name}: '{suffix or 'no extension'}' is not an image type accepted here.",
                             f"upload one of: {', '.join(sorted(IMAGE_EXTENSIONS))}.")
        if len(data) > self.max_upload_bytes:
            raise InputError(f"{name}: {len(data) / MB:.1f} MB is over the {self.max_upload_bytes / MB:g} MB limit.",
                             "upload a smaller image (resize or recompress it).")
        return image_size(data, name)

    def charge_relevance(self, client: str, n_images: int, now: float | None = None) -> None:
        """Count ``n_images`` of on-demand relevance against ``client``'s work budget (a client address, not a
        browser session: new sessions share it); ``InputError`` past it. Atomic across processes."""
        charge = self.store.charge(client, KIND_WORK, int(n_images), self.relevance_budget, BUDGET_WINDOW_S, now)
        if not charge.allowed:
            raise _over_budget(charge, "images with new attention maps this explorer computes", now,
                               "pick images whose maps are already shown elsewhere, or come back")

    def charge_upload(self, client: str, n_images: int, n_bytes: int, now: float | None = None) -> None:
        """Charge an upload of ``n_images`` images (``UPLOAD_IMAGE_UNITS`` each, to the work budget) and
        ``n_bytes`` bytes (to the daily upload bytes) to ``client``: both are checked, then both charged, or
        neither; ``InputError`` names the budget it would pass."""
        items = [(KIND_WORK, int(n_images) * UPLOAD_IMAGE_UNITS, self.relevance_budget),
                 (KIND_UPLOAD_BYTES, int(n_bytes), self.upload_bytes_per_day)]
        charges = self.store.charge_all(client, items, BUDGET_WINDOW_S, now)
        work, nbytes = charges
        if not nbytes.allowed:
            raise InputError(f"You have uploaded {nbytes.used_before / MB:.1f} MB of the {nbytes.limit / MB:g} MB "
                             f"this explorer accepts per visitor and day; these {nbytes.amount / MB:.1f} MB more "
                             "would pass the limit.",
                             f"upload fewer or smaller images, or come back in about {_hours_left(nbytes, now)} h.")
        if not work.allowed:
            raise _over_budget(work, "units of work (uploaded images and new attention maps) this explorer "
                               "does", now, "upload fewer images, or come back")


def _hours_left(charge: Charge, now: float | None) -> int:
    """Whole hours (at least 1) until ``charge``'s window renews."""
    now = time.time() if now is None else now
    return max(1, round((charge.window_end - now) / 3600))


def _over_budget(charge: Charge, what: str, now: float | None, fix: str) -> InputError:
    """The visitor's message for a refused ``charge`` of the work budget."""
    return InputError(f"You have used {charge.used_before} of the {charge.limit} {what} per visitor and day; "
                      f"{charge.amount} more would pass the limit.",
                      f"{fix} in about {_hours_left(charge, now)} h.")


def client_address(forwarded: str | None, peer: str | None, trusted_proxies: int) -> str:
    """Who a visitor is for the budgets: ``"ip:<address>"`` (an IPv6 address as its /64).

    ``forwarded``: the proxies' header (``X-Forwarded-For``: comma-separated, each proxy appends the address
    it saw); ``peer``: the TCP peer's address (None or loopback: this host); ``trusted_proxies``: how many
    proxies of ours are in front of the server. The visitor is the entry ``trusted_proxies`` from the right:
    our outermost proxy wrote it, and whatever a client wrote to the left of it is ignored. 0 proxies: the
    peer, the header is ignored. A header with fewer entries than ``trusted_proxies``, or whose entry there
    is not an address, did not pass our proxies: the peer is used, never a value the client chose. A
    loopback or unknown peer is ``LOOPBACK_CLIENT``: everyone arriving through this host shares one budget.
    """
    n = max(0, int(trusted_proxies))
    entries = [e.strip() for e in (forwarded or "").split(",")] if n else []
    address = _parse_address(entries[-n]) if n and len(entries) >= n else None
    return _client_key(address if address is not None else _parse_address(peer or ""))


def loopback_notice(trusted_proxies: int) -> str:
    """The operator's note (server start, log) on visitors who arrive from loopback: they share one budget."""
    proxies = (f"ASAP_TRUSTED_PROXIES={trusted_proxies}: the visitor is the address {trusted_proxies} "
               "hop(s) from the right of the forwarded header" if trusted_proxies else
               "ASAP_TRUSTED_PROXIES=0: the forwarded header is ignored")
    return (f"{proxies}; visitors whose connection comes from loopback (a proxy or tunnel on this host) share "
            "one budget. Behind one reverse proxy on this host that appends X-Forwarded-For (nginx, Caddy), set "
            "ASAP_TRUSTED_PROXIES=1; with Docker's published port and no proxy, keep 0 (each address its own "
            "budget; peers seen through Docker's bridge share one); on Streamlit Community Cloud the app sits "
            "behind the platform's proxies: see deploy/README.md for how to count them.")


def _parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address in ``text`` (``1.2.3.4``, ``1.2.3.4:5678``, ``::1``, ``[::1]:5678``); None when none."""
    text = text.strip().strip('"')
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _client_key(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str:
    """``"ip:<address>"`` for a visitor's address; loopback, unspecified and unknown share ``LOOPBACK_CLIENT``."""
    if address is None or address.is_loopback or address.is_unspecified:
        return LOOPBACK_CLIENT
    if address.version == 6:
        return f"ip:{ipaddress.ip_network(f'{address}/{IPV6_PREFIX}', strict=False)}"
    return f"ip:{address}"


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


def listable_name(name: str) -> bool:
    """True for a bundle folder name the picker may offer: not hidden, printable (no control characters, no
    undecodable bytes), at most ``MAX_NAME_CHARS``; ``resolve_bundle`` refuses any other."""
    return 0 < len(name) <= MAX_NAME_CHARS and not name.startswith(".") and name.isprintable()


_CHECKED: dict[tuple, BundleError | None] = {}  # (folder, deep, its files' versions) -> ``open_check``'s verdict
_CHECKED_MAX = 512


def open_check(path: Path, deep: bool = False) -> None:
    """``BundleError`` unless the bundle folder ``path`` opens (``validate``; with ``deep`` every row of its tables
    too). The verdict (a pass, or the ``BundleError``) is remembered for the files' versions (mtime and size of
    bundle.json, tables, names, model/): new sessions neither read a good bundle again nor a bad one."""
    from .storage import schema as S
    from .storage.bundle import Bundle, validate

    files = (S.META_NAME, S.IMAGES_FILE, S.CELLS_FILE, S.THUMBS_FILE, S.NAMES_FILE, S.MODEL_DIR)
    stats = [(path / f).stat() if (path / f).exists() else None for f in files]
    key = (str(path), deep, tuple((s.st_mtime_ns, s.st_size) if s else None for s in stats))
    if key in _CHECKED:
        known = _CHECKED[key]
        if known is not None:
            raise BundleError(known.message, known.hint)
        return
    try:
        Bundle.open(path, read_tables=True) if deep else validate(path)
        verdict = None
    except BundleError as exc:
        verdict = exc
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[key] = verdict
    if verdict is not None:
        raise BundleError(verdict.message, verdict.hint)


def check_bundle_files(path: Path) -> None:
    """Refuse a bundle that carries files other than open formats (pickle-capable files above all); a folder
    that cannot be walked is refused too (``BundleError``, never an ``OSError``)."""
    if not path.is_dir():
        raise BundleError(f"{path.name} is not a bundle folder.", "pick one of the listed bundles.")
    try:
        _check_files(path)
    except OSError as exc:
        raise BundleError(f"bundle {path.name} cannot be read ({exc.strerror or 'input/output error'}).",
                          "the explorer's operator can check the folder's permissions.") from None


def _check_files(path: Path) -> None:
    """``check_bundle_files`` of the folder ``path``, which exists."""
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
    except Exception:
        return False
    return not dtype.hasobject


__all__ = ["HostedPolicy", "ImageLoadError", "WorkSlots", "check_bundle_files", "client_address", "error_id",
           "hosted_mode", "loopback_notice", "model_label", "public_text", "visitor_echo"]
