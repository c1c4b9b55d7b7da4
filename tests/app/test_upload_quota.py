"""Uploaded sets on a public explorer: checked from the zip's directory (tiny members that add up to a bomb, a
file that is also a folder), charged per visitor before anything is unpacked, stored within a global cap that
counts every cache an analysis writes (in the upload's own folder) and never evicts another visitor's live
upload, expiring with their caches; and the smallest trainable set, 2 real + 2 fake images, analysed."""
from __future__ import annotations

import errno
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_pages.glue import keys as K
from asap_core.errors import InputError
from asap_core.inputs.archive import MIB, check_space, folder_bytes, plan_uploads, prune_expired, unpack_uploads
from asap_core.method.training import split_indices
from asap_core.pipeline.analyze import AnalyzeOptions, analyze
from asap_core.settings import reload_settings
from asap_core.storage.bundle import Bundle
from tests.app.test_byo import jpeg, upload_and_analyse, zip_of
from tests.conftest_app import no_exception, tiny_bundle  # noqa: F401  (fixture)

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
TIMEOUT = 120
RUN_CACHES = ("emb-", "thumbs-", "projection", "distiller", "map2d")  # what an analysis caches, by name


def two_and_two_zip(seed: int = 0) -> bytes:
    """The smallest set a detector is trained on: 2 real and 2 fake JPEGs."""
    rng = np.random.default_rng(seed)
    return zip_of({f"{label}/{label[0]}{i}.jpg": jpeg(rng, label == "fake") for label in ("real", "fake")
                   for i in range(2)})


def plain(text: str) -> str:
    """Text as a visitor reads it (``views.text.as_text``'s backslash escapes resolved)."""
    return re.sub(r"\\(.)", r"\1", text)


def shown(at: AppTest) -> list[str]:
    """Every error, warning and caption of the sidebar, as read."""
    return [plain(str(e.value)) for kind in ("error", "warning", "caption") for e in at.sidebar.get(kind)]


def run_caches_under(root: Path, skip: Path | None = None) -> list[Path]:
    """Analysis caches (``RUN_CACHES``) anywhere under ``root``, except under ``skip``."""
    return [p for p in root.rglob("*") if p.name.startswith(RUN_CACHES)
            and not (skip is not None and p.is_relative_to(skip))]


# ------------------------------------------------------------------------------------------ archive
def test_tiny_members_that_add_up_to_a_bomb_are_refused_and_real_photos_pass(tmp_path):
    bomb = zip_of({f"real/{i:02d}.png": b"\0" * 1_000_000 for i in range(40)})  # each under RATIO_FLOOR_BYTES
    assert len(bomb) < 100_000
    with pytest.raises(InputError, match="zip bomb") as err:
        unpack_uploads([("bomb.zip", bomb)], tmp_path / "u")
    assert "bomb.zip" in err.value.message and "in all" in err.value.message and err.value.hint
    assert not (tmp_path / "u").exists()
    rng = np.random.default_rng(0)
    photos = {}
    for i in range(8):  # noisy photos: JPEG and PNG barely deflate
        im = Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
        buf = io.BytesIO()
        im.save(buf, "PNG" if i % 2 else "JPEG", quality=95)
        photos[f"{'real' if i < 4 else 'fake'}/{i}.{'png' if i % 2 else 'jpg'}"] = buf.getvalue()
    plan = plan_uploads([("photos.zip", zip_of(photos))])
    assert plan.unpacked_bytes > MIB and plan.n_images == 8      # large enough to be ratio-checked
    out = unpack_uploads([("photos.zip", zip_of(photos))], tmp_path / "p")
    assert sorted(out.files) == sorted(photos) and out.total_bytes == plan.unpacked_bytes


def test_a_member_that_is_both_a_file_and_a_folder_is_named_with_its_fix(tmp_path):
    rng = np.random.default_rng(1)
    data = zip_of({"set/real/a.jpg": jpeg(rng, False), "set/real/a.jpg/b.jpg": jpeg(rng, False)})
    with pytest.raises(InputError) as err:
        unpack_uploads([("mix.zip", data)], tmp_path / "u")
    assert "'set/real/a.jpg'" in err.value.message and "folder" in err.value.message
    assert "rename" in err.value.hint and "ASAP_" not in err.value.message + err.value.hint
    assert not (tmp_path / "u").exists()


def test_a_plan_counts_images_and_bytes_without_writing(tmp_path):
    rng = np.random.default_rng(2)
    data = zip_of({"real/a.jpg": jpeg(rng, False), "fake/b.jpg": jpeg(rng, True), "notes.txt": b"x"})
    loose = jpeg(rng, True)
    plan = plan_uploads([("set.zip", data), ("c.jpg", loose)], "fake")
    assert plan.n_images == 3 and plan.relpaths == ["real/a.jpg", "fake/b.jpg", "fake/0002-c.jpg"]
    assert plan.upload_bytes == len(data) + len(loose)
    assert [w for w, _ in plan.skipped] == ["set.zip/notes.txt"] and not any(tmp_path.iterdir())


