"""Pixel budget (a small upload must not take gigabytes): every decode reads the image's size from its header
first and refuses it above the limit (hosted: ``ASAP_MAX_UPLOAD_PIXELS``, in plain words; locally: Pillow's limit
at 1x); accepted images decode in bounded memory; the Single image page decodes an upload once, inside the work
slot and after the budget; bundle thumbnails far larger than a thumbnail are grey tiles, never decoded.

The bombs are tiny files made here (a small image whose header is rewritten to declare a huge size); memory
is measured in subprocesses (the peak of resident memory, ``VmHWM``, reset before the decode)."""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from asap_core.analyses.single_image import check_upload
from asap_core.errors import ImageLoadError
from asap_core.hosting import HostedPolicy
from asap_core.inputs import imageio
from asap_core.inputs.imageio import (
    WORKING_SIDE,
    decode_image,
    decode_thumbnail,
    image_size,
    read_bytes,
    thumbnail_fits,
    to_rgb,
)
from asap_core.settings import reload_settings
from asap_core.storage import thumbs as T
from asap_core.storage.schema import THUMB_MAX_PIXELS, THUMB_SIDE
from asap_core.views.grid import thumb_uri
from tests.conftest_app import no_exception, private_copy, tiny_bundle  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 60


# ------------------------------------------------------------------------------------------ files declaring huge sizes
def _small(fmt: str, mode: str, **kw) -> bytearray:
    buf = io.BytesIO()
    Image.new(mode, (8, 8), 7 if mode in ("L", "P") else (10, 20, 30, 128)[:len(mode)]).save(buf, fmt, **kw)
    return bytearray(buf.getvalue())


def png_declaring(w: int, h: int, mode: str = "RGBA") -> bytes:
    b = _small("PNG", mode)
    b[16:24] = struct.pack(">II", w, h)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))  # the IHDR's CRC
    return bytes(b)


def webp_declaring(w: int, h: int) -> bytes:
    b = _small("WEBP", "RGBA", lossless=True)
    assert b[12:16] == b"VP8L" and b[20] == 0x2F
    bits = struct.unpack("<I", b[21:25])[0] & ~((1 << 28) - 1)
    b[21:25] = struct.pack("<I", bits | (w - 1) | ((h - 1) << 14))
    return bytes(b)


def bmp_declaring(w: int, h: int) -> bytes:
    b = _small("BMP", "RGB")
    b[18:26] = struct.pack("<ii", w, h)
    return bytes(b)


