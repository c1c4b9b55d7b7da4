"""ClipPreprocessor equals transformers' CLIP image processor within 1e-2 on every pixel."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from asap_core.inputs.imageio import decode_image
from asap_core.model.preprocess import ClipPreprocessor, resize_output_size

try:  # transformers >= 5: what CLIPImageProcessor() falls back to without torchvision
    from transformers import CLIPImageProcessorPil as RefProcessor
except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL/numpy one
    from transformers import CLIPImageProcessor as RefProcessor

SIZES = [(1, 1), (17, 300), (300, 17), (640, 480), (480, 640), (224, 224), (1000, 333), (33, 31)]
MODES = ["RGB", "L", "LA", "RGBA", "P", "P+transparency", "CMYK", "I;16"]
CONFIGS = {
    "default-224": {},
    "size32-crop32": {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}},
    "size24-crop32-pads": {"size": {"shortest_edge": 24}, "crop_size": {"height": 32, "width": 32}},
}
_REFS: dict[str, object] = {}
LEVEL = 1 / (255 * min(ClipPreprocessor().std))  # one uint8 level after normalisation: 0.0150


def _reference(name: str):
    if name not in _REFS:
        _REFS[name] = RefProcessor(**CONFIGS[name])
    return _REFS[name]


def _ours(name: str) -> ClipPreprocessor:
    ref = _reference(name)
    return ClipPreprocessor(
        size=ref.size["shortest_edge"],
        crop_size=ref.crop_size["height"],
        mean=tuple(ref.image_mean),
        std=tuple(ref.image_std),
    )


def make_input(w: int, h: int, mode: str, seed: int = 0) -> Image.Image:
    """Random-noise image (the hardest case for resampling) in ``mode``."""
    rng = np.random.default_rng(seed + 7919 * w + h)
    a = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    if mode == "RGB":
        return Image.fromarray(a[..., :3])
    if mode == "L":
        return Image.fromarray(a[..., 0])
    if mode == "LA":
        return Image.fromarray(a[..., :2], "LA")
    if mode == "RGBA":
        return Image.fromarray(a, "RGBA")
    if mode.startswith("P"):
        im = Image.fromarray(a[..., 0] % 64, "P")
        im.putpalette(rng.integers(0, 256, 64 * 3, dtype=np.uint8).tobytes())
        if mode == "P+transparency":  # index 5 is transparent: composited on white
            im.info["transparency"] = 5
        return im
    if mode == "CMYK":
        return Image.frombytes("CMYK", (w, h), a.tobytes())
    if mode == "I;16":  # 16-bit PNG bytes through decode_image (raw I;16 is clipped by Pillow/HF)
        deep = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        buf = io.BytesIO()
        Image.fromarray(deep).save(buf, "PNG")
        return decode_image(buf.getvalue(), "deep.png")
    raise ValueError(mode)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_parity_with_clip_image_processor(config, mode, size):
    image = make_input(*size, mode)
    expected = _reference(config)([image], return_tensors="np")["pixel_values"][0]
    pre = _ours(config)
    got = pre.to_array(image)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    assert_parity(got, expected, pre.crops_before_resizing(*size))


def assert_parity(got: np.ndarray, expected: np.ndarray, crops_first: bool) -> None:
    """Within 1e-2 everywhere; strips resized crop-first (17x300 here) within two uint8 levels on random
    noise (one on smooth images), and beyond 1e-2 on under 1 % of the values (tests/inputs/test_hostile_inputs.py)."""
    diff = np.abs(got - expected)
    if not crops_first:
        assert diff.max() < 1e-2
    else:
        assert diff.max() < 2 * LEVEL + 1e-4 and (diff > 1e-2).mean() < 1e-2


def test_batch_and_call_match_reference():
    images = [make_input(w, h, m, seed=i) for i, (w, h, m) in enumerate(
        [(640, 480, "RGB"), (17, 300, "L"), (50, 50, "RGBA"), (224, 224, "RGB")])]
    expected = _reference("default-224")(images, return_tensors="np")["pixel_values"]
    pre = _ours("default-224")
    batch = pre.batch(images)
    assert batch.shape == (4, 3, 224, 224) and batch.dtype == np.float32
    for im, got, ref in zip(images, batch, expected):
        assert_parity(got, ref, pre.crops_before_resizing(*im.size))
    tensor = pre(images)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    assert torch.equal(tensor, torch.from_numpy(batch))
    assert np.array_equal(pre.to_array(images[1]), batch[1])


def test_resize_output_size_matches_transformers():
    from transformers.image_transforms import get_resize_output_image_size

    rng = np.random.default_rng(0)
    for w, h in list(rng.integers(1, 5000, (200, 2))) + [(1, 1), (3, 7), (7, 3), (224, 10000)]:
        for short in (24, 32, 224, 336):
            dummy = np.zeros((1, int(h), int(w)), dtype=np.uint8)  # channels-first
            ref_h, ref_w = get_resize_output_image_size(
                dummy, short, default_to_square=False, input_data_format="channels_first")
            assert resize_output_size(int(w), int(h), short) == (ref_w, ref_h)


def test_padding_when_crop_exceeds_size():
    """size 24 < crop 32: the centre crop zero-pads, i.e. pixel 0 before normalisation."""
    pre = ClipPreprocessor(size=24, crop_size=32)
    arr = pre.to_array(Image.new("RGB", (24, 24), (255, 255, 255)))
    black = -np.asarray(pre.mean) / np.asarray(pre.std)
    white = (1 - np.asarray(pre.mean)) / np.asarray(pre.std)
    np.testing.assert_allclose(arr[:, 0, 0], black, atol=1e-5)
    np.testing.assert_allclose(arr[:, 4, 4], white, atol=1e-5)
    np.testing.assert_allclose(arr[:, 27, 27], white, atol=1e-5)
    np.testing.assert_allclose(arr[:, 28, 28], black, atol=1e-5)


def test_from_pretrained_reads_saved_processor(tmp_path):
    RefProcessor(size={"shortest_edge": 48}, crop_size={"height": 40, "width": 40},
                 image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(tmp_path)
    pre = ClipPreprocessor.from_pretrained(tmp_path)
    assert (pre.size, pre.crop_size) == (48, 40)
    np.testing.assert_allclose(pre.mean, [0.5, 0.4, 0.3])
    np.testing.assert_allclose(pre.std, [0.2, 0.25, 0.3])
    assert pre.version != ClipPreprocessor().version
    fallback = ClipPreprocessor.from_pretrained(tmp_path / "missing", image_size=32)
    assert (fallback.size, fallback.crop_size) == (32, 32)
    image = make_input(70, 50, "RGB")
    ref = RefProcessor.from_pretrained(tmp_path)([image], return_tensors="np")["pixel_values"][0]
    assert np.abs(pre.to_array(image) - ref).max() < 1e-2


def test_frozen_and_hashable():
    pre = ClipPreprocessor()
    with pytest.raises(AttributeError):
        pre.size = 10  # type: ignore[misc]
    assert pre == ClipPreprocessor() and hash(pre) == hash(ClipPreprocessor())
