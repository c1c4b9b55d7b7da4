"""Integrity under crashes and concurrency: a killed bundle write never loses the old bundle, leftovers of
dead writers are swept (those of live ones kept), and concurrent cache writers store each row once."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asap_core.storage import schema as S
from asap_core.storage.bundle import Bundle, recover_bundle, write_bundle
from asap_core.storage.cache import RowStore, pid_alive


@pytest.fixture(autouse=True)
def _plain_main(monkeypatch):
    """Spawned children re-run ``__main__``'s file; after an AppTest that is the app script: give them none."""
    import types

    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))


_SAMPLE = {"string": "a", "float": 0.5, "int": 0, "bool": True}


def _table(columns: dict[str, str], n: int, id_column: str | None = None) -> pd.DataFrame:
    """``n`` rows with every column of ``columns`` (one value of its kind), ``id_column`` unique."""
    df = pd.DataFrame({c: [_SAMPLE[kind]] * n for c, kind in columns.items()})
    if id_column:
        df[id_column] = [f"img{i}" for i in range(n)]
    return df


def _write(out: Path, marker: str, model_writer=None) -> Path:
    """A minimal valid bundle at ``out`` whose ``bundle.json`` carries ``marker``."""
    n = 3
    meta = {"marker": marker, "layout": "synthetic", "options": {}, "metrics": {}, "skipped": [],
            "encoder": S.EncoderInfo("synthetic", "key", 8, 2, 16).to_dict(),
            "counts": S.Counts(n, n, n, 0, 0, 1).to_dict()}
    ids = [f"img{i}" for i in range(n)]
    writer = model_writer or (lambda d: (d / "model.safetensors").write_bytes(b"weights"))
    return write_bundle(out, meta, _table(S.IMAGE_COLUMNS, n, "image_id"), _table(S.CELL_COLUMNS, 1),
                        (ids, [b"jpeg"] * n), writer)


def _marker(out: Path) -> str:
    return Bundle.open(out).meta["marker"]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _spawn(target, *args) -> mp.Process:
    p = mp.get_context("spawn").Process(target=target, args=args)
    p.start()
    p.join(60)
    return p


def _dead_pid() -> int:
    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True, check=True).stdout)
    if pid_alive(pid):
        pytest.skip("the pid was reused at once")
    return pid


# ----------------------------------------------------------------------------- spawned writers


def _die_after_backup(out: str) -> None:
    """Write a new bundle to ``out`` and die right after the old one was moved to its backup."""
    real = os.rename

    def rename(src, dst):
        real(src, dst)
        if ".old-" in Path(dst).name:
            os._exit(1)

    os.rename = rename
    _write(Path(out), "new")


def _die_while_writing(out: str) -> None:
    """Start writing a bundle to ``out`` and die while its model is saved."""
    _write(Path(out), "new", model_writer=lambda d: os._exit(1))


def _put_batches(root: str, ids: list[str], value: float, barrier) -> None:
    store = RowStore(root, "emb", (4,))
    barrier.wait()
    for i in range(0, len(ids), 7):
        batch = ids[i:i + 7]
        store.put(batch, np.full((len(batch), 4), value, np.float32))


# ----------------------------------------------------------------------------- bundle swap


@pytest.mark.slow
def test_killed_between_the_two_renames_the_old_bundle_is_restored(tmp_path):
    out = _write(tmp_path / "b", "old")
    p = _spawn(_die_after_backup, str(out))
    assert p.exitcode == 1
    assert not out.exists()  # the crash window: only the hidden backup and the finished new folder remain
    assert [n.split("-")[0] for n in _hidden(tmp_path)] == [".b.old", ".b.tmp"]
    assert all(f"-{p.pid}-" in n for n in _hidden(tmp_path))
    assert recover_bundle(out) is True
    assert _marker(out) == "old" and _hidden(tmp_path) == []
    _write(out, "new")
    assert _marker(out) == "new" and _hidden(tmp_path) == []


@pytest.mark.slow
def test_the_next_write_restores_the_old_bundle_before_it_starts(tmp_path):
    out = _write(tmp_path / "b", "old")
    assert _spawn(_die_after_backup, str(out)).exitcode == 1

    def failing(d: Path) -> None:
        raise ValueError("model cannot be saved")

    with pytest.raises(ValueError):
        _write(out, "new", model_writer=failing)
    assert _marker(out) == "old" and _hidden(tmp_path) == []


@pytest.mark.slow
def test_killed_while_writing_the_old_bundle_stays_and_the_next_write_sweeps(tmp_path):
    out = _write(tmp_path / "b", "old")
    p = _spawn(_die_while_writing, str(out))
    assert p.exitcode == 1 and _marker(out) == "old"
    assert len(_hidden(tmp_path)) == 1 and _hidden(tmp_path)[0].startswith(f".b.tmp-{p.pid}-")
    _write(out, "new")
    assert _marker(out) == "new" and _hidden(tmp_path) == []