def jpeg_declaring(w: int, h: int) -> bytes:
    b = _small("JPEG", "RGB")
    i = b.index(b"\xff\xc0")
    b[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(b)


def gif_declaring(w: int, h: int) -> bytes:
    b = _small("GIF", "L")
    b[6:10] = struct.pack("<HH", w, h)
    i = b.index(b"\x2c", 13)  # the image descriptor
    b[i + 5:i + 9] = struct.pack("<HH", w, h)
    return bytes(b)


def tiff_declaring(w: int, h: int) -> bytes:
    b = _small("TIFF", "RGB")
    off = struct.unpack("<I", b[4:8])[0]
    for k in range(struct.unpack("<H", b[off:off + 2])[0]):
        e = off + 2 + 12 * k
        tag, typ = struct.unpack("<HH", b[e:e + 4])
        if tag in (256, 257, 278):
            v = w if tag == 256 else h
            b[e + 8:e + 12] = struct.pack("<HH", v, 0) if typ == 3 else struct.pack("<I", v)
    return bytes(b)


BOMBS = {  # name -> (bytes, width, height); uploads that once took gigabytes, and one per format Pillow opens
    "flat.webp": (webp_declaring(16383, 10900), 16383, 10900),
    "rgba.png": (png_declaring(13000, 13000), 13000, 13000),
    "grey.png": (png_declaring(13300, 13300, "L"), 13300, 13300),
    "big.tif": (tiff_declaring(12000, 9000), 12000, 9000),
    "big.gif": (gif_declaring(12000, 9000), 12000, 9000),
    "big.bmp": (bmp_declaring(12000, 9000), 12000, 9000),
    "big.jpg": (jpeg_declaring(20000, 20000), 20000, 20000),
}

# Runs in a fresh process: the peak of resident memory is reset, then every bomb goes through the page's
# cheap check and the decode; prints each reason and fix, and the peak's growth in MB.
_CHILD_BOMBS = r"""
import json, sys
from pathlib import Path
from asap_core.analyses.single_image import check_upload, decode_upload
from asap_core.errors import ImageLoadError
from asap_core.hosting import HostedPolicy
policy = HostedPolicy.from_settings()  # the caller passes the limits: an analysis reads no settings
hwm = lambda: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
files = sorted(Path(sys.argv[1]).iterdir())
open("/proc/self/clear_refs", "w").write("5")
before, out = hwm(), {}
for f in files:
    data = f.read_bytes()
    got = []
    for step in (check_upload, decode_upload):
        try:
            step(f.name, data, policy)
            got.append(None)
        except ImageLoadError as exc:
            got.append([exc.reason, exc.hint, str(exc)])
    out[f.name] = got
print(json.dumps({"growth_mb": (hwm() - before) / 1024, "out": out}))
"""


def _run_child(code: str, *args: str, **env: str) -> dict:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "ASAP_HOSTED": "1", **env}
    out = subprocess.run([sys.executable, "-c", code, *args], env=full, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _plain(text: str) -> None:
    """Words a visitor may read: no setting, no exception class, no function name."""
    assert "ASAP_" not in text and "Error" not in text and "Exception" not in text and "()" not in text, text


def test_header_bombs_refused_in_hosted_mode_without_decoding(tmp_path):
    folder = tmp_path / "bombs"
    folder.mkdir()
    for name, (data, _, _) in BOMBS.items():
        (folder / name).write_bytes(data)
        assert len(data) < 1000  # tiny files declaring 80 to 400 megapixels
    res = _run_child(_CHILD_BOMBS, str(folder), ASAP_BUNDLE_ROOT=str(tmp_path), ASAP_MAX_UPLOAD_MB="10")
    for name, (_data, w, h) in BOMBS.items():
        checked, decoded = res["out"][name]
        assert checked is not None and checked == decoded, name  # refused by the cheap check, and by the decode
        reason, hint, full = checked
        assert reason.startswith(f"this image is {w} x {h} pixels ({round(w * h / 1e6)} megapixels)"), reason
        assert "64 megapixels" in reason and "resize it" in hint
        _plain(reason + hint + full)
    assert res["out"]["flat.webp"][0][0] == ("this image is 16383 x 10900 pixels (179 megapixels); this explorer "
                                            "accepts up to 64 megapixels")
    full_sizes = [w * h * 3 / 2 ** 20 for _, w, h in BOMBS.values()]
    assert res["growth_mb"] < 40 < min(full_sizes) / 5, res["growth_mb"]  # nothing near a full-size decode


def test_local_limit_is_pillows_at_1x_and_its_hint_may_name_the_setting(tmp_path, set_env):
    data = png_declaring(9500, 9500)  # 90.25 Mpx: over Pillow's 89.5 Mpx, under the 2x it used to load silently
    set_env(ASAP_HOSTED=None, ASAP_MAX_IMAGE_PIXELS=None)
    assert imageio.pixel_limit() == Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageLoadError) as err:
        decode_image(data, "x.png")
    assert "9500 x 9500 pixels exceeds the limit" in err.value.reason and "ASAP_MAX_IMAGE_PIXELS" in err.value.hint
    assert image_size(png_declaring(9000, 9000), "ok.png") == (9000, 9000)  # under the limit: the header alone
    set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(tmp_path), ASAP_MAX_UPLOAD_PIXELS="1000000")
    assert imageio.pixel_limit() == 1_000_000
    policy = HostedPolicy.from_settings()
    with pytest.raises(ImageLoadError) as err:
        check_upload("x.png", png_declaring(1001, 1000), policy)
    assert err.value.reason == ("this image is 1001 x 1000 pixels (1 megapixels); this explorer accepts up to "
                                "1 megapixels")
    _plain(err.value.reason + err.value.hint)
    assert check_upload("ok.png", png_declaring(1000, 1000), policy) == (1000, 1000)
    with pytest.raises(ImageLoadError, match="accepts WebP images up to 0.5 megapixels"):  # WEBP_BUDGET_SHARE
        check_upload("x.webp", webp_declaring(1000, 600), policy)


