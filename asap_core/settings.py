"""Every environment setting of ASAP Explorer, read once into one typed, frozen object.

``settings()`` reads the environment on first use and returns the same ``Settings`` afterwards; nothing
else in ``asap_core`` (or the app) reads ``os.environ``. ``reload_settings()`` reads it again (tests, or a
long-lived process whose environment changed). ``ENVIRONMENT`` lists every variable with its default and
meaning; the README's table is checked against it by the tests.

Booleans accept ``1/true/yes/on`` and ``0/false/no/off`` (any case; empty = the default); anything else
is an ``InputError`` naming the variable.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import InputError

#: name -> (default as a user would write it, what it sets)
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "ASAP_MODEL": ("openai/clip-vit-base-patch32", "CLIP checkpoint: Hugging Face id or local folder"),
    "ASAP_CACHE_DIR": ("~/.cache/asap_explorer", "where embeddings, maps, models and the demo bundle are cached"),
    "ASAP_BUNDLE": ("(the demo)", "bundle the app opens first (a folder; in hosted mode a name under the root)"),
    "ASAP_HOSTED": ("0", "1: public explorer mode (bundles by name, no paths, budgets, allow-listed models)"),
    "ASAP_BUNDLE_ROOT": ("(none)", "hosted mode: the folder whose sub-folders are the bundles visitors may open"),
    "ASAP_MODEL_ALLOWLIST": ("(none)", "hosted mode: comma-separated model ids visitors may switch to"),
    "ASAP_MAX_UPLOAD_MB": ("10", "hosted mode: largest upload, in MB"),
    "ASAP_RELEVANCE_BUDGET": ("200", "hosted mode: images with on-demand relevance maps per visitor and day"),
    "ASAP_HEAVY_SLOTS": ("2", "hosted mode: on-demand computations (maps, uploads, laundering) run at once; others wait"),
    "ASAP_CLIENT_HEADER": ("X-Forwarded-For", "hosted mode behind proxies: the header they append the client's address to"),
    "ASAP_TRUSTED_PROXIES": ("0", "hosted mode: proxies in front of the server; the visitor is the address this many hops from the right of ASAP_CLIENT_HEADER (0: the peer address)"),
    "ASAP_MAX_UPLOAD_PIXELS": ("64000000", "hosted mode: largest uploaded or served image in pixels, read from its header before decoding"),
    "ASAP_UPLOAD_MB_PER_DAY": ("40", "hosted mode: MB of uploads one visitor may send per day"),
    "ASAP_UPLOAD_STORAGE_MB": ("2048", "hosted mode: disk for all visitors' uploads and the caches they create; new uploads are refused beyond it"),
    "ASAP_STATE_URL": ("(SQLite in ASAP_CACHE_DIR)", "where budgets and class results are kept: an SQLAlchemy URL, e.g. postgresql://host/asap, shared by several servers"),
    "ASAP_COMPILE": ("0", "1: torch.compile the CLIP forward (one-off compile; faster on long runs)"),
    "ASAP_CPU_BF16": ("0", "1: bfloat16 model on CPUs with native bf16 (faster, embeddings differ slightly)"),
    "ASAP_MALLOC_KEEP": ("1", "0: leave glibc's malloc alone (by default it keeps freed activations for reuse)"),
    "ASAP_MAX_IMAGE_PIXELS": ("(Pillow's, ~89 Mpx)", "largest image in pixels before it is refused; 0 = no limit"),
    "HF_HUB_OFFLINE": ("0", "1: never contact the Hugging Face Hub (TRANSFORMERS_OFFLINE=1 says the same)"),
    "HF_ENDPOINT": ("https://huggingface.co", "the Hub to download checkpoints from"),
    "CXX": ("c++ / g++ / clang++", "the C++ compiler torch.compile uses on CPU"),
}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(name: str, raw: str | None, default: bool = False) -> bool:
    """The one boolean parser: ``1/true/yes/on`` -> True, ``0/false/no/off`` -> False, unset/empty -> ``default``."""
    value = (raw or "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InputError(f"{name}={raw!r} is not a yes/no value.", f"set {name} to 1 or 0.")


def _parse_number(name: str, raw: str | None, default: float, minimum: float = 0.0) -> float:
    value = (raw or "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"{name}={raw!r} is not a number.", f"set {name} to a number such as {default:g}.") from None
    if number < minimum:
        raise InputError(f"{name}={raw!r} is below {minimum:g}.", f"set {name} to a number such as {default:g}.")
    return number


def _parse_pixels(raw: str | None) -> int | None | bool:
    """``ASAP_MAX_IMAGE_PIXELS``: ``False`` = unset (Pillow's limit), ``None`` = no limit, else pixels."""
    value = (raw or "").strip().lower()
    if not value:
        return False
    if value in ("0", "none", "off"):
        return None
    return int(_parse_number("ASAP_MAX_IMAGE_PIXELS", raw, 0.0, minimum=1.0))


@dataclass(frozen=True)
class Settings:
    """What the environment configures (see ``ENVIRONMENT`` for defaults and meanings).

    ``max_image_pixels``: ``False`` keeps Pillow's limit, ``None`` disables it, an int sets it.
    """

    model: str | None = None
    cache_dir: Path = Path("~/.cache/asap_explorer").expanduser()
    bundle: str | None = None
    hosted: bool = False
    bundle_root: Path | None = None
    model_allowlist: tuple[str, ...] = ()
    max_upload_mb: float = 10.0
    relevance_budget: int = 200
    heavy_slots: int = 2
    client_header: str = "X-Forwarded-For"
    trusted_proxies: int = 0
    max_upload_pixels: int = 64_000_000
    upload_mb_per_day: float = 40.0
    upload_storage_mb: float = 2048.0
    state_url: str | None = None
    compile: bool = False
    cpu_bf16: bool = False
    malloc_keep: bool = True
    max_image_pixels: int | None | bool = False
    hf_offline: bool = False
    hf_endpoint: str = "https://huggingface.co"
    cxx: str | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def upload_bytes_per_day(self) -> int:
        return int(self.upload_mb_per_day * 1024 * 1024)

    @property
    def upload_storage_bytes(self) -> int:
        return int(self.upload_storage_mb * 1024 * 1024)

    @property
    def state_db_url(self) -> str:
        """``ASAP_STATE_URL``, else an SQLite file ``state.sqlite3`` in ``cache_dir``."""
        return self.state_url or f"sqlite:///{(self.cache_dir / 'state.sqlite3').as_posix()}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every variable of ``ENVIRONMENT`` from ``env`` (default ``os.environ``); ``InputError`` names
        a malformed one."""
        e = os.environ if env is None else env
        root = (e.get("ASAP_BUNDLE_ROOT") or "").strip()
        return cls(
            model=(e.get("ASAP_MODEL") or "").strip() or None,
            cache_dir=Path(e.get("ASAP_CACHE_DIR") or "~/.cache/asap_explorer").expanduser(),
            bundle=(e.get("ASAP_BUNDLE") or "").strip() or None,
            hosted=parse_bool("ASAP_HOSTED", e.get("ASAP_HOSTED")),
            bundle_root=Path(root).expanduser().resolve() if root else None,
            model_allowlist=tuple(m.strip() for m in (e.get("ASAP_MODEL_ALLOWLIST") or "").split(",") if m.strip()),
            max_upload_mb=_parse_number("ASAP_MAX_UPLOAD_MB", e.get("ASAP_MAX_UPLOAD_MB"), 10.0),
            relevance_budget=int(_parse_number("ASAP_RELEVANCE_BUDGET", e.get("ASAP_RELEVANCE_BUDGET"), 200)),
            heavy_slots=int(_parse_number("ASAP_HEAVY_SLOTS", e.get("ASAP_HEAVY_SLOTS"), 2, minimum=1)),
            client_header=(e.get("ASAP_CLIENT_HEADER") or "").strip() or "X-Forwarded-For",
            trusted_proxies=int(_parse_number("ASAP_TRUSTED_PROXIES", e.get("ASAP_TRUSTED_PROXIES"), 0)),
            max_upload_pixels=int(_parse_number("ASAP_MAX_UPLOAD_PIXELS", e.get("ASAP_MAX_UPLOAD_PIXELS"),
                                                64_000_000, minimum=1)),
            upload_mb_per_day=_parse_number("ASAP_UPLOAD_MB_PER_DAY", e.get("ASAP_UPLOAD_MB_PER_DAY"), 40.0),
            upload_storage_mb=_parse_number("ASAP_UPLOAD_STORAGE_MB", e.get("ASAP_UPLOAD_STORAGE_MB"), 2048.0),
            state_url=(e.get("ASAP_STATE_URL") or "").strip() or None,
            compile=parse_bool("ASAP_COMPILE", e.get("ASAP_COMPILE")),
            cpu_bf16=parse_bool("ASAP_CPU_BF16", e.get("ASAP_CPU_BF16")),
            malloc_keep=parse_bool("ASAP_MALLOC_KEEP", e.get("ASAP_MALLOC_KEEP"), default=True),
            max_image_pixels=_parse_pixels(e.get("ASAP_MAX_IMAGE_PIXELS")),
            hf_offline=(parse_bool("HF_HUB_OFFLINE", e.get("HF_HUB_OFFLINE"))
                        or parse_bool("TRANSFORMERS_OFFLINE", e.get("TRANSFORMERS_OFFLINE"))),
            hf_endpoint=(e.get("HF_ENDPOINT") or "https://huggingface.co").strip(),
            cxx=(e.get("CXX") or "").strip() or None,
        )


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings, read from the environment once."""
    s = Settings.from_env()
    _apply_pixel_limit(s.max_image_pixels)
    return s


def reload_settings() -> Settings:
    """Read the environment again (after it changed) and return the new settings."""
    settings.cache_clear()
    return settings()


_PILLOW_DEFAULT: list[int | None] = []


def _apply_pixel_limit(limit: int | None | bool) -> None:
    """Pillow's bomb limit is process-global: set it from ``ASAP_MAX_IMAGE_PIXELS`` (unset: Pillow's own)."""
    from PIL import Image

    if not _PILLOW_DEFAULT:
        _PILLOW_DEFAULT.append(Image.MAX_IMAGE_PIXELS)
    Image.MAX_IMAGE_PIXELS = _PILLOW_DEFAULT[0] if limit is False else limit


__all__ = ["ENVIRONMENT", "Settings", "parse_bool", "reload_settings", "settings"]
