"""A bundle's thumbnail table (``thumbs.parquet``: ``image_id``, ``jpeg``), written and read in row groups.

Written by ``write_thumbs`` in row groups of ``THUMB_GROUP_ROWS`` rows, ordered by the images' cell (table
order within a cell), so the thumbnails of one cell lie in one or two row groups. The thumbnails come in
chunks from a callable (e.g. ``RowStore.get``), never all at once; ordering them by cell is a bucket sort
that spills to Arrow IPC files, so memory stays at one bucket (``THUMB_GROUP_ROWS * THUMB_BUCKET_GROUPS``
thumbnails) whatever the number of images.

Read by ``ThumbReader``: an index built from the id column alone (ids sorted as fixed-width bytes, with
their rows: about 48 bytes per image, 48 MB at a million) says which row groups hold the wanted ids, and
only those are read. A table of one row group (bundles written before row groups, or small ones) is held
in memory whole, as before.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: Thumbnails per row group (a read of one cell's thumbnails reads whole groups: about 10 MB at 5 kB each).
THUMB_GROUP_ROWS = 2048
#: Row groups ordered in memory at a time while writing (a bucket: about 160 MB of 5 kB thumbnails).
THUMB_BUCKET_GROUPS = 16
#: Rows per row group of ``images.parquet``.
IMAGE_GROUP_ROWS = 65_536

THUMB_SCHEMA = pa.schema([("image_id", pa.string()), ("jpeg", pa.binary())])

#: ``fetch(ids) -> JPEG bytes (or None) per id``, e.g. ``RowStore.get`` of the thumbnail store.
ThumbFetch = Callable[[list[str]], Sequence[bytes | None]]
#: What ``write_thumbs`` takes: a ``ThumbFetch`` or ``(ids, data)`` already in memory.
ThumbSource = ThumbFetch | tuple[Sequence[str], Sequence[bytes | None]]


def cell_order_rank(images: pd.DataFrame) -> np.ndarray:
    """``[N]`` int64: the row of each image (table order) in a table ordered by ``cell`` (stable); the
    identity without a ``cell`` column."""
    n = len(images)
    if "cell" not in images.columns or n == 0:
        return np.arange(n, dtype=np.int64)
    order = np.argsort(images["cell"].to_numpy(dtype=np.int64), kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    return rank


def write_thumbs(file: Path, images: pd.DataFrame, thumbs: ThumbSource) -> None:
    """Write ``thumbs.parquet`` at ``file`` in row groups of ``THUMB_GROUP_ROWS``, ordered by cell.

    ``thumbs``: a ``ThumbFetch``, called on consecutive chunks of at most ``THUMB_GROUP_ROWS`` ids of
    ``images["image_id"]`` in table order (the order a thumbnail store was filled in, so each call reads
    few of its shards); or ``(ids, data)`` in memory (ordered by cell when ``ids`` are the table's ids, else
    written as given). A None thumbnail is written as a null. Spill files go to a hidden folder beside
    ``file``, removed at the end.
    """
    if callable(thumbs):
        ids = images["image_id"].astype(str).to_numpy(dtype=object)
        fetch: Callable[[int, int], Sequence[bytes | None]] = lambda a, b: thumbs(list(ids[a:b]))
        rank = cell_order_rank(images)
    else:
        ids = np.asarray(list(thumbs[0]), dtype=object)
        data = thumbs[1]
        if len(data) != len(ids):
            raise ValueError(f"{len(ids)} thumbnail ids but {len(data)} thumbnails")
        fetch = lambda a, b: data[a:b]
        same = len(ids) == len(images) and bool((images["image_id"].astype(str).to_numpy(dtype=object) == ids).all())
        rank = cell_order_rank(images) if same else np.arange(len(ids), dtype=np.int64)
    spill = file.with_name(f".{file.name}.spill")
    spill.mkdir()
    try:
        buckets = _spill_buckets(spill, ids, fetch, rank)
        # no dictionary (every thumbnail differs), JPEG bytes stored as they are (they do not compress)
        with pq.ParquetWriter(file, THUMB_SCHEMA, use_dictionary=False,
                              compression={"image_id": "snappy", "jpeg": "none"}) as out:
            for bucket in buckets:
                with pa.OSFile(str(bucket), "rb") as f:
                    table = pa.ipc.open_file(f).read_all()
                table = table.take(pc.sort_indices(table["pos"]))
                out.write_table(table.select(["image_id", "jpeg"]), row_group_size=THUMB_GROUP_ROWS)
                del table
            if not buckets:
                out.write_table(THUMB_SCHEMA.empty_table())
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _spill_buckets(spill: Path, ids: np.ndarray, fetch: Callable[[int, int], Sequence[bytes | None]],
                   rank: np.ndarray) -> list[Path]:
    """Fetch the thumbnails chunk by chunk (table order) and append each row to the Arrow IPC file of its
    bucket (destination row ``rank // bucket rows``) with its destination row ``pos``; the files in bucket
    order."""
    bucket_rows = THUMB_GROUP_ROWS * THUMB_BUCKET_GROUPS
    schema = pa.schema([("pos", pa.int64()), *THUMB_SCHEMA])
    writers: dict[int, tuple[pa.NativeFile, pa.ipc.RecordBatchFileWriter]] = {}
    try:
        for start in range(0, len(ids), THUMB_GROUP_ROWS):
            stop = min(start + THUMB_GROUP_ROWS, len(ids))
            data = list(fetch(start, stop))
            if len(data) != stop - start:
                raise ValueError(f"the thumbnail source gave {len(data)} thumbnails for {stop - start} ids")
            pos = rank[start:stop]
            batch = pa.record_batch([pa.array(pos, pa.int64()), pa.array(list(ids[start:stop]), pa.string()),
                                     pa.array(data, pa.binary())], schema=schema)
            which = pos // bucket_rows
            for b in np.unique(which):
                if int(b) not in writers:
                    sink = pa.OSFile(str(spill / f"{int(b):06d}.arrow"), "wb")
                    writers[int(b)] = (sink, pa.ipc.new_file(sink, schema))
                writers[int(b)][1].write_batch(batch.filter(pa.array(which == b)))
    finally:
        for sink, writer in writers.values():
            writer.close()
            sink.close()
    return [spill / f"{b:06d}.arrow" for b in sorted(writers)]


# ----------------------------------------------------------------------------- reading


def _fixed_width_ids(column: pa.ChunkedArray) -> np.ndarray:
    """The ids of a string column as a numpy fixed-width bytes array ``[M]`` (``S<longest>``; a null: b"")."""
    arr = pc.cast(column, pa.large_binary()).combine_chunks()
    if len(arr) == 0:
        return np.zeros(0, dtype="S1")
    if arr.null_count == 0:  # the usual case (40-character SHA-1 ids): a view of the Arrow buffer, no objects
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
        lengths = np.diff(offsets)
        width = int(lengths.max())
        if width > 0 and (lengths == width).all():
            raw = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
            return raw.view(f"S{width}").copy()
    values = [v if v is not None else b"" for v in arr.to_pylist()]
    return np.array(values, dtype=f"S{max(1, max(len(v) for v in values))}")


@dataclass(frozen=True)
class ThumbIndex:
    """Where each thumbnail is: ``keys`` (the ids, sorted, fixed-width bytes ``[M]``), ``rows`` (their rows,
    ``[M]`` int64) and ``group_starts`` (first row of each row group, then M: ``[G + 1]`` int64)."""

    keys: np.ndarray
    rows: np.ndarray
    group_starts: np.ndarray

    @classmethod
    def read(cls, file: Path, metadata: pq.FileMetaData) -> ThumbIndex:
        """The index of ``file`` from its id column and its row groups (``metadata``)."""
        keys = _fixed_width_ids(pq.read_table(file, columns=["image_id"]).column(0))
        order = np.argsort(keys, kind="stable")
        sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        return cls(keys[order], order.astype(np.int64), np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]))

    def locate(self, ids: Sequence[str]) -> np.ndarray:
        """``[len(ids)]`` int64: the row of each id, -1 where absent (an id held twice: its first row)."""
        out = np.full(len(ids), -1, dtype=np.int64)
        if not len(ids) or not len(self.keys):
            return out
        q = [str(i).encode("utf-8") for i in ids]
        width = self.keys.dtype.itemsize
        fits = np.flatnonzero([0 < len(v) <= width for v in q])  # a longer id cannot be a key
        if not len(fits):
            return out
        qa = np.array([q[k] for k in fits], dtype=self.keys.dtype)
        pos = np.minimum(np.searchsorted(self.keys, qa), len(self.keys) - 1)
        hit = self.keys[pos] == qa
        out[fits[hit]] = self.rows[pos[hit]]
        return out


class ThumbReader:
    """Reads thumbnails from one ``thumbs.parquet`` by id, one row group at a time (thread-safe: each call
    opens the file; the index is built on first use)."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.metadata = pq.read_metadata(file)
        self.index = ThumbIndex.read(file, self.metadata)
        # one row group (an old bundle, or a small one): keep its column, as bundles were always read
        self._whole = (pq.read_table(file, columns=["jpeg"]).column(0).combine_chunks()
                       if self.metadata.num_row_groups == 1 else None)

    def get(self, ids: Sequence[str]) -> list[bytes | None]:
        """JPEG bytes per id (None where absent), reading only the row groups that hold them."""
        rows = self.index.locate(ids)
        out: list[bytes | None] = [None] * len(ids)
        found = np.flatnonzero(rows >= 0)
        if not len(found):
            return out
        if self._whole is not None:
            for k, v in zip(found, self._whole.take(pa.array(rows[found])).to_pylist()):
                out[k] = v
            return out
        starts = self.index.group_starts
        groups = np.searchsorted(starts, rows[found], side="right") - 1
        with pq.ParquetFile(self.file, metadata=self.metadata) as pf:
            for g in np.unique(groups):
                sel = found[groups == g]
                col = pf.read_row_group(int(g), columns=["jpeg"]).column(0)
                for k, v in zip(sel, col.take(pa.array(rows[sel] - starts[g])).to_pylist()):
                    out[k] = v
        return out

    def groups_for(self, ids: Sequence[str]) -> list[int]:
        """The row groups a ``get(ids)`` reads (sorted; empty when none of ``ids`` is held)."""
        rows = self.index.locate(ids)
        rows = rows[rows >= 0]
        return sorted({int(g) for g in np.searchsorted(self.index.group_starts, rows, side="right") - 1})