def test_decoder_failures_are_worded_without_exception_names():
    assert imageio._reason_for(ValueError("tile cannot extend outside image")) == (
        "cannot decode the image data (damaged or an unsupported variant of its format)")
    assert imageio._reason_for(OSError("broken data stream when reading image file")) == (
        "corrupt or truncated image data")
    with pytest.raises(ImageLoadError) as err:
        decode_image(png_declaring(64, 64), "x.png")  # a valid header over 8 x 8 pixels of data
    _plain(err.value.reason)


# ------------------------------------------------------------------------------------------ bounded decode
def _noise_rgba(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")


@pytest.mark.slow
def test_bounded_decode_is_the_full_conversion_reduced(set_env, tmp_path):
    im = _noise_rgba(2 * WORKING_SIDE + 50, 2 * WORKING_SIDE + 3)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    full = np.asarray(to_rgb(im))
    old = Image.alpha_composite(Image.new("RGBA", im.size, (255,) * 4), im).convert("RGB")  # the whole-image way
    assert np.array_equal(full, np.asarray(old))  # band by band: the same pixels
    set_env(ASAP_HOSTED=None)
    assert np.array_equal(np.asarray(decode_image(buf.getvalue(), "x.png")), full)  # locally: every pixel
    small = decode_image(buf.getvalue(), "x.png", working_side=WORKING_SIDE)
    assert small.size == (WORKING_SIDE + 25, WORKING_SIDE + 2) and min(small.size) >= WORKING_SIDE
    assert np.array_equal(np.asarray(small), np.asarray(Image.fromarray(full).reduce(2)))
    set_env(ASAP_HOSTED="1", ASAP_BUNDLE_ROOT=str(tmp_path))  # hosted: reduced by default
    assert decode_image(buf.getvalue(), "x.png").size == small.size
    jpg = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 120, 150)).save(jpg, "JPEG")
    drafted = decode_image(jpg.getvalue(), "x.jpg")  # JPEG: scaled while decoding, shortest side kept >= 1024
    assert drafted.size == (2000, 1500)
    assert np.abs(np.asarray(drafted, np.int16) - (90, 120, 150)).max() <= 2


