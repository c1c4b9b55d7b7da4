"""The analysis bundle on disk (DESIGN §4): Parquet tables, JSON metadata, safetensors weights.

Written atomically: everything goes into a temporary sibling folder that is renamed into place at the
end, and ``bundle.json`` carries ``"complete": true``; a folder without it never opens.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BundleError

if TYPE_CHECKING:  # torch stays optional for viewing bundles
    from ..method.distiller import Distiller
    from ..model.encoder import ClipEncoder

BUNDLE_VERSION = 1
META_NAME = "bundle.json"
N_DIMS = 16
Z_COLUMNS = [f"z{i}" for i in range(N_DIMS)]
IMAGE_COLUMNS = ["image_id", "path", "relpath", "label", "generator", "source", "split", "p_fake", "pred",
                 "correct", "confidence", *Z_COLUMNS, "map_x", "map_y", "cell", "col", "row"]


def write_bundle(out: str | Path, meta: dict, images: pd.DataFrame, cells: pd.DataFrame,
                 thumbs: tuple[list[str], list[bytes]], model_writer, extra_tables: dict[str, pd.DataFrame] | None = None,
                 cache_stores: tuple = ()) -> Path:
    """Write a complete bundle to ``out`` atomically; an existing bundle there is replaced only at the end.

    ``model_writer(dir)`` saves the distiller and projection into ``dir`` (the bundle's ``model/``);
    ``cache_stores`` (``RowStore``s, e.g. precomputed relevance maps) are copied into the bundle's ``cache/``.
    """
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    tmp.mkdir()
    try:
        images.to_parquet(tmp / "images.parquet", index=False)
        cells.to_parquet(tmp / "cells.parquet", index=False)
        ids, data = thumbs
        pq.write_table(pa.table({"image_id": pa.array(ids, pa.string()), "jpeg": pa.array(data, pa.binary())}),
                       tmp / "thumbs.parquet")
        for name, table in (extra_tables or {}).items():
            table.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "model").mkdir()
        model_writer(tmp / "model")
        (tmp / "cache").mkdir()
        for store in cache_stores:
            store.copy_to(tmp / "cache")
        meta = {**meta, "version": BUNDLE_VERSION, "complete": True,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2, default=_json_default))
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:6]}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


class Bundle:
    """A finished analysis on disk. ``Bundle.open(path)``; tables load lazily.

    ``images`` (one row per image, ``IMAGE_COLUMNS``), ``cells`` (one row per non-empty cell), ``metrics``,
    ``meta`` (all of ``bundle.json``), ``z`` (``[N, 16]``), ``distiller`` and ``encoder()`` (need torch).
    """

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.meta = meta

    @classmethod
    def open(cls, path: str | Path) -> "Bundle":
        """Open a complete bundle; ``BundleError`` names what is missing otherwise."""
        path = Path(path).expanduser()
        meta_path = path / META_NAME
        if not path.is_dir():
            raise BundleError(f"{path} is not a folder.", "pass a bundle folder written by `python -m asap_core analyze`.")
        if not meta_path.is_file():
            raise BundleError(f"{path} has no {META_NAME}: not a bundle, or its analysis did not finish.",
                              "run `python -m asap_core analyze DATA_DIR --out " f"{path}` (again).")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"{meta_path} cannot be read ({exc}).", "re-run the analysis.") from None
        if not meta.get("complete"):
            raise BundleError(f"{path} is incomplete.", "re-run the analysis.")
        if meta.get("version", 0) > BUNDLE_VERSION:
            raise BundleError(f"{path} was written by a newer ASAP Explorer (bundle version {meta['version']}).",
                              "upgrade asap_core.")
        for name in ("images.parquet", "cells.parquet"):
            if not (path / name).is_file():
                raise BundleError(f"{path / name} is missing.", "re-run the analysis.")
        return cls(path, meta)

    @cached_property
    def images(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "images.parquet")

    @cached_property
    def cells(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "cells.parquet")

    def table(self, name: str) -> pd.DataFrame | None:
        """An extra Parquet table of the bundle (e.g. ``skipped``), or None."""
        p = self.path / f"{name}.parquet"
        return pd.read_parquet(p) if p.is_file() else None

    @property
    def metrics(self) -> dict:
        return self.meta.get("metrics", {})

    @property
    def z(self) -> np.ndarray:
        """``[N, 16]`` float32 in the order of ``images``."""
        return self.images[Z_COLUMNS].to_numpy(np.float32)

    @property
    def cache_dir(self) -> Path:
        """Where on-demand results for this bundle are cached (``bundle/cache``)."""
        return self.path / "cache"

    @cached_property
    def _thumb_table(self) -> dict[str, bytes]:
        t = pq.read_table(self.path / "thumbs.parquet")
        return dict(zip(t.column("image_id").to_pylist(), t.column("jpeg").to_pylist()))

    def thumbnails(self, ids: list[str]) -> list[bytes | None]:
        """JPEG bytes (longest side 128 px) per image id; None where absent."""
        table = self._thumb_table
        return [table.get(i) for i in ids]

    @cached_property
    def distiller(self) -> "Distiller":
        from ..method.distiller import Distiller

        return Distiller.from_pretrained(self.path / "model")

    def encoder(self, model: str | None = None, device: str = "auto", attn_implementation: str = "sdpa") -> "ClipEncoder":
        """Load the bundle's CLIP (or ``model``, e.g. a local copy of the same checkpoint)."""
        from ..model.encoder import ClipEncoder

        return ClipEncoder.from_pretrained(model or self.meta["encoder"]["model_id"], device=device,
                                           attn_implementation=attn_implementation)
