"""The analysis bundle on disk (docs/design.md §4, ``schema``): Parquet tables, JSON metadata, safetensors weights.

Written atomically: everything goes into a temporary sibling folder that is renamed into place at the
end (the old bundle kept in a hidden backup until then, restored by the next write after a crash), and
``bundle.json`` carries ``"complete": true``; a folder without it never opens. ``Bundle.open``
checks the folder against ``schema`` (files, required ``bundle.json`` fields and their types, table
columns and their types, unique image ids, format version) and raises one ``BundleError`` that names
the file and the problem. The names users give the dimensions live beside it in ``dimension_names.json``
(optional; ``set_dimension_name`` / ``save_dimension_names`` rewrite only that file, atomically).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import cached_property
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import AsapError, BundleError, ImageLoadError, InputError
from ..inputs.imageio import decode_image, read_checked
from . import schema as S
from .cache import exclusive_lock, pid_alive, remove_path
from .thumbs import IMAGE_GROUP_ROWS, ThumbReader, ThumbSource, write_thumbs

if TYPE_CHECKING:  # torch stays optional for viewing bundles
    from PIL import Image

    from ..model.preprocess import ClipPreprocessor

RERUN = "re-run `asap analyze` to write the bundle again."
LOG = logging.getLogger("asap_explorer")  # the server log: what a library said about a damaged file, by error id
MAX_META_BYTES = 64 * 1024 * 1024  # a larger bundle.json is refused unread (its "skipped" list at most a few MB)
MAX_GRID = 1000  # cells per side a bundle may name (analyze picks 4..30; the slider offers up to 60)
# columns the views draw as numbers: every value must be finite (NaN breaks the layout, the grid and the charts)
FINITE_COLUMNS: dict[str, tuple[str, ...]] = {
    S.IMAGES_FILE: ("map_x", "map_y", "p_fake", "confidence", *S.Z_COLUMNS),
    S.CELLS_FILE: ("x", "y"),
}


def damaged(file: Path, exc: BaseException, what: str = "cannot be read") -> BundleError:
    """A plain ``BundleError`` for the bundle ``file`` that a library failed to read: "``file`` ``what``" and an
    error id; the library's own words (no use to a visitor) go to the server log under that id."""
    eid = uuid.uuid4().hex[:8]  # the same form as hosting.error_id (storage may not import hosting)
    LOG.error("error id %s: %s: %s: %s", eid, file, type(exc).__name__, " ".join(str(exc).split())[:500])
    return BundleError(f"{file} {what} (error id {eid}).", RERUN)


def write_bundle(out: str | Path, meta: dict, images: pd.DataFrame, cells: pd.DataFrame,
                 thumbs: ThumbSource, model_writer: Callable[[Path], None],
                 cache_stores: tuple = ()) -> Path:
    """Write a complete bundle to ``out`` atomically; an existing bundle there is replaced only at the end.

    Whenever the process dies, ``out`` holds the old bundle or the new one, or, killed between the two renames
    of the swap, nothing; then the next call restores the old one first (``recover_bundle``).
    ``thumbs``: ``fetch(ids) -> JPEG bytes per id`` (e.g. the thumbnail ``RowStore``'s ``get``), called on
    chunks of the images' ids, or ``(ids, data)`` in memory; written in row groups ordered by cell
    (``thumbs.write_thumbs``). ``images.parquet`` is written in row groups of ``IMAGE_GROUP_ROWS`` rows.
    ``model_writer(dir)`` saves the distiller and projection into ``dir`` (the bundle's ``model/``);
    ``cache_stores`` (``RowStore``s, e.g. precomputed relevance maps) are copied into the bundle's ``cache/``.
    """
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_bundle(out)
    tmp = _hidden_sibling(out, "tmp")
    tmp.mkdir()
    try:
        images.to_parquet(tmp / S.IMAGES_FILE, index=False, row_group_size=IMAGE_GROUP_ROWS)
        cells.to_parquet(tmp / S.CELLS_FILE, index=False)
        write_thumbs(tmp / S.THUMBS_FILE, images, thumbs)
        (tmp / S.MODEL_DIR).mkdir()
        model_writer(tmp / S.MODEL_DIR)
        (tmp / S.CACHE_DIR).mkdir()
        for store in cache_stores:
            store.copy_to(tmp / S.CACHE_DIR)
        meta = {**meta, "version": S.FORMAT_VERSION, "complete": True,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / S.META_NAME).write_text(json.dumps(meta, indent=2, default=_json_default))
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def recover_bundle(out: str | Path) -> bool:
    """Repair what a killed ``write_bundle(out)`` left: restore the old bundle from its hidden backup when
    ``out`` is missing, and delete the hidden ``.{name}.tmp-*`` / ``.{name}.old-*`` folders of dead writers
    (those of live ones stay). Returns True when a backup was restored."""
    out = Path(out).expanduser().resolve()
    if not out.parent.is_dir():
        return False
    with exclusive_lock(out.parent):
        return _recover_locked(out)