def test_folder_bytes_sums_regular_files_and_follows_no_link(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.bin").write_bytes(b"1" * 1000)
    (tmp_path / "a" / "b" / "y.bin").write_bytes(b"2" * 2345)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    outside.write_bytes(b"3" * 50_000)
    (tmp_path / "a" / "link.bin").symlink_to(outside)
    (tmp_path / "a" / "dirlink").symlink_to(tmp_path / "a" / "b", target_is_directory=True)
    assert folder_bytes(tmp_path) == 3345 and folder_bytes(tmp_path / "nowhere") == 0
    outside.unlink()


def test_expired_uploads_go_with_their_caches_and_live_ones_stay(tmp_path):
    now = 1e6

    def upload(session: str, key: str, age: float) -> Path:
        f = tmp_path / session / key
        for sub in ("images/real", "cache/emb-v1-x", "my-images/cache/maps"):
            (f / sub).mkdir(parents=True)
            (f / sub / "data.bin").write_bytes(b"x" * 100)
        os.utime(f, (now - age, now - age))
        return f

    old_a, young_a = upload("sa", "u1", 90_000), upload("sa", "u2", 60)
    old_b, kept_b = upload("sb", "u1", 90_000), upload("sc", "u1", 100_000)
    removed = prune_expired(tmp_path, 86_400, keep=[kept_b / "my-images"], now=now)
    assert sorted(removed) == sorted([old_a, old_b])
    assert not old_a.exists() and not (tmp_path / "sb").exists()   # the emptied session folder too
    assert young_a.is_dir() and (kept_b / "my-images" / "cache" / "maps" / "data.bin").is_file()
    assert folder_bytes(tmp_path) == 6 * 100


def test_check_space_refuses_in_words():
    check_space(900, 100, 1000)
    with pytest.raises(InputError) as err:
        check_space(900, 101, 1000)
    assert "space for uploads is full right now; try again later" in err.value.message
    assert "ASAP_" not in err.value.message + err.value.hint


# ------------------------------------------------------------------------------------------ the minimum
@pytest.mark.slow
def test_two_real_and_two_fake_images_analyse(tmp_path, tiny_clip_dir):
    rng = np.random.default_rng(4)
    for label in ("real", "fake"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "data" / label / f"{i}.jpg").write_bytes(jpeg(rng, label == "fake"))
    report = analyze(tmp_path / "data", tmp_path / "bundle",
                     AnalyzeOptions(model=str(tiny_clip_dir), cache_dir=str(tmp_path / "cache"), num_workers=0))
    b = Bundle.open(report.bundle)
    assert (b.counts.real, b.counts.fake) == (2, 2) and report.metrics["val"]["n"] == 2
    assert np.isfinite(b.images["p_fake"]).all()


@pytest.mark.parametrize("n_real, n_fake", [(2, 2), (2, 3), (3, 2), (4, 4), (40, 40)])
def test_the_split_keeps_one_of_each_class_on_both_sides(n_real, n_fake):
    y = np.array([0] * n_real + [1] * n_fake)
    tr, va = split_indices(y, None, 0.2, random_state=0)
    assert set(y[tr].tolist()) == {0, 1} and set(y[va].tolist()) == {0, 1}
    assert sorted(np.concatenate([tr, va])) == list(range(len(y)))
    assert len(va) == max(2, int(np.ceil(0.2 * len(y))))


# ------------------------------------------------------------------------------------------ the app
@pytest.fixture
def hosted(tiny_bundle, tiny_clip_dir, tmp_path, monkeypatch):  # noqa: F811
    """``set(**env)``: the app in hosted mode (a bundle root with the tiny bundle, its own cache and state)
    with extra settings; returns the ``Settings``."""
    from streamlit import config

    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, root / "tiny", ignore=shutil.ignore_patterns("cache"))
    monkeypatch.delenv("ASAP_BUNDLE", raising=False)
    monkeypatch.delenv("ASAP_STATE_URL", raising=False)

    def apply(**extra: str):
        for k, v in {"ASAP_HOSTED": "1", "ASAP_BUNDLE_ROOT": str(root), "ASAP_CACHE_DIR": str(tmp_path / "cache"),
                     "ASAP_MODEL": str(tiny_clip_dir), **extra}.items():
            monkeypatch.setenv(k, v)
        return reload_settings()

    yield apply
    config.set_option("client.showErrorDetails", "full")
    config.set_option("client.toolbarMode", "auto")


def open_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": "tiny"})
    at.run()
    no_exception(at)
    return at


@pytest.mark.slow
def test_an_upload_is_charged_once_and_a_visitor_over_the_budget_is_refused_before_unpacking(hosted):
    s = hosted(ASAP_RELEVANCE_BUDGET="6")
    at = open_app()
    first_zip = ("first.zip", two_and_two_zip(0), "application/zip")  # zips carry a time: made once
    upload_and_analyse(at, first_zip)
    first = Path(at.session_state[K.K_BUNDLE])
    assert Bundle.open(first).counts.real == 2 and not at.sidebar.error   # 2 + 2 analysed in the app
    upload_and_analyse(at, ("second.zip", two_and_two_zip(1), "application/zip"))   # 4 + 4 images > 6
    assert any("per visitor and day" in t for t in shown(at)), shown(at)
    assert at.session_state[K.K_BUNDLE] == str(first)
    assert [p.parent.name for p in (s.cache_dir / "uploads").rglob("images")] == [first.parent.name]
    upload_and_analyse(at, first_zip)                                       # analysed before: free
    assert at.session_state[K.K_BUNDLE] == str(first) and not at.sidebar.error, shown(at)


