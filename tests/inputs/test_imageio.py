"""asap_core.inputs.imageio: every bad input becomes ImageLoadError; every good one an upright RGB image."""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from asap_core.errors import ImageLoadError
from asap_core.inputs import imageio
from asap_core.inputs.imageio import (
    IMAGE_EXTENSIONS,
    decode_image,
    file_sha1,
    load_image,
    make_thumbnail,
    read_bytes,
)
from asap_core.settings import reload_settings
from asap_core.storage.schema import THUMB_SIDE


@pytest.fixture(autouse=True)
def _no_pixel_env(monkeypatch):
    monkeypatch.delenv("ASAP_MAX_IMAGE_PIXELS", raising=False)
    reload_settings()


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(img: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def _load_error(path: Path, **kw) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path, **kw)
    err = info.value
    assert err.path == str(path)
    assert str(path) in str(err)
    return err


# ----------------------------------------------------------------------------- unreadable files


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    assert _load_error(p).reason == "empty file (0 bytes)"
    with pytest.raises(ImageLoadError, match=r"empty file \(0 bytes\)"):
        decode_image(b"", p)
    assert file_sha1(p) == hashlib.sha1(b"").hexdigest()


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
@pytest.mark.parametrize("frac", [0.3, 0.7, 0.95])
def test_truncated_image(tmp_path, fmt, suffix, frac):
    full = io.BytesIO()
    Image.fromarray(_noise(64, 80)).save(full, fmt)
    data = full.getvalue()
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(data[: int(len(data) * frac)])
    assert _load_error(p).reason == "truncated image data"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on globally


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n" * 10)
    assert _load_error(p).reason == "not an image (cannot identify format)"


@pytest.mark.parametrize("header", [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP"])
def test_garbage_after_valid_header_is_image_load_error(tmp_path, header):
    junk = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    p = tmp_path / "junk.img"
    p.write_bytes(header + junk)
    err = _load_error(p)
    assert err.reason


def test_directory_and_missing_file(tmp_path):
    d = tmp_path / "folder.jpg"
    d.mkdir()
    assert _load_error(d).reason == "is a directory, not a file"
    assert _load_error(tmp_path / "gone.jpg").reason == "file not found"


def test_symlink_loop_and_broken_link(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.symlink_to(b)
    b.symlink_to(a)
    assert _load_error(a).reason == "symbolic link loop"
    with pytest.raises(ImageLoadError, match="symbolic link loop"):
        file_sha1(a)
    broken = tmp_path / "broken.jpg"
    broken.symlink_to(tmp_path / "nowhere.jpg")
    assert _load_error(broken).reason.startswith("broken symbolic link")


def test_unreadable_file_chmod_000(tmp_path):
    p = _save(Image.fromarray(_noise(8, 8)), tmp_path / "secret.png")
    os.chmod(p, 0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("running as a user (root) who can read a chmod 000 file")
        err = _load_error(p)
        assert err.reason == "permission denied"
        assert "chmod" in err.hint
    finally:
        os.chmod(p, 0o644)


def test_permission_error_mapping(tmp_path, monkeypatch):
    """The same mapping, forced: works when the tests run as root."""
    p = _save(Image.fromarray(_noise(8, 8)), tmp_path / "secret.png")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(imageio, "open", deny, raising=False)
    assert _load_error(p).reason == "permission denied"


# ----------------------------------------------------------------------------- mode conversions


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (32, 24), (255, 0, 0, 0))  # pure cyan ink
    p = _save(cmyk, tmp_path / "cmyk.jpg", quality=95)
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    _, im = load_image(p)
    assert im.mode == "RGB" and im.size == (32, 24)
    r, g, b = np.asarray(im)[12, 16].astype(int)
    assert r < 30 and g > 225 and b > 225


def test_16bit_png_scaled_not_clipped(tmp_path):
    levels = np.array([0, 100, 128, 200, 255])
    arr = (levels * 257).astype(np.uint16).reshape(1, -1).repeat(3, axis=0)
    p = _save(Image.fromarray(arr), tmp_path / "deep.png")
    with Image.open(p) as raw:
        assert raw.mode.startswith("I")
    _, im = load_image(p)
    got = np.asarray(im)
    assert im.mode == "RGB"
    np.testing.assert_array_equal(got[1, :, 0], levels)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])
    # off-grid values round to the nearest 8-bit level
    odd = Image.fromarray(np.array([[128, 129, 65407]], dtype=np.uint16))
    np.testing.assert_array_equal(np.asarray(imageio.to_rgb(odd))[0, :, 1], [0, 1, 255])


def test_palette_png(tmp_path):
    src = Image.fromarray(_noise(20, 30)).quantize(colors=16)
    p = _save(src, tmp_path / "pal.png")
    _, im = load_image(p)
    assert im.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(im), np.asarray(src.convert("RGB")))


def test_rgba_png_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 200  # red-ish everywhere
    arr[0, 0, 3] = 0  # fully transparent -> white
    arr[1, 1, 3] = 255  # opaque -> the colour itself
    arr[2, 2, 3] = 128  # half -> halfway to white
    p = _save(Image.fromarray(arr, "RGBA"), tmp_path / "alpha.png")
    _, im = load_image(p)
    px = np.asarray(im).astype(int)
    assert im.mode == "RGB"
    assert px[0, 0].tolist() == [255, 255, 255]
    assert px[1, 1].tolist() == [200, 0, 0]
    assert abs(px[2, 2, 0] - 227) <= 2 and abs(px[2, 2, 1] - 127) <= 2


