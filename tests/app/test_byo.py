"""Bring your own images: safe unpacking of uploads (``asap_core.inputs.archive``) and, with AppTest, a zip of
40 images written here uploaded in the sidebar, analysed with the tiny CLIP and opened in the explorer,
locally and in hosted mode."""
from __future__ import annotations

import io
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_pages.glue import keys as K
from asap_core.errors import InputError
from asap_core.inputs import archive
from asap_core.inputs.archive import (
    HOSTED_MAX_IMAGES,
    UploadLimits,
    prune_folders,
    safe_name,
    unpack_uploads,
    upload_limits,
)
from asap_core.inputs.scan import scan_folder
from asap_core.settings import Settings, reload_settings
from asap_core.storage.bundle import Bundle
from tests.conftest_app import chart_data, no_exception, tiny_bundle  # noqa: F401  (fixture)

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
TIMEOUT = 120


def jpeg(rng: np.random.Generator, fake: bool, size: int = 40) -> bytes:
    """A noisy image; fakes are warm with a bright corner, reals cool: the distiller can learn them apart."""
    arr = rng.integers(0, 110, size=(size, size, 3), dtype=np.uint8)
    arr[..., 0 if fake else 2] += 100
    if fake:
        arr[: size // 3, : size // 3] = 250
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def zip_of(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A zip with ``members`` (name -> bytes, deflated) and symbolic ``links`` (name -> target)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def forty_images_zip(top: str = "myset/") -> bytes:
    rng = np.random.default_rng(7)
    return zip_of({f"{top}{label}/{label[0]}{i:02d}.jpg": jpeg(rng, label == "fake")
                   for label in ("real", "fake") for i in range(20)})


# ------------------------------------------------------------------------------------------ archive
def test_nested_real_fake_folders_are_kept_and_non_images_skipped(tmp_path):
    rng = np.random.default_rng(0)
    data = zip_of({"set/real/a.jpg": jpeg(rng, False), "set/fake/gan/b.jpg": jpeg(rng, True),
                   "set/fake/gan/c.JPG": jpeg(rng, True), "set/real/x.jpg": jpeg(rng, False),
                   "set/readme.txt": b"hello", "set/real/.hidden.jpg": jpeg(rng, False),
                   "__MACOSX/set/real/._a.jpg": b"\0\5\x16\7", "set/inner.zip": b"PK"})
    out = unpack_uploads([("mine.zip", data)], tmp_path / "u")
    assert sorted(out.files) == ["set/fake/gan/b.jpg", "set/fake/gan/c.JPG", "set/real/a.jpg", "set/real/x.jpg"]
    assert {Path(w).name: r for w, r in out.skipped}["readme.txt"].startswith("not an image type")
    assert {r for _, r in out.skipped} >= {"hidden or system file"} and len(out.skipped) == 4
    scan = scan_folder(out.root)
    assert (scan.n_real, scan.n_fake) == (2, 2)
    assert set(scan.images["generator"].dropna()) == {"gan"}


@pytest.mark.parametrize("name, why", [("../evil.jpg", "climbs out"), ("a/../../evil.jpg", "climbs out"),
                                       ("/etc/evil.jpg", "absolute"), ("C:/evil.jpg", "absolute"),
                                       ("..\\evil.jpg", "climbs out")])
def test_names_that_leave_the_folder_refuse_the_archive(tmp_path, name, why):
    data = zip_of({"real/ok.jpg": jpeg(np.random.default_rng(0), False), name: b"x"})
    with pytest.raises(InputError) as err:
        unpack_uploads([("bad.zip", data)], tmp_path / "u")
    assert why in err.value.message and name in err.value.message and "bad.zip" in err.value.message
    assert err.value.hint
    assert not (tmp_path / "u").exists() and not (tmp_path / "evil.jpg").exists()


def test_symbolic_links_and_encrypted_members_are_refused(tmp_path):
    with pytest.raises(InputError, match="symbolic link"):
        unpack_uploads([("l.zip", zip_of({"real/a.jpg": b"x"}, links={"real/b.jpg": "/etc/passwd"}))], tmp_path / "u")
    data = bytearray(zip_of({"real/a.jpg": b"x" * 100}))
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set the encryption bit in both headers
        i = data.index(sig)
        data[i + flag_at] |= 0x1
    with pytest.raises(InputError, match="encrypted"):
        unpack_uploads([("e.zip", bytes(data))], tmp_path / "u")
    assert not (tmp_path / "u").exists()


def test_zip_bomb_ratio_and_size_limits(tmp_path):
    bomb = zip_of({"real/bomb.bmp": b"\0" * (8 * 1024 * 1024)})  # 8 MB of zeros deflate ~1000:1
    with pytest.raises(InputError, match="zip bomb") as err:
        unpack_uploads([("bomb.zip", bomb)], tmp_path / "u")
    assert "real/bomb.bmp" in err.value.message
    with pytest.raises(InputError, match="per image"):
        unpack_uploads([("big.zip", bomb)], tmp_path / "u", limits=UploadLimits(max_file_bytes=1024 * 1024,
                                                                                max_ratio=1e9))
    rng = np.random.default_rng(1)
    many = {f"real/{i}.jpg": jpeg(rng, False) for i in range(6)}
    with pytest.raises(InputError, match="at most 5"):
        unpack_uploads([("many.zip", zip_of(many))], tmp_path / "u", limits=UploadLimits(max_files=5))
    with pytest.raises(InputError, match="unpacked"):
        unpack_uploads([("many.zip", zip_of(many))], tmp_path / "u", limits=UploadLimits(max_total_bytes=2000))
    assert not (tmp_path / "u").exists()


def test_a_header_that_understates_the_size_is_caught_while_inflating(tmp_path):
    data = bytearray(zip_of({"real/a.bmp": b"\7" * 50_000}))
    i = data.index(b"PK\x01\x02")  # central directory: uncompressed size at offset 24
    data[i + 24:i + 28] = (1000).to_bytes(4, "little")
    with pytest.raises(InputError) as err:
        unpack_uploads([("liar.zip", bytes(data))], tmp_path / "u")
    assert "real/a.bmp" in err.value.message
    assert not (tmp_path / "u").exists()


def test_loose_images_go_to_the_label_folder_under_names_of_our_own(tmp_path):
    rng = np.random.default_rng(2)
    uploads = [("../../x/../holiday photo.JPG", jpeg(rng, False)), ("C:\\Users\\me\\b.png", jpeg(rng, False)),
               ("notes.txt", b"hi")]
    out = unpack_uploads(uploads, tmp_path / "u", loose_label="real")
    assert out.files == ["real/0001-holiday photo.jpg", "real/0002-b.png"]
    assert out.skipped == [("notes.txt", "not an image type (.txt)")]
    assert scan_folder(out.root).n_real == 2
    flat = unpack_uploads(uploads[:1], tmp_path / "v", loose_label=None)
    assert flat.files == ["0001-holiday photo.jpg"]
    with pytest.raises(InputError, match="no images"):
        unpack_uploads([("notes.txt", b"hi")], tmp_path / "w")
    with pytest.raises(InputError, match="not a readable zip"):
        unpack_uploads([("broken.zip", b"PK\x03\x04 nonsense")], tmp_path / "w")
    assert safe_name("a/b/\x00we;ird$.webp", 3) == "0003-we_ird.webp"


def test_hosted_limits_come_from_the_settings():
    s = Settings(hosted=True, max_upload_mb=10.0)
    lim = upload_limits(s)
    assert lim.max_files == HOSTED_MAX_IMAGES and lim.max_file_bytes == s.max_upload_bytes
    assert lim.max_total_bytes == 4 * s.max_upload_bytes
    assert upload_limits(Settings()) == UploadLimits()


def test_prune_keeps_young_and_kept_folders(tmp_path):
    import os

    for name, age in (("old", 90_000), ("older", 100_000), ("young", 10), ("mid", 500)):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1e6 - age, 1e6 - age))
    removed = prune_folders(tmp_path, 86_400, keep=[tmp_path / "older" / "bundle"], now=1e6)
    assert [p.name for p in removed] == ["old"]
    removed = prune_folders(tmp_path, 86_400, max_count=1, now=1e6)
    assert sorted(p.name for p in removed) == ["mid", "older"] and (tmp_path / "young").is_dir()


