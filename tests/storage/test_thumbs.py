"""Thumbnails written and read in row groups (memory bounded at any size): ``write_bundle`` takes them in
chunks (never all at once), orders them by cell, and ``Bundle.thumbnails`` reads only the row groups that hold the
wanted ids, returning exactly the stored bytes; bundles written with one row group (before this change) still read."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asap_core.storage import schema as S
from asap_core.storage import thumbs as T
from asap_core.storage.bundle import Bundle, write_bundle
from asap_core.storage.cache import RowStore

GROUP = 16  # rows per thumbnail row group in these tests (the default is 2048)
N = 300
_SAMPLE = {"string": "a", "float": 0.5, "int": 0, "bool": True}


@pytest.fixture(autouse=True)
def small_row_groups(monkeypatch):
    monkeypatch.setattr(T, "THUMB_GROUP_ROWS", GROUP)
    monkeypatch.setattr(T, "THUMB_BUCKET_GROUPS", 2)  # buckets of 32 rows: the bucket sort spills ~10 files


def _images(n: int, seed: int = 0, ids: list[str] | None = None) -> pd.DataFrame:
    """``n`` rows with every image column; unique ids (40-hex by default) and cells 0..8 at random."""
    df = pd.DataFrame({c: [_SAMPLE[kind]] * n for c, kind in S.IMAGE_COLUMNS.items()})
    df["image_id"] = ids or [f"{i:040x}" for i in range(n)]
    df["cell"] = np.random.default_rng(seed).integers(0, 9, n)
    return df


def _jpeg(image_id: str) -> bytes:
    """Distinct bytes of varying length per id (not a JPEG: the table stores bytes as given)."""
    return f"jpeg:{image_id}:".encode() * (1 + int(image_id[-1], 16) % 5)


def _meta(n: int) -> dict:
    return {"layout": "synthetic", "options": {}, "metrics": {}, "skipped": [],
            "encoder": S.EncoderInfo("synthetic", "key", 8, 2, 16).to_dict(),
            "counts": S.Counts(n, n, n, 0, 0, 9).to_dict()}


def _write(out: Path, images: pd.DataFrame, thumbs) -> Bundle:
    cells = pd.DataFrame({c: [_SAMPLE[kind]] for c, kind in S.CELL_COLUMNS.items()})
    write_bundle(out, _meta(len(images)), images, cells, thumbs,
                 lambda d: (d / "model.safetensors").write_bytes(b"weights"))
    return Bundle.open(out)


class CountingFetch:
    """A thumbnail source that records the size of every request."""

    def __init__(self, table: dict[str, bytes]) -> None:
        self.table, self.sizes = table, []

    def __call__(self, ids: list[str]) -> list[bytes]:
        self.sizes.append(len(ids))
        return [self.table[i] for i in ids]


def test_thumbnails_by_row_group_return_the_stored_bytes_for_any_ids(tmp_path):
    images = _images(N)
    stored = {i: _jpeg(i) for i in images["image_id"]}
    fetch = CountingFetch(stored)
    b = _write(tmp_path / "b", images, fetch)

    assert max(fetch.sizes) <= GROUP and sum(fetch.sizes) == N  # chunks, each id once, never all at once
    meta = pq.read_metadata(b.path / S.THUMBS_FILE)
    assert meta.num_row_groups == -(-N // GROUP) and meta.num_rows == N
    assert pq.read_metadata(b.path / S.IMAGES_FILE).num_rows == N

    ids = images["image_id"].tolist()
    missing = ["f" * 40, "0" * 39, "not-an-id", "", "0" * 41]
    rng = np.random.default_rng(1)
    for k in (1, 2, 7, 40, N):
        subset = [ids[j] for j in rng.choice(N, k, replace=False)]
        assert b.thumbnails(subset) == [stored[i] for i in subset]
    mixed = [ids[5], missing[0], ids[5], ids[-1], *missing[1:], ids[0]]
    assert b.thumbnails(mixed) == [stored[ids[5]], None, stored[ids[5]], stored[ids[-1]], None, None, None, None,
                                   stored[ids[0]]]
    assert b.thumbnails([]) == [] and b.thumbnails(missing) == [None] * len(missing)


def test_a_cells_thumbnails_share_few_row_groups_and_only_those_are_read(tmp_path, monkeypatch):
    images = _images(N, seed=2)
    b = _write(tmp_path / "b", images, CountingFetch({i: _jpeg(i) for i in images["image_id"]}))
    order = pq.read_table(b.path / S.THUMBS_FILE, columns=["image_id"]).column(0).to_pylist()
    cell_of = dict(zip(images["image_id"], images["cell"]))
    assert [cell_of[i] for i in order] == sorted(images["cell"])  # ordered by cell (stable)

    read: list[int] = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, *a, **k: read.append(i) or original(self, i, *a, **k))
    for _cell, members in images.groupby("cell")["image_id"]:
        read.clear()
        got = b.thumbnails(members.tolist())
        assert got == [_jpeg(i) for i in members]
        assert sorted(read) == b.thumb_reader.groups_for(members.tolist())
        assert len(read) <= -(-len(members) // GROUP) + 1  # contiguous: at most one group more than needed


def test_write_stage_takes_thumbnails_from_the_store_in_chunks(tmp_path):
    from asap_core.inputs.scan import ScanResult
    from asap_core.pipeline.stages import Results, write_stage

    images = _images(N, seed=3)
    sizes: list[int] = []

    class CountingStore(RowStore):
        def get(self, ids):
            sizes.append(len(ids))
            return super().get(ids)

    store = CountingStore(tmp_path / "cache", "thumbs", None)
    ids = images["image_id"].tolist()
    for a in range(0, N, 50):  # shards as the embed stage writes them, one per batch
        store.put(ids[a:a + 50], [_jpeg(i) for i in ids[a:a + 50]])
    info = types.SimpleNamespace(model_id="synthetic", cache_key="key", embed_dim=8, patch_side=2, image_size=16,
                                 source="unknown", preprocessor=types.SimpleNamespace(version="p1"))
    ctx = types.SimpleNamespace(info=info, dtype="float32", options=S.AnalysisOptions(grid=3), skipped=[],
                                timings={})
    saver = types.SimpleNamespace(save_pretrained=lambda d: (Path(d) / "model.safetensors").write_bytes(b"w"))
    cells = pd.DataFrame({c: [_SAMPLE[kind]] for c, kind in S.CELL_COLUMNS.items()})
    scan = ScanResult(tmp_path, images[["image_id"]], "synthetic")
    out = write_stage(ctx, tmp_path / "bundle", Results(scan, images, cells, store, saver, saver, {}, None))

    assert sizes and max(sizes) <= GROUP and sum(sizes) == N
    b = Bundle.open(out)
    assert b.thumbnails(ids[::7]) == [_jpeg(i) for i in ids[::7]]


def test_bundles_with_one_thumbnail_row_group_still_read(tmp_path):
    ids = [f"img{i}" for i in range(40)]  # ids of unequal length, as small test bundles had
    images = _images(len(ids), ids=ids)
    b = _write(tmp_path / "old", images, (ids, [b"x"] * len(ids)))
    stored = {i: f"old-{i}".encode() for i in ids}  # rewritten as bundles were written before row groups
    pq.write_table(pa.table({"image_id": pa.array(list(stored), pa.string()),
                             "jpeg": pa.array(list(stored.values()), pa.binary())}), b.path / S.THUMBS_FILE)
    old = Bundle.open(b.path)
    assert pq.read_metadata(old.path / S.THUMBS_FILE).num_row_groups == 1
    subset = ["img3", "img39", "img3", "img4", "img40", "img", "img0"]
    assert old.thumbnails(subset) == [stored.get(i) for i in subset]
    assert old.thumbnails(ids) == [stored[i] for i in ids]


def test_thumbnails_in_memory_are_ordered_by_cell_and_nulls_read_as_none(tmp_path):
    images = _images(50, seed=4)
    ids = images["image_id"].tolist()
    data = [None if k % 9 == 0 else _jpeg(i) for k, i in enumerate(ids)]
    b = _write(tmp_path / "b", images, (ids, data))
    order = pq.read_table(b.path / S.THUMBS_FILE, columns=["image_id"]).column(0).to_pylist()
    assert order == [ids[k] for k in np.argsort(images["cell"].to_numpy(), kind="stable")]
    assert b.thumbnails(ids) == data
