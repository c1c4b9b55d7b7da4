"""A bundle's models come from ``method.bundle_models``: the distiller loaded once per folder and again when its
files change, the encoder from the one factory (or the one given), the cache key of both."""
from __future__ import annotations

import shutil

import pytest
import torch

from asap_core.errors import ModelLoadError
from asap_core.method import bundle_models as bm
from asap_core.method.distiller import Distiller
from asap_core.model import factory
from asap_core.storage import schema as S
from asap_core.storage.bundle import Bundle
from tests.conftest_app import tiny_bundle  # noqa: F401  (fixture)


def test_the_distiller_is_loaded_once_per_folder_and_again_when_rewritten(tiny_bundle, tmp_path):  # noqa: F811
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    first = bm.bundle_distiller(Bundle.open(copy))
    assert bm.bundle_distiller(Bundle.open(copy)) is first  # two opens of one folder share it
    on_disk = Distiller.from_pretrained(copy / S.MODEL_DIR)
    assert first.fingerprint == on_disk.fingerprint
    with torch.no_grad():
        on_disk.head.bias.add_(1.0)  # other weights, written in place as a new analysis would
    on_disk.save_pretrained(copy / S.MODEL_DIR)
    again = bm.bundle_distiller(Bundle.open(copy))
    assert again is not first and again.fingerprint == on_disk.fingerprint != first.fingerprint
    shutil.rmtree(copy / S.MODEL_DIR)
    (copy / S.MODEL_DIR).mkdir()
    with pytest.raises(ModelLoadError):  # Bundle.open refuses such a folder; a Bundle made by hand is not checked
        bm.bundle_distiller(Bundle(copy, {}))


def test_models_and_key_use_the_given_encoder_else_the_factory(tiny_bundle, tiny_encoder, monkeypatch):  # noqa: F811
    b = Bundle.open(tiny_bundle)
    asked: list[str] = []
    monkeypatch.setattr(factory, "load_encoder", lambda model: asked.append(model) or tiny_encoder)
    enc, distiller = bm.bundle_models(b, tiny_encoder)
    assert enc is tiny_encoder and distiller is bm.bundle_distiller(b) and asked == []  # given: nothing loaded
    assert bm.bundle_models(b)[0] is tiny_encoder and asked == [b.encoder_info.model_id]  # else the bundle's CLIP
    key = bm.bundle_model_key(b)
    assert key == f"{b.encoder_info.cache_key}-{distiller.fingerprint}" and asked == [b.encoder_info.model_id]
    assert bm.bundle_model_key(b, tiny_encoder).startswith(f"{tiny_encoder.cache_key}-")
