"""Hosted mode (``ASAP_HOSTED=1``): what a public explorer lets its visitors do.

- Bundles only from a configured root (``ASAP_BUNDLE_ROOT``), named relative to it; no ``..``, no absolute
  paths, no symlinks out of the root.
- Uploads limited by size and type, decoded by ``imageio`` with Pillow's pixel limit.
- Model ids only from an allow-list (``ASAP_MODEL_ALLOWLIST``, comma-separated); ``trust_remote_code`` is never
  set anywhere in asap_core.
- Bundles hold only open formats (JSON, Parquet, safetensors, plain-dtype .npy, JPEG inside Parquet): a
  bundle carrying a pickle-capable file (``.pkl``, ``.pt``, ``.bin``, an object-dtype ``.npy``, ...) is refused.
- Per-session budget of on-demand relevance images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .errors import BundleError, ImageLoadError, InputError
from .inputs.imageio import IMAGE_EXTENSIONS, decode_image
from .settings import Settings, settings

SAFE_BUNDLE_SUFFIXES = frozenset({".json", ".parquet", ".safetensors", ".md", ".txt", ".csv", ".png", ".jpg", ".npy"})


def hosted_mode() -> bool:
    """True when ``ASAP_HOSTED`` is on."""
    return settings().hosted


@dataclass
class HostedPolicy:
    """The limits of a hosted explorer; ``from_settings()`` takes them from ``asap_core.settings``.

    ``bundle_root``: folder of the bundles visitors may open; ``model_allowlist``: model ids visitors may
    pick; ``max_upload_bytes``; ``relevance_budget``: images with on-demand maps per session.
    """

    bundle_root: Path
    model_allowlist: tuple[str, ...] = ()
    max_upload_bytes: int = 10 * 1024 * 1024
    relevance_budget: int = 200
    used: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, s: Settings | None = None) -> "HostedPolicy":
        """The policy the settings describe; ``InputError`` when ``ASAP_BUNDLE_ROOT`` is missing."""
        s = s or settings()
        if s.bundle_root is None:
            raise InputError("ASAP_HOSTED=1 needs ASAP_BUNDLE_ROOT: the folder that holds the bundles to serve.",
                             "set ASAP_BUNDLE_ROOT=/srv/asap-bundles (bundles as sub-folders).")
        return cls(s.bundle_root, s.model_allowlist, s.max_upload_bytes, s.relevance_budget)

    def list_bundles(self) -> list[str]:
        """Names (relative to the root) of the sub-folders that hold a ``bundle.json``."""
        if not self.bundle_root.is_dir():
            return []
        return sorted(p.parent.relative_to(self.bundle_root).as_posix()
                      for p in self.bundle_root.glob("*/bundle.json"))

    def resolve_bundle(self, name: str) -> Path:
        """The bundle folder for a visitor-given ``name``; ``InputError`` for any escape from the root."""
        if not name or name.startswith(("/", "\\", "~")) or ":" in name:
            raise InputError(f"'{name}' is not a bundle name here.", "pick one of the listed bundles.")
        parts = Path(name).parts
        if any(p in ("..", ".") for p in parts):
            raise InputError(f"'{name}' leaves the bundle folder.", "pick one of the listed bundles.")
        path = (self.bundle_root / name).resolve()
        if path != self.bundle_root and self.bundle_root not in path.parents:
            raise InputError(f"'{name}' points outside the bundle folder.", "pick one of the listed bundles.")
        check_bundle_files(path)
        return path

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
            raise InputError(f"{name}: {len(data) / 1e6:.1f} MB is over the {self.max_upload_bytes / 1e6:.0f} MB limit.",
                             "upload a smaller image (resize or recompress it).")
        return decode_image(data, name)

    def charge_relevance(self, session_id: str, n_images: int) -> None:
        """Count ``n_images`` of on-demand relevance against the session's budget; ``InputError`` past it."""
        used = self.used.get(session_id, 0)
        if used + n_images > self.relevance_budget:
            raise InputError(f"This session has used {used} of its {self.relevance_budget} on-demand relevance "
                             f"images; {n_images} more would pass the limit.",
                             "pick fewer images, or use maps that are already computed.")
        self.used[session_id] = used + n_images


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


__all__ = ["HostedPolicy", "hosted_mode", "check_bundle_files", "ImageLoadError"]