def _flat_rgba_png(path: Path, w: int, h: int, rgba: tuple[int, int, int, int]) -> None:
    """A flat RGBA PNG of ``w x h`` written row by row (never held in memory whole)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    comp, row, idat = zlib.compressobj(6), b"\0" + bytes(rgba) * w, []
    for _ in range(h):
        idat.append(comp.compress(row))
    idat.append(comp.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b""))


_CHILD_DECODE = r"""
import json, sys
from asap_core.analyses.single_image import decode_upload
from asap_core.hosting import HostedPolicy
hwm = lambda: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
data = open(sys.argv[1], "rb").read()
open("/proc/self/clear_refs", "w").write("5")
before = hwm()
im = decode_upload("upload.png", data, HostedPolicy.from_settings())
print(json.dumps({"growth_mb": (hwm() - before) / 1024, "size": im.size, "pixel": im.getpixel((5, 5))}))
"""


@pytest.mark.slow
def test_an_image_just_under_the_budget_decodes_in_bounded_memory(tmp_path):
    w, h = 8000, 7999  # 63.99 Mpx: just under the 64 Mpx default
    _flat_rgba_png(tmp_path / "big.png", w, h, (255, 0, 0, 128))
    res = _run_child(_CHILD_DECODE, str(tmp_path / "big.png"), ASAP_BUNDLE_ROOT=str(tmp_path))
    rgba_mb = w * h * 4 / 2 ** 20  # 244 MiB: the decoded RGBA itself; the old compositing made ~5 copies
    assert res["growth_mb"] < 1.6 * rgba_mb, res["growth_mb"]
    assert min(res["size"]) >= WORKING_SIDE and min(res["size"]) < 2 * WORKING_SIDE
    assert np.abs(np.array(res["pixel"]) - (255, 127, 127)).max() <= 1  # red at half alpha, on white


# ------------------------------------------------------------------------------------------ thumbnails
def test_thumbnails_far_over_a_thumbnails_size_are_grey_and_not_decoded():
    big = jpeg_declaring(12000, 12000)  # declared 144 Mpx: its header alone decides
    fits = lambda data: thumbnail_fits(data, THUMB_MAX_PIXELS)
    assert not fits(big) and not fits(None) and not fits(b"not an image")
    grey = decode_thumbnail(big, 40, THUMB_MAX_PIXELS)
    assert grey.size == (40, 40) and grey.getpixel((0, 0)) == (200, 200, 200)
    ok = io.BytesIO()
    Image.new("RGB", (128, 96), (0, 90, 0)).save(ok, "JPEG")
    assert fits(ok.getvalue()) and decode_thumbnail(ok.getvalue(), THUMB_SIDE, THUMB_MAX_PIXELS).size == (128, 96)
    assert fits(jpeg_declaring(512, 512)) and not fits(jpeg_declaring(513, 512))
    assert THUMB_MAX_PIXELS == 512 * 512
    assert thumb_uri(jpeg_declaring(20000, 20000), 30).startswith("data:image/jpeg;base64,")


@pytest.fixture(scope="module")
def huge_thumbs_bundle(tiny_bundle, tmp_path_factory):  # noqa: F811
    """A copy of the tiny bundle whose thumbnails declare 20000² (most) and 12000² (every third)."""
    b = private_copy(tiny_bundle, tmp_path_factory.mktemp("huge_thumbs") / "bundle")
    ids = b.images["image_id"].tolist()
    data = [jpeg_declaring(12000, 12000) if k % 3 == 0 else jpeg_declaring(20000, 20000) for k in range(len(ids))]
    (b.path / "thumbs.parquet").unlink()
    T.write_thumbs(b.path / "thumbs.parquet", b.images, (ids, data))
    return b


def test_a_bundle_with_huge_thumbnails_renders_overview_and_attention(huge_thumbs_bundle, monkeypatch, tmp_path):
    from tests.conftest_app import local_app_env

    local_app_env(monkeypatch, tmp_path / "cache")
    b = huge_thumbs_bundle
    loads = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: (loads.append(self.size), real_load(self))[1])
    ids = b.images["image_id"].tolist()[:2]
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["bundle_path"] = str(b.path)
    at.session_state["sel_images"] = ids
    at.run()
    no_exception(at)
    at.switch_page("app_pages/overview.py").run()
    no_exception(at)
    at.switch_page("app_pages/attention.py").run()
    no_exception(at)
    assert at.get("image")  # the tiles are drawn (grey where the thumbnail is not one)
    assert not [s for s in loads if s[0] * s[1] > THUMB_MAX_PIXELS]  # no 12000² or 20000² thumbnail decoded


# ------------------------------------------------------------------------------------------ single image page
@pytest.mark.slow
def test_single_image_page_decodes_an_upload_once_and_never_over_budget(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    import asap_core.analyses.single_image as si
    import asap_core.hosting as hosting

    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, root / "tiny", ignore=shutil.ignore_patterns("cache"))
    env = {"ASAP_HOSTED": "1", "ASAP_BUNDLE_ROOT": str(root), "ASAP_RELEVANCE_BUDGET": "1",
           "ASAP_CACHE_DIR": str(tmp_path / "cache"), "ASAP_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reload_settings()
    decoded: list[str] = []
    for mod in (si, hosting):
        real = mod.decode_image
        monkeypatch.setattr(mod, "decode_image", lambda data, path, *a, _r=real, **kw: (decoded.append(str(path)),
                                                                                          _r(data, path, *a, **kw))[1])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"bundle": "tiny"})
    at.run()
    at.switch_page("app_pages/single_image.py").run()
    paths = pd.read_parquet(root / "tiny" / "images.parquet", columns=["path"])["path"].tolist()
    at.file_uploader(key="w_upload").set_value(("bomb.webp", BOMBS["flat.webp"][0], "image/webp")).run()
    no_exception(at)  # refused from the header, in words, before the budget: nothing decoded, nothing charged
    assert any("179 megapixels" in e.value for e in at.error) and decoded == []
    at.file_uploader(key="w_upload").set_value(("a.jpg", read_bytes(paths[0]), "image/jpeg")).run()
    no_exception(at)
    assert not at.error and at.metric and decoded == ["a.jpg"]  # once per upload
    at.run()
    assert at.metric and decoded == ["a.jpg"]  # a rerun decodes nothing
    at.file_uploader(key="w_upload").set_value(("b.jpg", read_bytes(paths[1]), "image/jpeg")).run()
    no_exception(at)
    assert at.error and not at.metric and decoded == ["a.jpg"]  # the budget is spent: b.jpg is never decoded
