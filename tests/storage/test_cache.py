"""RowStore and cached_call: values come back exactly, partial batches survive, keys follow content."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from asap_core.storage import cache as cache_mod
from asap_core.storage.cache import RowStore, cached_call, hash_key


def test_rowstore_roundtrip_any_order(tmp_path):
    s = RowStore(tmp_path, "emb", (3,))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    s.put(["x", "y"], a)
    s.put(["z"], np.full((1, 3), 7, np.float32))
    assert s.missing(["z", "q", "x", "q"]) == ["q"]
    got = s.get(["z", "x", "y"])
    np.testing.assert_array_equal(got, np.stack([np.full(3, 7), a[0], a[1]]))
    # a fresh store (another process, a later run) sees the same rows
    assert RowStore(tmp_path, "emb", (3,)).missing(["x", "y", "z"]) == []


def test_rowstore_bytes_and_float16(tmp_path):
    b = RowStore(tmp_path, "thumbs", None)
    b.put(["a", "b"], [b"\x00\x01", b"jpeg"])
    assert b.get(["b", "a"]) == [b"jpeg", b"\x00\x01"]
    m = RowStore(tmp_path, "maps", (17, 2, 2))
    v = np.random.default_rng(0).normal(size=(2, 17, 2, 2)).astype(np.float16)
    m.put(["a", "b"], v)
    out = m.get(["b", "a"])
    assert out.dtype == np.float16 and np.array_equal(out, v[::-1])


def test_typed_getters_return_the_rows_or_refuse_the_other_kind(tmp_path):
    b = RowStore(tmp_path, "thumbs", None)
    b.put(["a", "b"], [b"\x00\x01", b"jpeg"])
    m = RowStore(tmp_path, "maps", (2,))
    m.put(["a"], np.array([[1.5, -2.0]], np.float32))
    assert b.get_bytes(["b", "a"]) == [b"jpeg", b"\x00\x01"]
    np.testing.assert_array_equal(m.get_array(["a"]), [[1.5, -2.0]])
    assert m.get_array([]).shape == (0, 2)
    with pytest.raises(TypeError):
        b.get_array(["a"])
    with pytest.raises(TypeError):
        m.get_bytes(["a"])


def test_unfinished_shard_is_ignored(tmp_path):
    s = RowStore(tmp_path, "emb", (2,))
    s.put(["a"], np.ones((1, 2), np.float32))
    (s.dir / ".tmp-123-half.parquet").write_bytes(b"PAR1 half written")
    (s.dir / "broken.parquet").write_bytes(b"not parquet")
    assert RowStore(tmp_path, "emb", (2,)).missing(["a", "b"]) == ["b"]


WRITER = """
import sys
import numpy as np
from asap_core.storage.cache import RowStore
root, k = sys.argv[1], int(sys.argv[2])
s = RowStore(root, "emb", (4,))
for j in range(20):
    s.put([f"{k}-{j}"], np.full((1, 4), k * 100 + j, np.float32))
"""


@pytest.mark.slow
def test_concurrent_writers_do_not_corrupt(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(k)], cwd=repo,
                              stderr=subprocess.PIPE, text=True) for k in range(3)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    s = RowStore(tmp_path, "emb", (4,))
    ids = [f"{k}-{j}" for k in range(3) for j in range(20)]
    vals = s.get(ids)
    assert np.array_equal(vals[:, 0], np.array([k * 100 + j for k in range(3) for j in range(20)], np.float32))


def test_cached_call_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(5)

    save = lambda v, d: np.save(d / "v.npy", v)
    load = lambda d: np.load(d / "v.npy")
    key = hash_key(np.arange(3), "opts", 1)
    first = cached_call(tmp_path, "ns", key, compute, save, load)
    second = cached_call(tmp_path, "ns", key, compute, save, load)
    assert np.array_equal(first, second) and len(calls) == 1
    assert hash_key(np.arange(3), "opts", 1) == key
    assert hash_key(np.arange(3).astype(np.int32), "opts", 1) != key  # dtype is part of the content
    assert hash_key(np.arange(3), "opts", 2) != key


def test_discard_deletes_only_shards_wholly_among_the_ids(tmp_path):
    store = RowStore(tmp_path, "rows", (2,))
    store.put(["a", "b"], np.ones((2, 2), np.float32))
    store.put(["c", "d"], np.full((2, 2), 2, np.float32))
    store.put(["e"], np.full((1, 2), 3, np.float32))
    assert store.discard(["a", "b", "c", "x"]) == 1  # c's shard also holds d: kept whole
    assert store.missing(["a", "b", "c", "d", "e"]) == ["a", "b"]
    np.testing.assert_array_equal(store.get(["c", "e"]), [[2, 2], [3, 3]])
    assert store.discard(["c", "d", "e"]) == 2 and store.missing(["c", "d", "e"]) == ["c", "d", "e"]
    assert RowStore(tmp_path, "never-written", (2,)).discard(["a"]) == 0


def test_free_disk_bytes_walks_up_to_an_existing_folder(tmp_path):
    from asap_core.storage.cache import free_disk_bytes

    a, b = free_disk_bytes(tmp_path / "not" / "yet"), free_disk_bytes(tmp_path)
    assert a > 0 and abs(a - b) < 100 * 2 ** 20  # the same disk (other writers may move it a little)


def test_shared_store_is_one_per_folder_and_reads_only_new_shards(tmp_path, monkeypatch):
    a = RowStore.shared(tmp_path, "maps", (2,))
    assert RowStore.shared(tmp_path, "maps", (2,)) is a and RowStore.shared(tmp_path, "other", (2,)) is not a
    other = RowStore(tmp_path, "maps", (2,))            # another process's writer: a store of its own
    other.put(["x", "y"], np.ones((2, 2), np.float32))
    reads = []
    real_read = cache_mod.pq.read_table
    monkeypatch.setattr(cache_mod.pq, "read_table", lambda *a_, **k: reads.append(a_[0]) or real_read(*a_, **k))
    assert a.missing(["x", "z"]) == ["z"] and len(reads) == 1      # the new shard's ids, read once
    assert a.missing(["x", "y"]) == [] and len(reads) == 1          # nothing new: no read
    other.put(["z"], np.zeros((1, 2), np.float32))
    assert a.missing(["x", "z"]) == [] and len(reads) == 2          # only the shard written since
    first = sorted(a.dir.glob("*.parquet"), key=lambda p: p.stat().st_mtime)[0]
    other.discard(["x", "y"])                                       # a shard removed elsewhere: start over
    assert not first.exists() and a.missing(["x", "y", "z"]) == ["x", "y"]


def test_shared_store_keeps_the_last_used(tmp_path):
    kept = [RowStore.shared(tmp_path, f"s{i}", None) for i in range(RowStore.SHARED_MAX + 1)]
    assert RowStore.shared(tmp_path, f"s{RowStore.SHARED_MAX}", None) is kept[-1]
    assert RowStore.shared(tmp_path, "s0", None) is not kept[0]     # the least recently used was let go


def test_shared_store_answers_threads_while_rows_arrive(tmp_path):
    store = RowStore.shared(tmp_path, "maps", (1,))
    writer = RowStore(tmp_path, "maps", (1,))
    ids = [f"i{k}" for k in range(40)]
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(60):
                missing = store.missing(ids)
                have = [i for i in ids if i not in set(missing)]
                assert store.get_array(have).shape == (len(have), 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for k in range(0, 40, 4):
        writer.put(ids[k:k + 4], np.full((4, 1), k, np.float32))
    for t in threads:
        t.join()
    assert not errors and store.missing(ids) == []
