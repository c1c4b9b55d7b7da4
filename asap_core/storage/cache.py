"""The one on-disk cache: content-hash keyed, append-only, safe against crashes and concurrent runs.

Two shapes of cached data:
- ``RowStore``: per-image rows (embeddings ``[D]``, relevance maps ``[17, s, s]``, thumbnail bytes) keyed by
  image id, kept as Parquet shards. Each finished batch is one shard, written to a temporary name and
  renamed, so an interrupted run keeps every finished batch. Writers take a lock on the store's folder and
  store only the ids no one stored yet, so concurrent runs never hold a row twice.
- ``cached_call``: one result per key (trained distiller, projection, 2-D map) in a folder written
  atomically (temporary folder + rename).

Temporary names carry the writer's pid (``.tmp-<pid>-...``): leftovers of dead writers are removed by the
next writer, those of live ones never.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import ClassVar, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..settings import settings

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: no advisory locks; writers fall back to their race-tolerant path
    fcntl = None

T = TypeVar("T")
_TMP_PID = re.compile(r"\.tmp-(\d+)-")


def default_cache_dir() -> Path:
    """``$ASAP_CACHE_DIR``, else ``~/.cache/asap_explorer`` (``settings().cache_dir``)."""
    return settings().cache_dir


def free_disk_bytes(path: str | Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def hash_key(*parts: object) -> str:
    """SHA-1 (first 20 hex) over strings, bytes, numpy arrays (dtype, shape and every byte) and dicts, lists
    and tuples of them (recursively: an array inside a dict is hashed whole, not by its abbreviated repr)."""
    h = hashlib.sha1()
    for p in parts:
        _update(h, p)
    return h.hexdigest()[:20]


def _update(h, p: object) -> None:
    if isinstance(p, np.ndarray):
        a = np.ascontiguousarray(p)  # a view when already contiguous (a memory map stays one)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(_array_bytes(a))
    elif isinstance(p, bytes):
        h.update(p)
    elif isinstance(p, dict):
        h.update(b"{")
        for k in sorted(p, key=repr):
            _update(h, k)
            _update(h, p[k])
        h.update(b"}")
    elif isinstance(p, (list, tuple)):
        h.update(b"[")
        for v in p:
            _update(h, v)
        h.update(b"]")
    else:
        h.update(repr(p).encode())
    h.update(b"\x1f")


def _array_bytes(a: np.ndarray) -> bytes | memoryview:
    """The bytes of the contiguous ``a``: its buffer itself where numpy exports one (no copy: 2 GB at a million
    512-float embeddings), else ``tobytes()``; the digest is the same either way."""
    if a.dtype.hasobject or not a.size:
        return a.tobytes()
    try:
        return a.data.cast("B")
    except (TypeError, ValueError):  # dtypes without a buffer format (datetime64, ...)
        return a.tobytes()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on the existing folder or file ``path`` during the block.

    Locking the folder itself leaves no lock file behind (bundles stay plain). Without ``fcntl`` (Windows) or
    where the file system refuses ``flock`` (some NFS mounts) the block runs unlocked.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def pid_alive(pid: int) -> bool:
    """False only when no process ``pid`` exists here (``os.kill(pid, 0)``); another user's process is alive."""
    if os.name == "nt":  # signal 0 means CTRL_C_EVENT there: never probe, assume alive
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or no such pid at all)
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def remove_path(path: Path) -> None:
    """Delete the folder or file ``path`` if it is there (best effort: a read-only folder keeps it)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def remove_dead_tmp(folder: Path) -> int:
    """Delete the ``.tmp-<pid>-*`` entries of ``folder`` whose writer ``pid`` is dead; returns how many."""
    removed = 0
    for entry in folder.glob(".tmp-*"):
        m = _TMP_PID.match(entry.name)
        if m and not pid_alive(int(m.group(1))):
            remove_path(entry)
            removed += 1
    return removed


def _to_arrow(values: np.ndarray | list[bytes]) -> pa.Array:
    if isinstance(values, np.ndarray):
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
        width = int(np.prod(values.shape[1:])) if values.ndim > 1 else 1
        return pa.FixedSizeListArray.from_arrays(flat, width)
    return pa.array(values, type=pa.binary())


class RowSink(Protocol):
    """Where a computation puts rows by image id and learns which it lacks: a ``RowStore``, or a Ray actor's
    in-memory stand-in (``pipeline.ray_engine``)."""

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids (in order, without duplicates) that hold no row yet."""
        ...

    def put(self, ids: list[str], values: np.ndarray | list[bytes]) -> None:
        """Keep ``values[k]`` as the row of ``ids[k]``."""
        ...


