"""``Bundle.open`` checks a folder against the one schema: every kind of tampering gives one ``BundleError``
naming the file and the problem (and ``python -m asap_core info`` exits 2 with it); typed accessors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asap_core.cli import main
from asap_core.errors import BundleError, InputError
from asap_core.method.bundle_models import bundle_distiller, bundle_model_key
from asap_core.storage import schema as S
from asap_core.storage.bundle import Bundle
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)


def _meta(p: Path) -> dict:
    return json.loads((p / "bundle.json").read_text())


def _set_meta(p: Path, meta) -> None:
    (p / "bundle.json").write_text(json.dumps(meta))


def _rewrite(p: Path, name: str, change) -> None:
    table = pd.read_parquet(p / name)
    change(table).to_parquet(p / name, index=False)


TAMPERINGS = {
    "garbage json": (lambda p: (p / "bundle.json").write_text("{not json"), "bundle.json"),
    "json list": (lambda p: _set_meta(p, [1, 2]), "not an object"),
    "missing field": (lambda p: _set_meta(p, {k: v for k, v in _meta(p).items() if k != "counts"}), "'counts'"),
    "wrong field type": (lambda p: _set_meta(p, {**_meta(p), "version": "1"}), "'version'"),
    "encoder lacks a key": (lambda p: _set_meta(p, {**_meta(p), "encoder": {"model_id": "x"}}), "encoder"),
    "encoder wrong type": (lambda p: _set_meta(p, {**_meta(p), "encoder": {**_meta(p)["encoder"], "patch_side": "4"}}),
                           "patch_side"),
    "newer version": (lambda p: _set_meta(p, {**_meta(p), "version": S.FORMAT_VERSION + 1}), "newer"),
    "missing column": (lambda p: _rewrite(p, S.IMAGES_FILE, lambda t: t.drop(columns=["z3"])), "'z3'"),
    "wrong column type": (lambda p: _rewrite(p, S.CELLS_FILE, lambda t: t.assign(n=t["n"].astype(str))), "'n'"),
    "duplicated ids": (lambda p: _rewrite(p, S.IMAGES_FILE, lambda t: pd.concat([t, t.iloc[:1]])), "repeated"),
    "empty table": (lambda p: _rewrite(p, S.IMAGES_FILE, lambda t: t.iloc[:0]), "no image"),
    "truncated parquet": (lambda p: (p / S.IMAGES_FILE).write_bytes((p / S.IMAGES_FILE).read_bytes()[:300]),
                          S.IMAGES_FILE),
    "missing thumbs": (lambda p: (p / S.THUMBS_FILE).unlink(), S.THUMBS_FILE),
    "missing model": (lambda p: shutil.rmtree(p / S.MODEL_DIR), "model"),
    "options not an object": (lambda p: _set_meta(p, {**_meta(p), "options": [1]}), "'options'"),
    "options wrong type": (lambda p: _set_meta(p, {**_meta(p), "options": {"faithfulness": "4"}}),
                           "options.faithfulness"),
}


@pytest.mark.parametrize("kind", list(TAMPERINGS))
def test_tampered_bundles_are_refused_with_the_file_and_problem(kind, tiny_bundle, tmp_path, capsys):  # noqa: F811
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    tamper, words = TAMPERINGS[kind]
    tamper(copy)
    with pytest.raises(BundleError) as err:
        Bundle.open(copy)
    assert words in err.value.message and err.value.hint
    capsys.readouterr()
    assert main(["info", str(copy)]) == 2
    assert words in capsys.readouterr().err


def test_typed_accessors_and_image_helpers(tiny_bundle):  # noqa: F811
    b = Bundle.open(tiny_bundle)
    assert b.encoder_info.patch_side == 4 and b.encoder_info.embed_dim == 64 and b.encoder_info.dtype == "float32"
    assert b.counts.used == len(b.images) == b.counts.real + b.counts.fake + b.counts.unlabelled
    assert S.GRID_MIN <= b.grid <= S.GRID_MAX and b.layout and b.skipped == [] and "val" in b.metrics
    ids = b.images["image_id"].tolist()
    assert b.check_ids([ids[1], ids[0], ids[1]]) == [ids[1], ids[0]]
    with pytest.raises(InputError, match="not in the bundle"):
        b.check_ids([ids[0], "f" * 40])
    from asap_core.model.preprocess import ClipPreprocessor

    crop = b.model_input(ids[0], ClipPreprocessor(size=32, crop_size=32), "a test")
    assert crop.size == (32, 32) and crop.mode == "RGB"
    key = bundle_model_key(b)
    assert key.startswith(b.encoder_info.cache_key) and bundle_distiller(b).fingerprint in key


# every field away from its default, so that a field dropped or renamed on the way fails the round trip
NON_DEFAULT_OPTIONS = S.AnalysisOptions(
    model="some/clip", device="cpu", batch_size=8, num_workers=2, decoder="thread", compile=True,
    relevance_batch_size=4, dtype="bfloat16", relevance="rollout", grid=7, projection_file="p.npy",
    projection_samples=16, distiller="other-bundle", random_state=11, engine="ray", ray_address="auto", faithfulness=4)


def test_analysis_options_round_trip_through_bundle_json(tiny_bundle, tmp_path):  # noqa: F811
    """``bundle.json["options"]`` is ``AnalysisOptions.to_dict()`` (the run's cache folder left out) and opens as
    an equal ``AnalysisOptions``; bundles written before it lack keys, name the seed ``seed``, or lack the
    section: they open with the defaults for what is missing."""
    from dataclasses import fields, replace

    from asap_core.pipeline.options import AnalyzeOptions

    written = _meta(tiny_bundle)["options"]
    assert set(written) == {f.name for f in fields(S.AnalysisOptions)}  # no cache_dir
    b = Bundle.open(tiny_bundle)
    assert b.options == S.AnalysisOptions(**written) and b.options.grid == b.grid

    assert all(getattr(NON_DEFAULT_OPTIONS, f.name) != f.default for f in fields(S.AnalysisOptions))
    run = AnalyzeOptions(**NON_DEFAULT_OPTIONS.to_dict(), cache_dir=str(tmp_path / "cache"))
    assert run.stored() == NON_DEFAULT_OPTIONS and "cache_dir" not in run.to_dict()
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    _set_meta(copy, {**_meta(tiny_bundle), "options": json.loads(json.dumps(run.to_dict()))})
    assert Bundle.open(copy).options == NON_DEFAULT_OPTIONS

    _set_meta(copy, {**_meta(tiny_bundle), "options": {"seed": 3, "grid": 5, "no_longer_an_option": 1}})
    assert Bundle.open(copy).options == replace(S.AnalysisOptions(), random_state=3, grid=5)
    _set_meta(copy, {k: v for k, v in _meta(tiny_bundle).items() if k != "options"})
    old = Bundle.open(copy)
    assert old.options == S.AnalysisOptions() and old.grid == b.grid  # the grid read off the cell table


def test_a_moved_image_is_named_or_replaced_by_its_thumbnail(tiny_bundle, tmp_path):  # noqa: F811
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    images = pd.read_parquet(copy / S.IMAGES_FILE)
    images.loc[0, "path"] = str(tmp_path / "gone.jpg")
    pq.write_table(pa.Table.from_pandas(images, preserve_index=False), copy / S.IMAGES_FILE)
    b = Bundle.open(copy)
    first = images.loc[0, "image_id"]
    with pytest.raises(BundleError, match="gone.jpg.*its maps cannot be computed"):
        b.decode(first, "its maps")
    assert max(b.decode(first, "its maps", thumbnail_fallback=True).size) <= S.THUMB_SIDE


def test_maps_of_a_bundle_written_before_versioned_store_names_still_read(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    """A bundle from before the cache names carried a version keeps its precomputed maps: no model needed."""
    import numpy as np

    from asap_core.method.relevance_store import bundle_map_store, bundle_maps, missing_maps
    from asap_core.model import factory

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    for stored in (copy / "cache").glob("rel-*"):  # maps earlier tests computed into the shared fixture
        shutil.rmtree(stored)
    b = Bundle.open(copy)
    ids = b.images["image_id"].tolist()[:3]
    maps = np.random.default_rng(0).random((3, S.N_TARGETS, 4, 4)).astype(np.float16)
    store = bundle_map_store(b, "last-block")
    store.put(ids, maps)
    store.dir.rename(store.dir.with_name(f"rel-last-block-{b.encoder_info.cache_key}-{bundle_distiller(b).fingerprint}"))
    monkeypatch.setattr(factory, "load_encoder", lambda *a, **k: 1 / 0)  # the maps must come from the cache
    assert missing_maps(b, ids, "last-block") == []
    np.testing.assert_array_equal(bundle_maps(b, ids, "last-block"), maps)