def test_a_failed_second_rename_puts_the_old_bundle_back(tmp_path, monkeypatch):
    out = _write(tmp_path / "b", "old")
    real = os.rename

    def rename(src, dst):
        if ".tmp-" in Path(src).name:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        _write(out, "new")
    monkeypatch.undo()
    assert _marker(out) == "old" and _hidden(tmp_path) == []


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    out = _write(tmp_path / "b", "old")
    dead, me = _dead_pid(), os.getpid()
    names = [f".b.tmp-{dead}-aaaa1111", f".b.old-{dead}-bbbb2222", ".b.old-cccc33",  # dead; old format
             f".b.tmp-{me}-dddd4444", f".b.old-{me}-eeee5555",  # a live run's
             f".c.tmp-{dead}-ffff6666", f".b.x.tmp-{dead}-abab1212"]  # another bundle's
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.parquet").write_bytes(b"x")
    assert recover_bundle(out) is False
    assert _hidden(tmp_path) == sorted(names[3:])
    assert _marker(out) == "old"


def test_a_backup_of_the_old_format_without_pid_is_restored(tmp_path):
    out = _write(tmp_path / "b", "old")
    os.rename(out, tmp_path / ".b.old-a1b2c3")  # what the former swap left when killed
    _write(out, "new")
    assert _marker(out) == "new" and _hidden(tmp_path) == []
    os.rename(out, tmp_path / ".b.old-a1b2c3")
    assert recover_bundle(out) is True and _marker(out) == "new"


# ----------------------------------------------------------------------------- cache rows


def _row_counts(store: RowStore) -> Counter:
    shards = sorted(store.dir.glob("[!.]*.parquet"))
    return Counter(i for s in shards for i in pq.read_table(s, columns=["image_id"]).column(0).to_pylist())


@pytest.mark.slow
def test_concurrent_puts_of_the_same_ids_store_each_row_once(tmp_path):
    ids = [f"id{i}" for i in range(60)]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_put_batches, args=(str(tmp_path), order, v, barrier))
             for order, v in ((ids, 1.0), (ids[::-1], 2.0))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = RowStore(tmp_path, "emb", (4,))
    assert _row_counts(store) == Counter(ids)
    vals = store.get(ids)
    assert set(np.unique(vals)) <= {1.0, 2.0} and (vals == vals[:, :1]).all()


def _shard(path: Path, ids: list[str], value: float) -> None:
    flat = pa.array(np.full(len(ids) * 2, value, np.float32))
    pq.write_table(pa.table({"image_id": pa.array(ids, pa.string()),
                             "value": pa.FixedSizeListArray.from_arrays(flat, 2)}), path)


def test_a_store_that_already_holds_an_id_twice_reads_fine(tmp_path):
    store = RowStore(tmp_path, "emb", (2,))
    store.dir.mkdir(parents=True)
    _shard(store.dir / "a.parquet", ["x", "y"], 1)
    _shard(store.dir / "b.parquet", ["y", "z"], 2)
    assert store.missing(["x", "y", "z", "w"]) == ["w"]
    np.testing.assert_array_equal(store.get(["z", "y", "x"]), [[2, 2], [1, 1], [1, 1]])  # first shard wins
    store.put(["y", "w", "w"], np.array([[9, 9], [3, 3], [4, 4]], np.float32))
    assert _row_counts(store) == Counter({"x": 1, "y": 2, "z": 1, "w": 1})
    np.testing.assert_array_equal(RowStore(tmp_path, "emb", (2,)).get(["w", "y"]), [[3, 3], [1, 1]])


def test_a_row_discarded_by_another_store_is_stored_again(tmp_path):
    a, b = RowStore(tmp_path, "emb", (2,)), RowStore(tmp_path, "emb", (2,))
    a.put(["x"], np.ones((1, 2), np.float32))
    assert b.missing(["x"]) == []  # b has indexed x
    assert a.discard(["x"]) == 1
    b.put(["x"], np.full((1, 2), 5, np.float32))
    np.testing.assert_array_equal(RowStore(tmp_path, "emb", (2,)).get(["x"]), [[5, 5]])


def test_half_written_shards_of_dead_writers_are_swept(tmp_path):
    store = RowStore(tmp_path, "emb", (2,))
    store.dir.mkdir(parents=True)
    dead_tmp = store.dir / f".tmp-{_dead_pid()}-abcd1234-x.parquet"
    live_tmp = store.dir / f".tmp-{os.getpid()}-abcd1234-y.parquet"
    for f in (dead_tmp, live_tmp):
        f.write_bytes(b"PAR1 half")
    store.put(["a"], np.ones((1, 2), np.float32))
    assert not dead_tmp.exists() and live_tmp.exists()
