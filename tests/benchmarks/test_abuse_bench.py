"""The crafted files of ``benchmarks/abuse.py`` are what they claim (header sizes, modes, member counts), so the
abuse benchmark cannot silently rot into uploading harmless files. Fast: headers only, small decodes; no server."""
from __future__ import annotations

import io
import json
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import abuse


def _header(data: bytes) -> Image.Image:
    """The image's header only (Pillow's bomb warning silenced: these are bombs on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("kind,mode", [("png_rgba", "RGBA"), ("png_grey", "L"), ("webp", "RGBA"), ("tiff", "L"),
                                       ("bmp", "L"), ("gif", "P"), ("jpeg", "RGB")])
def test_small_versions_decode_to_the_claimed_pixels(kind, mode):
    im = _header(abuse.image_bomb(kind, 300, 170))
    assert im.size == (300, 170) and im.mode == mode
    px = np.asarray(im.convert("RGBA" if mode == "RGBA" else "L"))
    assert px.shape[:2] == (170, 300) and px.max() == 0                  # every pixel decoded, all zeros


@pytest.mark.parametrize("kind", ["png_grey", "webp", "tiff", "bmp"])  # png_rgba: 676 MB through zlib, too slow
def test_bombs_claim_their_size_in_few_bytes(kind):
    w, h = abuse.OVER[kind]
    data = abuse.image_bomb(kind, w, h)
    im = _header(data)
    assert im.size == (w, h)
    assert 64_000_000 < w * h < 2 * Image.MAX_IMAGE_PIXELS + 1            # over our limit, under Pillow's error
    assert len(data) < 2 * 1024 * 1024                                     # far under ASAP_MAX_UPLOAD_MB
    if kind == "webp":
        assert len(data) < 64


def test_under_limit_size_is_just_under_the_default_pixel_budget():
    from asap_core.settings import Settings

    w, h = abuse.UNDER
    assert 0.99 * Settings().max_upload_pixels < w * h <= Settings().max_upload_pixels
    assert _header(abuse.image_bomb("tiff", w, h)).size == (w, h)


def test_marked_pngs_differ_and_png_header_is_valid():
    a, b = abuse.png_bomb(40, 30, "L", mark=1), abuse.png_bomb(40, 30, "L", mark=2)
    assert a != b and a.startswith(b"\x89PNG\r\n\x1a\n")
    assert np.asarray(_header(a))[0, 0] == 1


def test_zips_hold_the_claimed_members():
    with zipfile.ZipFile(io.BytesIO(abuse.zip_webp_bombs())) as zf:
        names = zf.namelist()
        assert len(names) == 4 and all(_header(zf.read(n)).size[0] == 16383 for n in names)
    zero = abuse.zip_zero_members()
    with zipfile.ZipFile(io.BytesIO(zero)) as zf:
        infos = zf.infolist()
        assert len(infos) == 40 and all(i.file_size == 1_000_000 < 1024 * 1024 for i in infos)
        assert all(i.filename.endswith(".png") for i in infos)
    assert len(zero) < 100_000                                             # ratio over 400
    with zipfile.ZipFile(io.BytesIO(abuse.zip_traversal())) as zf:
        assert zf.namelist() == list(abuse.TRAVERSAL_NAMES)              # names kept as written, ".." included


def test_grey_png_zip_has_forty_distinct_members():
    import inspect

    data = abuse.zip_grey_pngs(n=40, side=600)                           # the benchmark's 9000² would take a minute
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [zf.read(n) for n in zf.namelist()]
    assert len(members) == 40 and len(set(members)) == 40
    assert {_header(m).size for m in members} == {(600, 600)}
    assert inspect.signature(abuse.zip_grey_pngs).parameters["side"].default == 9000
    one = abuse.png_bomb(9000, 9000, "L", mark=1)                        # one member at the benchmark's size
    assert _header(one).size == (9000, 9000) and 40 * len(one) < 10 * 1024 * 1024


def test_nested_json_is_valid_json_python_cannot_read():
    text = abuse.nested_json(100_000)
    assert text.startswith("[[[") and len(text) == 200_000
    with pytest.raises(RecursionError):
        json.loads(text)


def test_markdown_names_are_storable_and_point_outside():
    from asap_core.storage.bundle import clean_dimension_name

    assert all(clean_dimension_name(n) == n for n in abuse.DIM_MD_NAMES)  # accepted as dimension names
    assert all(any(h in n for h in abuse.OUTSIDE_HOSTS) for n in abuse.DIM_MD_NAMES + (abuse.MD_NAME,))
    assert "/" not in abuse.MD_NAME                                       # stays one file name in a relpath
    assert "](" in abuse.MD_NAME and "![" in abuse.MD_NAME                # a link and an image in Markdown


def test_catalogue_names_are_unique_and_selectable():
    names = [a.name for a in abuse.catalogue()]
    assert len(names) == len(set(names))
    assert {a.name for a in abuse.select(abuse.catalogue(), "bombs")} == {f"bomb_{k}" for k in abuse.OVER}
    with pytest.raises(SystemExit):
        abuse.select(abuse.catalogue(), "no_such_attack")