def test_animated_gif_first_frame(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (16, 12), c) for c in colours]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as raw:
        assert raw.n_frames == 3
    _, im = load_image(p)
    assert im.mode == "RGB" and im.size == (16, 12)
    assert np.all(np.asarray(im) == np.array(colours[0], dtype=np.uint8))


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 12), c) for c in [(0, 0, 255), (255, 255, 0)]]
    p = tmp_path / "anim.webp"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    _, im = load_image(p)
    assert im.mode == "RGB"
    assert np.all(np.asarray(im) == np.array([0, 0, 255], dtype=np.uint8))


def test_one_pixel_image(tmp_path):
    p = _save(Image.new("RGB", (1, 1), (12, 34, 56)), tmp_path / "dot.png")
    _, im = load_image(p)
    assert im.size == (1, 1) and np.asarray(im)[0, 0].tolist() == [12, 34, 56]
    thumb = Image.open(io.BytesIO(make_thumbnail(im, THUMB_SIDE)))
    assert thumb.size == (1, 1)


def test_exif_orientation_6(tmp_path):
    """Orientation 6 = rotate 90 degrees clockwise to display: the stored top-left lands top-right."""
    arr = np.full((20, 40, 3), 128, dtype=np.uint8)  # stored 40 wide x 20 tall
    arr[:8, :8] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    p = _save(img, tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    _, im = load_image(p)
    assert im.size == (20, 40)  # width and height swapped
    px = np.asarray(im).astype(int)
    assert px[3, 16, 0] > 200 and px[3, 16, 1] < 60  # top-right corner is red
    assert abs(px[3, 3, 0] - 128) < 20  # top-left is grey


def test_unicode_and_spaces_in_name(tmp_path):
    p = _save(Image.new("RGB", (5, 4), (1, 2, 3)), tmp_path / "bild ä 猫 (1).png")
    image_id, im = load_image(p)
    assert image_id == hashlib.sha1(p.read_bytes()).hexdigest()
    assert im.size == (5, 4)
    bad = tmp_path / "kaputt ü 画像.jpg"
    bad.write_text("nope")
    assert _load_error(bad).reason == "not an image (cannot identify format)"


# ----------------------------------------------------------------------------- decompression bombs


def test_decompression_bomb_error_is_skipped(tmp_path, monkeypatch):
    p = _save(Image.new("RGB", (100, 60)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # error above 2000 pixels
    err = _load_error(p)
    assert err.reason.startswith("decompression bomb: 100 x 60 pixels exceeds the limit")
    assert "ASAP_MAX_IMAGE_PIXELS" in err.hint


def test_pixel_limit_is_pillows_at_1x_without_warnings(tmp_path, monkeypatch):
    p = _save(Image.new("RGB", (40, 40)), tmp_path / "big.png")  # 1600 pixels: Pillow only warns (1x-2x)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = _load_error(p)  # refused from the header at 1x, not loaded silently up to 2x
    assert err.reason.startswith("decompression bomb: 40 x 40 pixels exceeds the limit (1000 pixels")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1600)  # exactly at the limit: decodes
    assert load_image(p)[1].size == (40, 40)


def test_env_var_raises_pixel_limit(tmp_path, monkeypatch):
    p = _save(Image.new("RGB", (100, 60)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv("ASAP_MAX_IMAGE_PIXELS", "10000")
    reload_settings()
    _, im = load_image(p)
    assert im.size == (100, 60)


# ----------------------------------------------------------------------------- ids, draft, thumbnails


def test_sha1_is_image_id(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, (3 << 20) // 2, dtype=np.uint8).tobytes()
    blob = tmp_path / "blob.bin"
    blob.write_bytes(data)  # > 1 MiB: several chunks
    assert file_sha1(blob) == hashlib.sha1(data).hexdigest()
    p = _save(Image.fromarray(_noise(10, 12)), tmp_path / "x.png")
    image_id, _ = load_image(p)
    assert image_id == file_sha1(p) == hashlib.sha1(read_bytes(p)).hexdigest()


@pytest.mark.parametrize("size", [(1000, 600), (449, 1000), (2000, 1793), (300, 200)])
def test_jpeg_draft_keeps_shortest_side(tmp_path, size):
    p = _save(Image.new("RGB", size, (90, 120, 150)), tmp_path / "big.jpg")
    _, full = load_image(p)
    _, small = load_image(p, draft_size=224)
    assert full.size == size
    assert small.mode == "RGB"
    assert min(small.size) >= min(224, min(size))
    if min(size) >= 448:
        assert min(small.size) < min(size)  # actually reduced
    else:
        assert small.size == size


def test_draft_ignored_for_png(tmp_path):
    p = _save(Image.new("RGB", (900, 700)), tmp_path / "big.png")
    _, im = load_image(p, draft_size=224)
    assert im.size == (900, 700)


def test_make_thumbnail(tmp_path):
    im = Image.fromarray(_noise(150, 300))
    data = make_thumbnail(im, THUMB_SIDE)
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "JPEG" and thumb.size == (128, 64)
    assert im.size == (300, 150)  # input untouched
    tall = Image.open(io.BytesIO(make_thumbnail(Image.new("RGBA", (50, 500)), longest=64)))
    assert tall.size == (6, 64) and tall.mode == "RGB"


def test_image_extensions():
    expected = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif"}
    if features.check("webp"):
        expected.add(".webp")
    assert expected <= IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