class RowStore:
    """Per-image cached rows under ``root/namespace`` as Parquet shards (``image_id`` + ``value``).

    ``value`` is a fixed-shape numpy row (``row_shape``, e.g. ``(512,)`` or ``(17, 7, 7)``) or raw bytes
    (``row_shape=None``). ``put`` stores only ids not stored yet, so an id has one row; a cache written before
    that may hold an id twice: the row in the first shard by name wins.
    """

    #: ``shared`` keeps this many stores per process (their indexes: about 100 bytes per row)
    SHARED_MAX = 16
    _shared: ClassVar[OrderedDict[tuple[str, tuple[int, ...] | None], RowStore]] = OrderedDict()
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, root: str | Path, namespace: str, row_shape: tuple[int, ...] | None = None) -> None:
        self.dir = Path(root) / namespace
        self.row_shape = row_shape
        self._index: dict[str, tuple[str, int]] = {}
        self._seen: set[str] = set()
        self._swept = False
        self._lock = threading.RLock()  # a shared store is read by several threads (a server's sessions)

    @classmethod
    def shared(cls, root: str | Path, namespace: str, row_shape: tuple[int, ...] | None = None) -> RowStore:
        """The one store of this folder in this process (the ``SHARED_MAX`` last used are kept): its index of
        the shards read so far is kept between calls, so asking which rows are missing reads only the shards
        written since (a server asks on every view of a cached map)."""
        key = (str(Path(root) / namespace), row_shape)
        with cls._shared_lock:
            store = cls._shared.get(key)
            if store is None:
                store = cls._shared[key] = cls(root, namespace, row_shape)
            cls._shared.move_to_end(key)
            while len(cls._shared) > cls.SHARED_MAX:
                cls._shared.popitem(last=False)
            return store

    def _refresh(self) -> None:
        """Index the shards written since the last call (by any process); start over if one was deleted."""
        with self._lock:
            self._refresh_index()

    def _refresh_index(self) -> None:
        """``_refresh``'s work, under the store's lock."""
        if not self.dir.is_dir():
            self._index.clear()
            self._seen.clear()
            return
        shards = sorted(self.dir.glob("[!.]*.parquet"))  # ".tmp-*" files are unfinished writes
        if not self._seen <= {s.name for s in shards}:  # ``discard`` (here or elsewhere) removed rows
            self._index.clear()
            self._seen.clear()
        for shard in shards:
            if shard.name in self._seen:
                continue
            try:
                ids = pq.read_table(shard, columns=["image_id"]).column(0).to_pylist()
            except (OSError, pa.ArrowException):
                continue  # a shard from a crashed writer on a broken disk: ignore, values get recomputed
            self._seen.add(shard.name)
            for i, image_id in enumerate(ids):
                self._index.setdefault(image_id, (shard.name, i))

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids with no stored row (order kept, duplicates dropped)."""
        with self._lock:
            self._refresh()
            return list(dict.fromkeys(i for i in ids if i not in self._index))

    def __contains__(self, image_id: str) -> bool:
        with self._lock:
            self._refresh()
            return image_id in self._index

    def put(self, ids: list[str], values: np.ndarray | list[bytes]) -> None:
        """Store the rows of ``ids`` that no one (this or another process) stored yet as one shard (atomic).

        ``values``: ``[N, *row_shape]`` array or N bytes, in the order of ``ids``. One lock on the store's
        folder per call makes check-and-write atomic among concurrent runs.
        """
        if not len(ids):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock, exclusive_lock(self.dir):
            if not self._swept:  # shards half written by killed runs
                remove_dead_tmp(self.dir)
                self._swept = True
            self._refresh()
            keep = self._new_rows(ids)
            if keep:
                self._write_shard([ids[k] for k in keep], _take(values, keep, len(ids)))

    def _new_rows(self, ids: list[str]) -> list[int]:
        """Positions in ``ids`` of the first occurrence of each id not in the index."""
        fresh: dict[str, int] = {}
        for k, image_id in enumerate(ids):
            if image_id not in self._index and image_id not in fresh:
                fresh[image_id] = k
        return list(fresh.values())

    def _write_shard(self, ids: list[str], values: np.ndarray | list[bytes]) -> None:
        """Write ``ids`` / ``values`` as a new shard (temporary name + rename) and index it."""
        table = pa.table({"image_id": pa.array(ids, type=pa.string()), "value": _to_arrow(values)})
        path = self.dir / f"{uuid.uuid4().hex}.parquet"
        tmp = _tmp_name(path)
        pq.write_table(table, tmp, compression="zstd" if self.row_shape is None else "none")
        os.replace(tmp, path)
        self._seen.add(path.name)
        for i, image_id in enumerate(ids):
            self._index.setdefault(image_id, (path.name, i))

    def get(self, ids: list[str]) -> np.ndarray | list[bytes]:
        """Rows for ``ids`` in order: ``[N, *row_shape]`` array, or list of bytes. KeyError if one is missing."""
        by_shard: dict[str, list[tuple[int, int]]] = {}
        with self._lock:
            self._refresh()
            for k, image_id in enumerate(ids):
                shard, row = self._index[image_id]
                by_shard.setdefault(shard, []).append((k, row))
        blobs: list = [None] * len(ids)  # the rows of a bytes store
        out: np.ndarray | None = None  # the rows of an array store, made with the first shard's dtype
        for shard, pairs in by_shard.items():
            col = pq.read_table(self.dir / shard, columns=["value"]).column(0).combine_chunks()
            rows = np.array([r for _, r in pairs])
            pos = np.array([p for p, _ in pairs])
            if self.row_shape is None:
                vals = col.take(pa.array(rows)).to_pylist()
                for p, v in zip(pos, vals):
                    blobs[p] = v
            else:
                flat = col.values.to_numpy(zero_copy_only=False).reshape(len(col), *self.row_shape)
                if out is None:
                    out = np.empty((len(ids), *self.row_shape), dtype=flat.dtype)
                out[pos] = flat[rows]
        if self.row_shape is None:
            return blobs
        return out if out is not None else np.empty((0, *self.row_shape), dtype=np.float32)

    def get_array(self, ids: list[str]) -> np.ndarray:
        """``get`` of a store of fixed-shape rows: ``[N, *row_shape]``. ``TypeError`` on a store of bytes."""
        out = self.get(ids)
        if not isinstance(out, np.ndarray):
            raise TypeError(f"the cache {self.dir.name} holds bytes, not arrays")
        return out

    def get_bytes(self, ids: list[str]) -> list[bytes]:
        """``get`` of a store of bytes (``row_shape=None``). ``TypeError`` on a store of arrays."""
        out = self.get(ids)
        if isinstance(out, np.ndarray):
            raise TypeError(f"the cache {self.dir.name} holds arrays, not bytes")
        return out


    def discard(self, ids: Iterable[str]) -> int:
        """Delete the shards whose rows all belong to ``ids`` (rows kept only until a later step used them);
        shards that also hold other ids stay whole. Returns how many shards were deleted."""
        if not self.dir.is_dir():
            return 0
        drop, deleted = set(ids), 0
        with self._lock, exclusive_lock(self.dir):
            for shard in sorted(self.dir.glob("[!.]*.parquet")):
                try:
                    shard_ids = pq.read_table(shard, columns=["image_id"]).column(0).to_pylist()
                except (OSError, pa.ArrowException):
                    continue
                if set(shard_ids) <= drop:
                    shard.unlink(missing_ok=True)
                    deleted += 1
            self._index.clear()
            self._seen.clear()
        return deleted

    def copy_to(self, root: str | Path) -> None:
        """Copy this store's shards into ``root/<same namespace>`` (e.g. into a bundle's cache)."""
        if not self.dir.is_dir():
            return
        dest = Path(root) / self.dir.name
        dest.mkdir(parents=True, exist_ok=True)
        for shard in self.dir.glob("[!.]*.parquet"):
            if not (dest / shard.name).exists():
                shutil.copy2(shard, dest / shard.name)


def _take(values: np.ndarray | list[bytes], keep: list[int], n: int) -> np.ndarray | list[bytes]:
    """The rows ``keep`` of ``values`` (``values`` itself when that is all ``n``)."""
    if len(keep) == n:
        return values
    if isinstance(values, np.ndarray):
        return values[np.asarray(keep)]
    return [values[k] for k in keep]


def is_cached(root: str | Path, namespace: str, key: str) -> bool:
    """True when ``cached_call(root, namespace, key, ...)`` would load instead of compute."""
    return (Path(root) / namespace / key).is_dir()


def cached_call(root: str | Path, namespace: str, key: str, compute: Callable[[], T],
                save: Callable[[T, Path], None], load: Callable[[Path], T]) -> T:
    """Return ``load(dir)`` if ``root/namespace/key`` exists, else compute, ``save`` atomically, return.

    ``save`` writes into an empty temporary folder that is renamed into place when complete.
    """
    final = Path(root) / namespace / key
    if is_cached(root, namespace, key):
        return load(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(final.parent, os.W_OK)
    except OSError:
        writable = False
    value = compute()
    if not writable:  # a read-only cache (e.g. a shared bundle): use the result without storing it
        return value
    remove_dead_tmp(final.parent)  # folders half saved by killed runs
    tmp = _tmp_name(final)
    tmp.mkdir()
    try:
        save(value, tmp)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race: its copy is equal
        if not final.is_dir():
            raise
    return value
