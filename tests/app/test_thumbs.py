"""``glue.data.thumbs``: thumbnails at the width shown, as JPEG data URIs shared by every session; the shared
cache may start over at any time without a caller losing an image."""
from __future__ import annotations

import base64
import io

from PIL import Image

from app_pages.glue import data as D
from asap_core.storage.bundle import Bundle
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)


def _width(uri: str) -> int:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).width


def test_thumbs_at_the_width_shown_once_for_every_caller(tiny_bundle, monkeypatch):  # noqa: F811
    b = Bundle.open(tiny_bundle)
    a, c = b.images["image_id"].tolist()[:2]
    first = D.thumbs(b, [a, a, c], 56)
    assert len(first) == 3 and first[0] == first[1] != first[2]
    assert all(_width(u) <= 56 for u in first)                       # the tiny bundle keeps 48 px thumbnails
    assert _width(D.thumbs(b, [a], 24)[0]) == 24
    shared = D._small_thumbs(*D.ref(b))
    assert shared[(a, 56)] == first[0]                                # kept for the next caller
    monkeypatch.setattr(D, "SMALL_THUMBS_MAX", 1)                     # full: the cache starts over
    again = D.thumbs(b, [a, c, a], 40)                               # a miss: cleared, then filled
    assert again[0] == again[2] != again[1] and all(_width(u) <= 40 for u in again)
    assert set(shared) == {(a, 40), (c, 40)}