def test_a_visitor_over_the_daily_bytes_is_refused_before_unpacking(hosted):
    s = hosted(ASAP_UPLOAD_MB_PER_DAY="0.002")  # 2 KB: less than four JPEGs
    at = open_app()
    upload_and_analyse(at, ("set.zip", two_and_two_zip(0), "application/zip"))
    assert any("MB" in t and "per visitor and day" in t for t in shown(at)), shown(at)
    assert not list((s.cache_dir / "uploads").rglob("images")) and "tiny" in at.session_state[K.K_BUNDLE]


@pytest.mark.slow
def test_the_storage_cap_refuses_in_words_and_never_evicts_live_uploads(hosted):
    s = hosted(ASAP_UPLOAD_STORAGE_MB="1")
    others = []
    for i in range(60):  # 60 other sessions' live uploads: 1.2 MB, over the 1 MB cap
        f = s.cache_dir / "uploads" / f"session{i:02d}" / "upload"
        (f / "my-images").mkdir(parents=True)
        (f / "my-images" / "bundle.json").write_bytes(b" " * 20_000)
        others.append(f)
    at = open_app()
    upload_and_analyse(at, ("set.zip", two_and_two_zip(0), "application/zip"))
    assert any("space for uploads is full right now; try again later" in t for t in shown(at)), shown(at)
    assert not any("ASAP_" in t for t in shown(at))
    assert all((f / "my-images" / "bundle.json").is_file() for f in others)
    assert "tiny" in at.session_state[K.K_BUNDLE]
    for f in others:  # a day later they have expired: removed (with their caches) to make room
        os.utime(f, (f.stat().st_atime - 90_000, f.stat().st_mtime - 90_000))
    at.sidebar.button(key=K.W_BYO_BTN).click().run()
    no_exception(at)
    path = Path(at.session_state[K.K_BUNDLE])
    assert path.is_relative_to(s.cache_dir / "uploads") and Bundle.open(path).counts.fake == 2
    assert not any(f.exists() for f in others)


@pytest.mark.slow
def test_an_uploads_caches_live_in_its_folder_and_go_when_it_is_done(hosted, monkeypatch):
    from asap_core.pipeline import analyze as analyze_module

    s = hosted()
    seen: dict[str, list[str]] = {}
    real_analyze = analyze_module.analyze

    def recording(data_dir, out, options=None, progress=None):
        report = real_analyze(data_dir, out, options, progress)
        seen["cache"] = sorted(p.name for p in Path(options.cache_dir).iterdir())
        seen["where"] = [options.cache_dir, str(options.num_workers)]
        return report

    monkeypatch.setattr(analyze_module, "analyze", recording)
    at = open_app()
    upload_and_analyse(at, ("set.zip", two_and_two_zip(3), "application/zip"))
    folder = Path(at.session_state[K.K_BUNDLE]).parent
    assert Path(seen["where"][0]).parent == folder and seen["where"][1] == "1"   # one decode thread
    assert {c for c in RUN_CACHES if any(n.startswith(c) for n in seen["cache"])} == set(RUN_CACHES)
    assert not run_caches_under(s.cache_dir, skip=s.cache_dir / "uploads")   # nothing in the global cache
    assert not (folder / "cache").exists() and Bundle.open(folder / "my-images").counts.real == 2
    os.utime(folder, (1, 1))                                                 # expired: it and its caches go
    assert prune_expired(s.cache_dir / "uploads", 86_400) == [folder] and not run_caches_under(s.cache_dir)


def test_a_file_and_folder_member_and_a_full_disk_are_told_without_operator_settings(hosted, monkeypatch):
    from app_pages.glue import byo

    hosted()
    rng = np.random.default_rng(5)
    at = open_app()
    mixed = zip_of({"real/a.jpg": jpeg(rng, False), "real/a.jpg/b.jpg": jpeg(rng, False),
                    "fake/c.jpg": jpeg(rng, True), "fake/d.jpg": jpeg(rng, True)})
    upload_and_analyse(at, ("mixed.zip", mixed, "application/zip"))
    assert any("'real/a.jpg' is a file" in t for t in shown(at)), shown(at)
    assert any(t.startswith("Fix: rename") for t in shown(at))

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(byo, "write_plan", full)
    upload_and_analyse(at, ("set.zip", two_and_two_zip(0), "application/zip"))
    assert any("could not be stored (No space left on device)" in t for t in shown(at)), shown(at)
    assert not any("ASAP_" in t or "cache" in t.lower() for t in shown(at))