# ``.{name}.tmp-<pid>-<hex>`` (being written) and ``.{name}.old-<pid>-<hex>`` (the replaced bundle); older
# versions named the backup ``.{name}.old-<hex>``, without a pid.
_HIDDEN = r"\.{name}\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]+"


def _hidden_sibling(out: Path, kind: str) -> Path:
    """A fresh hidden sibling of ``out`` for ``write_bundle``: ``kind`` is ``tmp`` or ``old``."""
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _leftovers(out: Path) -> list[tuple[Path, str, int | None]]:
    """Hidden siblings of ``out`` written by ``write_bundle``: (path, ``tmp`` | ``old``, pid or None)."""
    pattern = re.compile(_HIDDEN.format(name=re.escape(out.name)))
    found = []
    for p in out.parent.glob(f".{glob_escape(out.name)}.*"):
        m = pattern.fullmatch(p.name)
        if m:
            found.append((p, m["kind"], int(m["pid"]) if m["pid"] else None))
    return found


def _recover_locked(out: Path) -> bool:
    """``recover_bundle`` under the lock on ``out.parent``: no other writer is between its two renames."""
    dead = [(p, kind) for p, kind, pid in _leftovers(out) if pid is None or not pid_alive(pid)]
    restored = None
    if not (out.exists() or out.is_symlink()):
        backups = sorted((p for p, kind in dead if kind == "old"), key=lambda p: p.stat().st_mtime, reverse=True)
        if backups:
            restored = backups[0]
            os.rename(restored, out)
    for p, _ in dead:
        if p != restored:
            remove_path(p)
    return restored is not None


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``, moving an existing ``out`` aside to a hidden backup first.

    A folder cannot be renamed over a non-empty one, hence two renames; killed between them, ``out`` is
    missing and the backup waits for ``recover_bundle``. Under a lock on ``out.parent``, so concurrent writers
    of ``out`` swap one after the other; the backup is deleted after the lock is released.
    """
    old = None
    with exclusive_lock(out.parent):
        _recover_locked(out)
        if out.exists() or out.is_symlink():
            old = _hidden_sibling(out, "old")
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            if old is not None and not out.exists():
                os.rename(old, out)  # failed, not killed: put the old bundle back now
            raise
    if old is not None:
        remove_path(old)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


# ----------------------------------------------------------------------------- validation


def read_meta(path: Path) -> dict:
    """``bundle.json`` of the folder ``path``, checked against ``schema.META_FIELDS``; ``BundleError`` otherwise."""
    if not path.is_dir():
        raise BundleError(f"{path} is not a folder.", "pass a bundle folder written by `asap analyze`.")
    meta_path = path / S.META_NAME
    if not meta_path.is_file():
        raise BundleError(f"{path} has no {S.META_NAME}: not a bundle, or its analysis did not finish.",
                          f"run `asap analyze DATA_DIR --out {path}` (again).")
    meta = _load_meta_json(meta_path)
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path} holds a JSON {type(meta).__name__}, not an object.", RERUN)
    if not meta.get("complete"):
        raise BundleError(f"{path} is incomplete.", RERUN)
    for name, kind in S.META_FIELDS.items():
        if name not in meta:
            raise BundleError(f"{meta_path} lacks the field '{name}'.", RERUN)
        if not isinstance(meta[name], kind) or (kind is int and isinstance(meta[name], bool)):
            raise BundleError(f"{meta_path}: '{name}' is {type(meta[name]).__name__}, expected {kind.__name__}.",
                              RERUN)
    if meta["version"] > S.FORMAT_VERSION:
        raise BundleError(f"{path} was written by a newer ASAP Explorer (bundle version {meta['version']}).",
                          "upgrade asap_core.")
    for section in S.SECTIONS:
        problem = S.section_problem(meta, section)
        if problem:
            raise BundleError(f"{meta_path}: {problem}.", RERUN)
    return meta


def _load_meta_json(meta_path: Path):
    """The parsed ``bundle.json``; ``BundleError`` in plain words for a file too large, not text, not JSON or
    nested too deeply to parse (``RecursionError``), or holding numbers too long to convert."""
    try:
        size = meta_path.stat().st_size
        if size > MAX_META_BYTES:
            raise BundleError(f"{meta_path} is {size / 2**20:.0f} MB, far more than a bundle's metadata.", RERUN)
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path} is not valid JSON (line {exc.lineno}, column {exc.colno}).", RERUN) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
        raise damaged(meta_path, exc, "cannot be read as a bundle's JSON (not text, nested too deeply or too "
                                      "large)") from None


_KINDS: dict[str, Callable[[pa.DataType], bool]] = {
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "float": pa.types.is_floating,
    "int": pa.types.is_integer,
    "bool": pa.types.is_boolean,
    "binary": lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t),
}


def check_table(file: Path, columns: dict[str, str]) -> None:
    """``BundleError`` unless the Parquet ``file`` has every column of ``columns`` with its kind of type."""
    if not file.is_file():
        raise BundleError(f"{file} is missing.", RERUN)
    try:
        arrow_schema = pq.read_schema(file)
    except Exception as exc:
        raise damaged(file, exc, "is not a readable Parquet table (damaged or truncated)") from None
    for name, kind in columns.items():
        if name not in arrow_schema.names:
            raise BundleError(f"{file} lacks the column '{name}'.", RERUN)
        t = arrow_schema.field(name).type
        if not (pa.types.is_null(t) or _KINDS[kind](t)):
            raise BundleError(f"{file}: column '{name}' holds {t}, expected {kind}.", RERUN)


def validate(path: Path) -> dict:
    """Check a bundle folder against the schema (cheap: metadata, Parquet footers, the id column and the columns
    the views draw as numbers, ``FINITE_COLUMNS``); returns its ``bundle.json``. ``BundleError`` names the first
    problem in words, whatever failed: a library's own error becomes ``damaged`` (one bad bundle is one
    unavailable bundle, never a crash of whoever lists it)."""
    try:
        return _validate(Path(path))
    except AsapError:
        raise
    except Exception as exc:
        raise damaged(Path(path), exc, "cannot be opened") from None


def _validate(path: Path) -> dict:
    """``validate`` without its backstop."""
    meta = read_meta(path)
    _check_grid(meta, path / S.META_NAME)
    _check_metrics(meta, path / S.META_NAME)
    for name, columns in S.TABLES.items():
        check_table(path / name, columns)
    if not (path / S.MODEL_DIR).is_dir():
        raise BundleError(f"{path / S.MODEL_DIR} is missing (the distiller and projection).", RERUN)
    images = read_columns(path / S.IMAGES_FILE, ["image_id", *FINITE_COLUMNS[S.IMAGES_FILE]])
    ids = images.column("image_id")
    if ids.null_count or len(pc.unique(ids)) != len(ids):
        raise BundleError(f"{path / S.IMAGES_FILE}: image ids are missing or repeated.", RERUN)
    if len(ids) == 0:
        raise BundleError(f"{path / S.IMAGES_FILE} holds no image.", RERUN)
    check_finite(path / S.IMAGES_FILE, images, FINITE_COLUMNS[S.IMAGES_FILE])
    cells = read_columns(path / S.CELLS_FILE, [*FINITE_COLUMNS[S.CELLS_FILE], "col", "row"])
    check_finite(path / S.CELLS_FILE, cells, FINITE_COLUMNS[S.CELLS_FILE])
    for name in ("col", "row"):
        check_range(path / S.CELLS_FILE, cells.column(name), name, MAX_GRID)
    read_dimension_names(path)  # optional file: absent is fine, malformed is named
    return meta


def _check_grid(meta: dict, meta_path: Path) -> None:
    """``BundleError`` unless ``options.grid`` is absent, null or a whole number in ``1..MAX_GRID``."""
    g = (meta.get("options") or {}).get("grid")
    if g is None:
        return
    if isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= MAX_GRID:
        shown = str(g)[:20] if isinstance(g, int) and not isinstance(g, bool) else f"a {type(g).__name__}"
        raise BundleError(f"{meta_path}: 'options.grid' is {shown}, expected a whole number from 1 to {MAX_GRID}.",
                          RERUN)


def _check_metrics(meta: dict, meta_path: Path) -> None:
    """``BundleError`` unless each of ``metrics``' ``val`` / ``train`` / ``all`` is absent, null or an object whose
    ``accuracy``, ``ap``, ``roc_auc``, ``n`` are numbers (or null), and ``generator_val_accuracy`` a number or
    null: the sidebar and ``info`` print them."""
    metrics = meta["metrics"]
    number = (int, float)
    for split in ("val", "train", "all"):
        part = metrics.get(split)
        if part is None:
            continue
        if not isinstance(part, dict):
            raise BundleError(f"{meta_path}: 'metrics.{split}' is a {type(part).__name__}, expected an object.", RERUN)
        for key in ("accuracy", "ap", "roc_auc", "n"):
            v = part.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, number)):
                raise BundleError(f"{meta_path}: 'metrics.{split}.{key}' is a {type(v).__name__}, expected a number.",
                                  RERUN)
    g = metrics.get("generator_val_accuracy")
    if g is not None and (isinstance(g, bool) or not isinstance(g, number)):
        raise BundleError(f"{meta_path}: 'metrics.generator_val_accuracy' is a {type(g).__name__}, expected a "
                          "number.", RERUN)


def read_columns(file: Path, columns: list[str]) -> pa.Table:
    """``columns`` of the Parquet ``file``; ``damaged`` (a ``BundleError``) when its pages cannot be read."""
    try:
        return pq.read_table(file, columns=columns)
    except Exception as exc:
        raise damaged(file, exc, "is damaged: its rows cannot be read") from None


def check_finite(file: Path, table: pa.Table, columns: Sequence[str]) -> None:
    """``BundleError`` when a column of ``columns`` in ``table`` (read from ``file``) holds a missing, NaN or
    infinite value (the map, the grid and the charts cannot place it)."""
    for name in columns:
        col = table.column(name)
        bad = len(col) if pa.types.is_null(col.type) else col.null_count + (
            pc.sum(pc.invert(pc.is_finite(col.fill_null(0)))).as_py() or 0)
        if bad:
            raise BundleError(f"{file}: column '{name}' holds {bad:,} missing, NaN or infinite value(s); the views "
                              "cannot draw them.", RERUN)


def check_range(file: Path, col: pa.ChunkedArray, name: str, stop: int) -> None:
    """``BundleError`` unless every value of the integer column ``name`` of ``file`` is in ``0..stop-1``."""
    if len(col) == 0:
        return
    ok = not pa.types.is_null(col.type) and not col.null_count
    if ok:
        bounds = pc.min_max(col)
        ok = bounds["min"].as_py() >= 0 and bounds["max"].as_py() < stop
    if not ok:
        raise BundleError(f"{file}: column '{name}' holds values outside 0..{stop - 1}.", RERUN)


# ----------------------------------------------------------------------------- dimension names

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NAMES_FIX = (f"name the dimensions again (`asap name BUNDLE DIM NAME`), or delete {S.NAMES_FILE} "
             "to drop every name.")


def clean_dimension_name(name: str | None) -> str:
    """One name as stored: stripped, inner whitespace collapsed; None -> "" (unnamed). ``InputError`` for a
    non-string, control characters, or more than ``schema.MAX_DIMENSION_NAME`` characters."""
    if name is None:
        return ""
    if not isinstance(name, str):
        raise InputError(f"a dimension name must be text, got {type(name).__name__}.", "pass a short phrase.")
    if _CONTROL.search(name.replace("\n", " ").replace("\t", " ")):
        raise InputError("a dimension name holds control characters.", "use plain words.")
    cleaned = " ".join(name.split())
    if len(cleaned) > S.MAX_DIMENSION_NAME:
        raise InputError(f"the name '{cleaned[:S.MAX_DIMENSION_NAME]}…' is {len(cleaned)} characters long.",
                         f"keep it to {S.MAX_DIMENSION_NAME} characters: it is shown in captions and headers.")
    return cleaned


def clean_dimension_names(names: Sequence[str | None]) -> tuple[str, ...]:
    """``schema.N_DIMS`` names as stored (``clean_dimension_name`` each; "" = unnamed); ``InputError`` for
    another count."""
    if isinstance(names, (str, bytes)) or len(names) != S.N_DIMS:
        n = "a string" if isinstance(names, (str, bytes)) else f"{len(names)} names"
        raise InputError(f"dimension names: got {n}, expected a list of {S.N_DIMS}.",
                         f"pass one name per dimension ({S.N_DIMS}; \"\" for an unnamed one).")
    return tuple(clean_dimension_name(n) for n in names)


def read_dimension_names(path: str | Path) -> tuple[str, ...]:
    """The names of the bundle folder ``path`` (``schema.NAMES_FILE``): ``N_DIMS`` strings, "" where unnamed
    (all "" without the file). ``BundleError`` naming the file when it is malformed."""
    file = Path(path) / S.NAMES_FILE
    if not file.is_file():
        return ("",) * S.N_DIMS
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("names"), list):
            raise InputError("it holds no list 'names'.")
        return clean_dimension_names(data["names"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{file} cannot be read ({exc}).", NAMES_FIX) from None
    except InputError as exc:
        raise BundleError(f"{file}: {exc.message}", NAMES_FIX) from None


def _write_names(path: Path, names: tuple[str, ...]) -> None:
    """Write ``names`` into ``path/NAMES_FILE`` atomically (temporary file + rename); the caller holds the lock."""
    body = {"version": S.NAMES_VERSION, "names": list(names),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = path / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{S.NAMES_FILE}"
    try:
        tmp.write_text(json.dumps(body, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path / S.NAMES_FILE)
    except OSError as exc:
        remove_path(tmp)
        raise BundleError(f"The names cannot be written into {path} ({exc.strerror or exc}).",
                          "make the bundle folder writable, or name the dimensions where it is.") from None


def save_dimension_names(path: str | Path, names: Sequence[str | None]) -> tuple[str, ...]:
    """Replace all names of the bundle folder ``path`` (validated: ``clean_dimension_names``); returns them.
    Atomic, under a lock on the folder (a concurrent ``set_dimension_name`` is not lost)."""
    path = Path(path).expanduser()
    cleaned = clean_dimension_names(names)
    with exclusive_lock(path):
        _write_names(path, cleaned)
    return cleaned


def set_dimension_name(path: str | Path, dim: int, name: str | None) -> tuple[str, ...]:
    """Name dimension ``dim`` (0..N_DIMS-1) of the bundle folder ``path``; ``""`` / None clears its name.
    Returns all names. Read, changed and written under one lock on the folder."""
    path = Path(path).expanduser()
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 0 <= int(dim) < S.N_DIMS:
        raise InputError(f"there is no dimension {dim}.", f"dimensions are 0..{S.N_DIMS - 1}.")
    cleaned = clean_dimension_name(name)
    with exclusive_lock(path):
        names = list(read_dimension_names(path))
        names[int(dim)] = cleaned
        _write_names(path, tuple(names))
    return tuple(names)


def read_frame(file: Path) -> pd.DataFrame:
    """The whole Parquet ``file`` as a frame; ``damaged`` (a ``BundleError``) when its pages cannot be read."""
    try:
        return pd.read_parquet(file)
    except Exception as exc:
        raise damaged(file, exc, "is damaged: its rows cannot be read") from None


# ----------------------------------------------------------------------------- the bundle


class Bundle:
    """A finished analysis on disk. ``Bundle.open(path)`` checks it; tables load lazily.

    Parameters
    ----------
    path : the bundle folder.
    meta : its ``bundle.json``, as ``validate`` returns it (use ``Bundle.open``, which checks both).

    Attributes
    ----------
    images : one row per image (``schema.IMAGE_COLUMNS``); ``cells``: one row per non-empty cell
        (``schema.CELL_COLUMNS``); ``z``: ``[N, 16]`` float32 in the order of ``images``.
    encoder_info, counts, options : typed sections of ``bundle.json`` (``schema.EncoderInfo``, ``Counts``,
        ``AnalysisOptions``); ``metrics``, ``layout``, ``skipped``: as stored; ``grid``: cells per side.
    dimension_names : ``N_DIMS`` names ("" = unnamed), read afresh on each access.

    Its models (need torch) are loaded by ``method.bundle_models`` (``bundle_models``, ``bundle_distiller``).

    Examples
    --------
    ``b = Bundle.open("bundles/demo"); b.z[b.images["label"] == "fake"]`` -> ``[n_fake, 16]``.
    """

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.meta = meta
        self._thumb_lock = threading.Lock()  # one thumbnail index per bundle, even when sessions ask at once
        self._thumb_reader: ThumbReader | None = None

    @classmethod
    def open(cls, path: str | Path, read_tables: bool = False) -> Bundle:
        """Open a complete bundle, checked against ``schema``.

        Parameters
        ----------
        path : the bundle folder (``~`` expanded).
        read_tables : also read every row of ``images`` and ``cells`` and the thumbnails' index now, so that a
            damaged data page is found here (``validate`` reads only footers and a few columns).

        Returns
        -------
        The ``Bundle``; ``BundleError`` names what is missing or malformed otherwise.
        """
        path = Path(path).expanduser()
        b = cls(path, validate(path))
        if read_tables:
            _ = b.images, b.cells, b.thumb_reader
        return b

    # ---- metadata
    @cached_property
    def encoder_info(self) -> S.EncoderInfo:
        return S.read_section(self.meta, "encoder")

    @cached_property
    def counts(self) -> S.Counts:
        return S.read_section(self.meta, "counts")

    @cached_property
    def options(self) -> S.AnalysisOptions:
        """The ``analyze`` options the bundle was made with (defaults where an older bundle lacks them)."""
        return S.read_section(self.meta, "options")

    @property
    def metrics(self) -> dict:
        """Classifier metrics: ``val`` / ``train`` / ``all`` (accuracy, ap, roc_auc, n), ``max_offdiag_cos`` ..."""
        return self.meta["metrics"]

    @property
    def layout(self) -> str:
        """The folder layout the labels were read from."""
        return self.meta["layout"]

    @property
    def skipped(self) -> list[dict]:
        """Files left out of the analysis: ``{"path", "reason"}``."""
        return self.meta["skipped"]

    @cached_property
    def grid(self) -> int:
        """Cells per side of the bundle's own overview (its options; else read off the cell table)."""
        g = self.options.grid
        if g:
            return int(g)
        cells = self.cells
        return int(max(cells["col"].max(), cells["row"].max()) + 1) if len(cells) else S.DEFAULT_GRID

    # ---- tables
    @cached_property
    def images(self) -> pd.DataFrame:
        return read_frame(self.path / S.IMAGES_FILE)

    @cached_property
    def cells(self) -> pd.DataFrame:
        return read_frame(self.path / S.CELLS_FILE)

    @property
    def z(self) -> np.ndarray:
        """``[N, 16]`` float32 in the order of ``images``."""
        return self.images[S.Z_COLUMNS].to_numpy(np.float32)

    @property
    def cache_dir(self) -> Path:
        """Where on-demand results for this bundle are cached (``bundle/cache``)."""
        return self.path / S.CACHE_DIR

    @property
    def thumb_reader(self) -> ThumbReader:
        """The thumbnail table's reader: an index of its ids (built once, by the first caller; others wait for
        it), row groups read on demand."""
        with self._thumb_lock:
            if self._thumb_reader is None:
                try:
                    self._thumb_reader = ThumbReader(self.path / S.THUMBS_FILE)
                except Exception as exc:
                    raise damaged(self.path / S.THUMBS_FILE, exc, "is damaged: its thumbnails cannot be read") from None
            return self._thumb_reader

    def thumbnails(self, ids: Sequence[str]) -> list[bytes | None]:
        """Thumbnails of ``ids``.

        Parameters
        ----------
        ids : image ids (``images["image_id"]``).

        Returns
        -------
        JPEG bytes per id (longest side ``schema.THUMB_SIDE`` px), None where absent. Reads only the row groups
        of ``thumbs.parquet`` that hold ``ids`` (a cell's thumbnails share one or two).
        """
        reader = self.thumb_reader
        try:
            return reader.get(list(ids))
        except Exception as exc:
            raise damaged(self.path / S.THUMBS_FILE, exc, "is damaged: its thumbnails cannot be read") from None

    # ---- images
    @cached_property
    def _paths(self) -> dict[str, str]:
        return dict(zip(self.images["image_id"], self.images["path"]))

    def check_ids(self, ids: Sequence[str]) -> list[str]:
        """``ids`` without duplicates (order kept); ``InputError`` if one is not an image of this bundle."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        unknown = [i for i in ids if i not in self._paths]
        if unknown:
            raise InputError(f"{len(unknown)} image id(s) are not in the bundle {self.path.name} "
                             f"(e.g. {unknown[0]}).", "pass image_id values from bundle.images.")
        return ids

    def decode(self, image_id: str, needed_for: str, thumbnail_fallback: bool = False) -> Image.Image:
        """The analysed file of one image.

        Parameters
        ----------
        image_id : an id of ``images``.
        needed_for : what the pixels are for, named in the error (e.g. "its concept segments").
        thumbnail_fallback : return the thumbnail when the file cannot be read any more.

        Returns
        -------
        The upright RGB image (full size; the thumbnail with ``thumbnail_fallback`` when the file is gone),
        else ``BundleError`` naming the file. A file whose bytes no longer hash to ``image_id`` (rewritten
        since the analysis) counts as unreadable: its new pixels never stand in for the analysed ones.
        """
        path = self._paths[image_id]
        try:
            return decode_image(read_checked(path, image_id), path)
        except ImageLoadError as exc:
            thumb = self.thumbnails([image_id])[0] if thumbnail_fallback else None
            if thumb is None:
                raise BundleError(f"{path}: {exc.reason}; {needed_for} cannot be computed.",
                                  "keep the analysed images where they were when the bundle was made.") from None
            return decode_image(thumb, f"thumbnail of {path}")

    def model_input(self, image_id: str, preprocessor: ClipPreprocessor, needed_for: str,
                    thumbnail_fallback: bool = False) -> Image.Image:
        """``decode`` resized and centre-cropped to what CLIP sees (``[S, S]`` RGB)."""
        image = self.decode(image_id, needed_for, thumbnail_fallback)
        return preprocessor.resize_and_crop(image).convert("RGB")

    # ---- dimension names
    @property
    def dimension_names(self) -> tuple[str, ...]:
        """The ``N_DIMS`` names users gave the dimensions ("" = unnamed), read afresh on each access: they change
        without the rest of the bundle (``set_dimension_name``), and an open bundle is shared by sessions."""
        return read_dimension_names(self.path)

    def set_dimension_name(self, dim: int, name: str | None) -> tuple[str, ...]:
        """Name dimension ``dim`` (``""`` / None clears it); returns all names. See ``set_dimension_name``."""
        return set_dimension_name(self.path, dim, name)

    def save_dimension_names(self, names: Sequence[str | None]) -> tuple[str, ...]:
        """Replace all ``N_DIMS`` names; returns them. See ``save_dimension_names``."""
        return save_dimension_names(self.path, names)