# ------------------------------------------------------------------------------------------ app
@pytest.fixture
def local_env(monkeypatch, tmp_path, tiny_clip_dir):
    for k in ("ASAP_BUNDLE", "ASAP_HOSTED", "ASAP_BUNDLE_ROOT", "ASAP_MODEL_ALLOWLIST"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASAP_MODEL", str(tiny_clip_dir))
    return reload_settings()


def upload_and_analyse(at: AppTest, files) -> AppTest:
    at.sidebar.file_uploader(key=K.W_BYO_FILES).set_value(files).run()
    no_exception(at)
    at.sidebar.button(key=K.W_BYO_BTN).click().run()
    no_exception(at)
    return at


@pytest.mark.slow
def test_zip_of_40_images_is_analysed_and_opens_in_the_explorer(local_env, tiny_bundle):  # noqa: F811
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state[K.K_BUNDLE] = str(tiny_bundle)
    at.run()
    no_exception(at)
    upload_and_analyse(at, ("forty.zip", forty_images_zip(), "application/zip"))
    path = Path(at.session_state[K.K_BUNDLE])
    uploads = local_env.cache_dir / "uploads"
    assert path.is_relative_to(uploads) and path.name == "my-images"
    b = Bundle.open(path)
    assert (b.counts.real, b.counts.fake) == (20, 20)
    assert chart_data(at.get("vega_lite_chart")[0])["cell_id"].nunique() == len(b.cells)
    assert "Images found: 40" in at.session_state[K.K_LAST_REPORT]
    assert any(m.value == "**Bundle** `my-images`" for m in at.sidebar.markdown)

    at.switch_page("app_pages/overview.py").run()                 # the same upload again: its bundle, no new work
    at.session_state[K.K_BUNDLE] = str(tiny_bundle)
    at.run()
    mtime = (path / "bundle.json").stat().st_mtime_ns
    at.sidebar.button(key=K.W_BYO_BTN).click().run()
    no_exception(at)
    assert at.session_state[K.K_BUNDLE] == str(path) and (path / "bundle.json").stat().st_mtime_ns == mtime


def test_loose_unlabelled_images_are_placed_with_the_open_bundles_detector(local_env, tiny_bundle):  # noqa: F811
    rng = np.random.default_rng(3)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state[K.K_BUNDLE] = str(tiny_bundle)
    at.run()
    files = [(f"img{i}.jpg", jpeg(rng, i % 2 == 1), "image/jpeg") for i in range(6)]
    at.sidebar.file_uploader(key=K.W_BYO_FILES).set_value(files).run()
    at.sidebar.radio(key=K.W_BYO_LABEL).set_value("unlabelled").run()
    at.sidebar.button(key=K.W_BYO_BTN).click().run()
    no_exception(at)
    b = Bundle.open(at.session_state[K.K_BUNDLE])
    assert len(b.images) == 6 and b.images["label"].isna().all()
    assert "detector of the bundle" in at.session_state[K.K_LAST_REPORT]
    assert at.get("vega_lite_chart")


def test_a_refused_zip_says_why_and_keeps_the_open_bundle(local_env, tiny_bundle):  # noqa: F811
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state[K.K_BUNDLE] = str(tiny_bundle)
    at.run()
    upload_and_analyse(at, ("evil.zip", zip_of({"../../evil.jpg": b"x"}), "application/zip"))
    assert any("climbs out" in e.value for e in at.sidebar.error)
    assert at.session_state[K.K_BUNDLE] == str(tiny_bundle)


@pytest.mark.slow
def test_hosted_upload_opens_by_path_is_capped_and_never_shows_server_paths(tiny_bundle, tiny_clip_dir,  # noqa: F811
                                                                              tmp_path, monkeypatch):
    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, root / "tiny", ignore=shutil.ignore_patterns("cache"))
    monkeypatch.delenv("ASAP_BUNDLE", raising=False)
    for k, v in {"ASAP_HOSTED": "1", "ASAP_BUNDLE_ROOT": str(root), "ASAP_CACHE_DIR": str(tmp_path / "cache"),
                 "ASAP_MODEL": str(tiny_clip_dir)}.items():
        monkeypatch.setenv(k, v)
    s = reload_settings()
    try:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.query_params.update({"bundle": "tiny"})
        at.run()
        no_exception(at)
        upload_and_analyse(at, ("forty.zip", forty_images_zip(""), "application/zip"))
        path = Path(at.session_state[K.K_BUNDLE])
        assert path.is_relative_to(s.cache_dir / "uploads") and Bundle.open(path).counts.fake == 20
        assert at.get("vega_lite_chart") and not at.error
        assert "bundle" not in at.query_params                     # a link cannot name a session's upload
        shown = [str(e.value) for kind in ("markdown", "caption", "info", "warning", "error", "success", "code")
                 for e in at.get(kind)]
        assert not any(str(tmp_path) in t for t in shown)
        assert any("cannot be shared" in c.value for c in at.sidebar.caption)
        at.run()                                                   # stays open on the next run and page
        assert at.session_state[K.K_BUNDLE] == str(path) and at.get("vega_lite_chart")
        at.switch_page("app_pages/dimensions.py").run()
        no_exception(at)
        assert at.session_state[K.K_BUNDLE] == str(path) and not at.error
        at.switch_page("app_pages/overview.py").run()
        monkeypatch.setattr(archive, "HOSTED_MAX_IMAGES", 30)      # the public explorer's cap on one upload
        upload_and_analyse(at, ("again.zip", forty_images_zip("again/"), "application/zip"))
        assert any("at most 30" in e.value for e in at.sidebar.error)
        assert at.session_state[K.K_BUNDLE] == str(path)
    finally:
        from streamlit import config

        config.set_option("client.showErrorDetails", "full")
        config.set_option("client.toolbarMode", "auto")
