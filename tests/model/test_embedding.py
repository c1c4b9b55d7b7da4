"""Embedding stage: same numbers as encoding directly, failures reported, cache respected, bounded prefetch."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asap_core.inputs.imageio import decode_image, read_bytes
from asap_core.model import device as device_mod
from asap_core.model import embedding
from asap_core.model.embedding import crop_uint8, embed_files, normalize, resize_crop_tensors
from asap_core.model.encoder import ClipEncoder
from asap_core.model.preprocess import ClipPreprocessor
from asap_core.settings import reload_settings
from asap_core.storage.cache import RowStore


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir) -> ClipEncoder:
    return ClipEncoder.from_pretrained(str(tiny_clip_dir), device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    """JPEGs of several sizes and aspect ratios, a grey JPEG, a transparent PNG, a tiny one (padding)."""
    root = tmp_path_factory.mktemp("embed_files")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(13):
        w, h = [(48, 48), (90, 40), (40, 90), (300, 200)][i % 4]
        p = root / f"img{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(str(p))
    grey = root / "grey.jpg"
    Image.fromarray(rng.integers(0, 255, (50, 60), dtype=np.uint8), "L").save(grey)
    rgba = root / "alpha.png"
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA").save(rgba)
    tiny = root / "tiny.png"
    Image.fromarray(rng.integers(0, 255, (10, 20, 3), dtype=np.uint8)).save(tiny)
    return paths + [str(grey), str(rgba), str(tiny)]


def _stores(tmp_path, dim: int = 64) -> tuple[RowStore, RowStore]:
    return RowStore(tmp_path, "emb", (dim,)), RowStore(tmp_path, "thumbs")


def _direct(encoder: ClipEncoder, paths: list[str]) -> np.ndarray:
    return encoder.encode(encoder.preprocess([decode_image(read_bytes(p), p) for p in paths])).numpy()


@pytest.mark.parametrize("decoder,workers", [("auto", 0), ("thread", 1), ("thread", 2)])
def test_embeddings_equal_direct_encoding(encoder, files, tmp_path, decoder, workers):
    ids = [f"id{i}" for i in range(len(files))]
    emb, thumbs = _stores(tmp_path)
    failures = embed_files(lambda: encoder, encoder.preprocessor, files, ids, emb, thumbs, batch_size=5,
                           num_workers=workers, decoder=decoder)
    assert failures == []
    np.testing.assert_allclose(emb.get(ids), _direct(encoder, files), atol=1e-5)
    # each id got the thumbnail of its own file (aspect ratio kept, longest side <= 128)
    for path, blob in zip(files, thumbs.get(ids)):
        w, h = Image.open(path).size
        tw, th = Image.open(io.BytesIO(blob)).size
        assert max(tw, th) <= 128 and abs(tw / th - w / h) < 0.1


PROCESS_RUN = """
import sys
from asap_core.storage.cache import RowStore
from asap_core.model.embedding import embed_files
from asap_core.model.encoder import ClipEncoder
model, store, *files = sys.argv[1:]
enc = ClipEncoder.from_pretrained(model, device="cpu")
ids = [f"id{i}" for i in range(len(files))]
failures = embed_files(lambda: enc, enc.preprocessor, files, ids, RowStore(store, "emb", (64,)),
                       RowStore(store, "thumbs", None), batch_size=8, num_workers=1, decoder="process")
assert failures == [], failures
"""


@pytest.mark.slow
def test_process_decoder_gives_the_same_embeddings(encoder, files, tmp_path, tiny_clip_dir):
    """Decode processes are spawned from a clean interpreter, as the CLI does (inside pytest, other tests'
    Streamlit AppTest runs replace ``__main__``, which spawn would re-import in every worker)."""
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "-c", PROCESS_RUN, str(tiny_clip_dir), str(tmp_path), *files],
                       cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ids = [f"id{i}" for i in range(len(files))]
    emb, _ = _stores(tmp_path)
    np.testing.assert_allclose(emb.get(ids), _direct(encoder, files), atol=1e-5)


def test_crop_then_normalize_is_bit_equal_to_preprocessor(files):
    pre = ClipPreprocessor(size=32, crop_size=32)
    for p in files:
        image = decode_image(read_bytes(p), p)
        got = normalize(torch.from_numpy(crop_uint8(image, pre))[None], pre)[0].numpy()
        assert np.array_equal(got, pre.to_array(image)), p


def test_failures_are_reported_and_the_rest_stored(encoder, files, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    paths = [files[0], str(corrupt), files[1], str(tmp_path / "missing.jpg"), str(empty), files[2]]
    ids = [f"id{i}" for i in range(len(paths))]
    emb, thumbs = _stores(tmp_path / "cache")
    failures = embed_files(lambda: encoder, encoder.preprocessor, paths, ids, emb, thumbs, batch_size=2,
                           num_workers=1)
    assert [p for p, _ in failures] == [paths[1], paths[3], paths[4]]
    assert all(reason for _, reason in failures)
    assert emb.missing(ids) == ["id1", "id3", "id4"] and thumbs.missing(ids) == ["id1", "id3", "id4"]
    np.testing.assert_allclose(emb.get(["id0", "id2", "id5"]), _direct(encoder, [paths[0], paths[2], paths[5]]),
                               atol=1e-5)


def test_cached_ids_are_skipped(encoder, files, tmp_path):
    ids = [f"id{i}" for i in range(len(files))]
    emb, thumbs = _stores(tmp_path)
    sentinel = np.full((3, 64), 7.0, np.float32)
    emb.put(ids[:3], sentinel)  # pretend these were embedded before
    seen: list[tuple[int, int]] = []
    embed_files(lambda: encoder, encoder.preprocessor, files, ids, emb, thumbs, batch_size=4, num_workers=0,
                progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, len(files) - 3) and seen[-1] == (len(files) - 3, len(files) - 3)
    assert np.array_equal(emb.get(ids[:3]), sentinel)  # not recomputed
    np.testing.assert_allclose(emb.get(ids[3:]), _direct(encoder, files[3:]), atol=1e-5)

    def must_not_load():
        raise AssertionError("a fully cached run must not load the model")

    assert embed_files(must_not_load, encoder.preprocessor, files, ids, emb, thumbs) == []


@pytest.mark.parametrize("workers,on_demand", [(0, True), (2, True), (1, False), (2, False)])
@pytest.mark.slow
def test_in_flight_batches_are_bounded(encoder, files, tmp_path, monkeypatch, workers, on_demand):
    """Decoding never runs more than ``prefetch`` batches ahead of the batches already stored, and not at
    all ahead when decoding on demand (thread decoder beside a CPU model)."""
    if not on_demand:  # the policy used beside a GPU model, exercised on CPU
        monkeypatch.setattr(embedding, "decodes_on_demand", lambda kind, device: False)
    started: list[int] = []
    real = embedding.decode_batch

    def counting(items, *args, **kw):
        started.append(len(items))
        return real(items, *args, **kw)

    monkeypatch.setattr(embedding, "decode_batch", counting)
    paths = files * 3
    ids = [f"id{i}" for i in range(len(paths))]
    emb, thumbs = _stores(tmp_path)
    ahead: list[int] = []

    def progress(done, total):
        ahead.append(sum(started) - done)

    prefetch, bs = 2, 3
    embed_files(lambda: encoder, encoder.preprocessor, paths, ids, emb, thumbs, batch_size=bs,
                num_workers=workers, prefetch=prefetch, decoder="thread", progress=progress)
    assert sum(started) == len(paths) and not emb.missing(ids)
    assert max(ahead) <= prefetch * bs
    assert (max(ahead) == 0) == on_demand


@pytest.mark.parametrize("on_demand", [True, False])
@pytest.mark.slow
def test_interrupted_run_stops_cleanly_keeps_its_batches_and_resumes(encoder, files, tmp_path, monkeypatch,
                                                                     on_demand):
    """Ctrl-C after the first batch: the KeyboardInterrupt itself comes out (the decoders shut down with
    batches still pending), the finished batch is kept, and a rerun embeds only the rest."""
    if not on_demand:
        monkeypatch.setattr(embedding, "decodes_on_demand", lambda kind, device: False)
    paths = files * 3
    ids = [f"id{i}" for i in range(len(paths))]
    emb, thumbs = _stores(tmp_path)

    def stop(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_files(lambda: encoder, encoder.preprocessor, paths, ids, emb, thumbs, batch_size=3, num_workers=2,
                    prefetch=3, decoder="thread", progress=stop)
    assert len(emb.missing(ids)) == len(paths) - 3
    embed_files(lambda: encoder, encoder.preprocessor, paths, ids, emb, thumbs, batch_size=3, num_workers=2,
                decoder="thread")
    assert not emb.missing(ids)
    np.testing.assert_allclose(emb.get(ids), _direct(encoder, paths), atol=1e-5)


def test_gpu_resize_path_matches_pillow_closely(files):
    """The nvJPEG path's resize/crop (run here on CPU tensors) stays within a few levels of Pillow's."""
    pre = ClipPreprocessor(size=32, crop_size=32)
    images = [decode_image(read_bytes(p), p) for p in files]
    tensors = [torch.from_numpy(np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()) for im in images]
    crops, thumbs = resize_crop_tensors(tensors, pre, thumb_side=16)
    ref = np.stack([crop_uint8(im, pre) for im in images])
    diff = np.abs(crops.numpy().astype(int) - ref.astype(int))
    assert crops.shape == (len(files), 3, 32, 32) and crops.dtype == torch.uint8
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 12
    # no resample needed (shortest side already 24): zero padding to the 32 crop, exactly as the processor
    pad_pre = ClipPreprocessor(size=24, crop_size=32)
    arr = np.random.default_rng(1).integers(0, 255, (36, 24, 3), dtype=np.uint8)
    padded, _ = resize_crop_tensors([torch.from_numpy(arr.transpose(2, 0, 1).copy())], pad_pre, thumb_side=None)
    assert np.array_equal(padded[0].numpy(), crop_uint8(Image.fromarray(arr), pad_pre))
    for im, t in zip(images, thumbs):
        w, h = im.size
        shape = tuple(t.pixels.shape)
        assert shape[0] == 3 and max(shape[1:]) == min(16, max(w, h))
        assert abs(shape[2] / shape[1] - w / h) < 0.2
        assert Image.open(io.BytesIO(t.encode())).size == (shape[2], shape[1])


def test_device_helpers_on_cpu(encoder, monkeypatch):
    assert device_mod.choose_batch_size(encoder) == device_mod.CPU_BATCH_SIZE
    assert device_mod.choose_batch_size(encoder, 7) == 7
    before = torch.get_num_threads()
    try:
        assert device_mod.configure_threads("cpu") == min(before, device_mod.cpu_cores()) == torch.get_num_threads()
        torch.set_num_threads(1)  # an explicit choice is kept
        assert device_mod.configure_threads("cpu") == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    cpu = torch.device("cpu")
    monkeypatch.delenv("ASAP_CPU_BF16", raising=False)
    reload_settings()
    assert device_mod.preferred_dtype(cpu) == torch.float32
    monkeypatch.setenv("ASAP_CPU_BF16", "1")
    reload_settings()
    native = device_mod.cpu_has_native_bf16()
    assert device_mod.preferred_dtype(cpu) == (torch.bfloat16 if native else torch.float32)
    assert device_mod.preferred_dtype("cuda") == torch.bfloat16
    assert embedding.resolve_decoder("auto", cpu) == "thread"
    assert embedding.resolve_decoder("nvjpeg", cpu) == "thread"  # no GPU: falls back
    with pytest.raises(ValueError):
        embedding.resolve_decoder("bogus", cpu)
    assert embedding.default_workers("thread", cores=2) == 2
    assert embedding.decodes_on_demand("thread", cpu)
    assert not embedding.decodes_on_demand("thread", torch.device("cuda"))
    assert not embedding.decodes_on_demand("process", cpu)
    assert embedding.default_workers("process", cores=16) == 15
    assert "CPU" in device_mod.device_name(cpu)


def test_compile_switch(monkeypatch):
    monkeypatch.delenv("ASAP_COMPILE", raising=False)
    reload_settings()
    assert not device_mod.compile_enabled() and device_mod.compile_enabled(True)
    monkeypatch.setenv("ASAP_COMPILE", "1")
    reload_settings()
    assert device_mod.compile_enabled() and not device_mod.compile_enabled(False)
    monkeypatch.setenv("ASAP_COMPILE", "0")
    reload_settings()
    assert not device_mod.compile_enabled()
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "")
    reload_settings()
    assert device_mod.cxx_compiler() is None


def test_failed_compile_warns_and_runs_eagerly(encoder, monkeypatch):
    def broken_compile(model, **kwargs):
        def run(*args, **inputs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    forward = device_mod.compiled_forward(encoder.image_forward, batch_size=4)
    x = torch.randn(3, 3, encoder.image_size, encoder.image_size)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*InvalidCxxCompiler"):
        out = forward(x)
    with torch.no_grad():
        ref = encoder.vision_model(pixel_values=x).image_embeds
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-6)


@pytest.mark.skipif(device_mod.cxx_compiler() is None, reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.slow
def test_compiled_embedding_equals_eager(encoder, files, tmp_path):
    """A real inductor compile through embed_files: same embeddings as the eager run, no fallback warning."""
    import warnings

    ids = [f"id{i}" for i in range(len(files))]
    eager, _ = _stores(tmp_path / "eager")
    embed_files(lambda: encoder, encoder.preprocessor, files, ids, eager, RowStore(tmp_path / "eager", "t"),
                batch_size=5, num_workers=0, compile=False)
    compiled, _ = _stores(tmp_path / "compiled")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")
        failures = embed_files(lambda: encoder, encoder.preprocessor, files, ids, compiled,
                               RowStore(tmp_path / "compiled", "t"), batch_size=5, num_workers=0, compile=True)
    assert failures == []
    np.testing.assert_allclose(compiled.get(ids), eager.get(ids), atol=1e-5)


def _fake_torchvision(monkeypatch) -> list[int]:
    """Install a stand-in ``torchvision.io`` whose ``decode_jpeg`` decodes with Pillow (the real one needs a GPU).

    Like nvJPEG it fails the whole call when one image is bad. Returns the sizes of the calls made.
    """
    import enum
    import sys
    import types

    calls: list[int] = []

    class ImageReadMode(enum.Enum):
        RGB = 3

    def decode_jpeg(data, mode=ImageReadMode.RGB, device="cpu"):
        items = data if isinstance(data, list) else [data]
        calls.append(len(items))
        out = []
        for t in items:
            im = Image.open(io.BytesIO(t.numpy().tobytes()))
            im.load()  # raises on truncated data
            out.append(torch.from_numpy(np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()))
        return out if isinstance(data, list) else out[0]

    tv, tv_io = types.ModuleType("torchvision"), types.ModuleType("torchvision.io")
    tv_io.decode_jpeg, tv_io.ImageReadMode, tv.io = decode_jpeg, ImageReadMode, tv_io
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.io", tv_io)
    return calls


def test_nvjpeg_decoder_orchestration(files, tmp_path, monkeypatch):
    """GPU path logic on CPU with a stand-in decoder: pixel-capped groups, one-by-one retry after a bad
    file, Pillow for non-JPEGs, every crop and thumbnail on the row of its own file."""
    from concurrent.futures import ThreadPoolExecutor

    calls = _fake_torchvision(monkeypatch)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(files[3], "rb").read()[:400])
    paths = files + [str(truncated)]
    pre = ClipPreprocessor(size=32, crop_size=32)
    with ThreadPoolExecutor(2) as pool:
        nv = embedding._NvjpegDecoder(pre, torch.device("cpu"), pool, thumb_side=16, draft_size=None)
        nv.max_pixels = 300 * 200 + 1  # forces several nvJPEG calls per batch
        items = [(i, p, None) for i, p in enumerate(paths)]
        res = nv.finish([nv.read(items[:9]), nv.read(items[9:])])
        res.thumbs = [t.result() if hasattr(t, "result") else t for t in res.thumbs]
        nv.thumb_pool.shutdown()
    assert [p for _, p, _ in res.failed] == [str(truncated)]
    assert sorted(res.rows) == list(range(len(files))) and len(res.thumbs) == len(res.rows)
    assert len(calls) > 2  # several groups, plus the one-by-one retry
    for row, crop, blob in zip(res.rows, res.pixels, res.thumbs):
        image = decode_image(read_bytes(paths[row]), paths[row])
        assert np.abs(crop.numpy().astype(int) - crop_uint8(image, pre).astype(int)).mean() < 3.0
        tw, th = Image.open(io.BytesIO(blob)).size
        assert max(tw, th) <= 16 and abs(tw / th - image.width / image.height) < 0.25


def test_probe_routes_only_plain_jpegs_to_nvjpeg(files, tmp_path):
    rgb = open(files[3], "rb").read()
    assert embedding._probe_jpeg(rgb) == Image.open(files[3]).size
    assert embedding._probe_jpeg(open(files[-1], "rb").read()) is None  # PNG
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: nvJPEG would ignore the orientation
    buf = io.BytesIO()
    Image.open(files[3]).save(buf, "JPEG", exif=exif)
    assert embedding._probe_jpeg(buf.getvalue()) is None
    buf = io.BytesIO()
    Image.open(files[3]).convert("CMYK").save(buf, "JPEG")
    assert embedding._probe_jpeg(buf.getvalue()) is None


def test_fast_decode_follows_the_model_precision(tiny_clip_dir, encoder, files, tmp_path, monkeypatch):
    """JPEG draft decoding only where the model is approximate anyway: bf16 yes, fp32 (exact) no."""
    seen: list = []
    real = embedding.decode_image

    def spy(data, path, draft_size=None):
        seen.append(draft_size)
        return real(data, path, draft_size=draft_size)

    monkeypatch.setattr(embedding, "decode_image", spy)
    bf16 = ClipEncoder.from_pretrained(str(tiny_clip_dir), device="cpu", dtype=torch.bfloat16)
    ids = [f"id{i}" for i in range(4)]
    for enc, want in ((encoder, None), (bf16, bf16.preprocessor.size)):
        seen.clear()
        emb, thumbs = _stores(tmp_path / str(enc.dtype))
        assert embed_files(lambda e=enc: e, enc.preprocessor, files[:4], ids, emb, thumbs, num_workers=0) == []
        assert seen and set(seen) == {want}
    seen.clear()
    emb, thumbs = _stores(tmp_path / "forced")
    embed_files(lambda: bf16, bf16.preprocessor, files[:4], ids, emb, thumbs, num_workers=0, fast_decode=False)
    assert set(seen) == {None}


def test_relevance_batch_size_defaults():
    assert device_mod.relevance_batch_size("cpu") == device_mod.CPU_RELEVANCE_BATCH == 8
    assert device_mod.relevance_batch_size("cuda") == device_mod.GPU_RELEVANCE_BATCH == 128
    assert device_mod.relevance_batch_size("cpu", 3) == 3


def test_compiled_forward_casts_pixels_to_the_model_dtype(tiny_clip_dir, monkeypatch):
    """float32 pixels into a bf16 model (the GPU default) work through the compiled path too."""
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # the wrapper's logic, no inductor
    bf16 = ClipEncoder.from_pretrained(str(tiny_clip_dir), device="cpu", dtype=torch.bfloat16)
    forward = device_mod.compiled_forward(bf16.image_forward, batch_size=4)
    x = torch.randn(3, 3, bf16.image_size, bf16.image_size)
    with torch.no_grad():
        out = forward(x)
        ref = bf16.vision_model(pixel_values=x.to(torch.bfloat16)).image_embeds
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert torch.allclose(out.float(), ref.float(), atol=2e-2, rtol=2e-2)  # padding may change bf16 rounding


def test_compiled_forward_hands_out_the_last_input_without_padding(encoder, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # the wrapper's logic, no inductor
    forward = device_mod.compiled_forward(encoder.image_forward, batch_size=4, with_last_input=True)
    x = torch.randn(3, 3, encoder.image_size, encoder.image_size)
    with torch.no_grad():
        embeds, last = forward(x)
        ref_embeds, ref_last = encoder.image_forward(x, with_last_input=True)
    assert embeds.shape == ref_embeds.shape and last.shape == ref_last.shape  # the pad row is dropped
    assert torch.allclose(embeds, ref_embeds, atol=1e-5) and torch.allclose(last, ref_last, atol=1e-5)


_FAULTS_SCRIPT = """
import resource, torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
from asap_core.model.device import keep_freed_memory
on = keep_freed_memory("cpu")
torch.manual_seed(0)
model = CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=512, num_hidden_layers=1)).eval()
x = torch.randn(32, 3, 224, 224)  # one ViT-B/32-wide layer at the CPU batch size: 20 MB MLP activations
def faults_of_one_batch():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        model(pixel_values=x)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_batch()
print(on, min(faults_of_one_batch() for _ in range(3)))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc tuning is Linux-only")
@pytest.mark.slow
def test_keep_freed_memory_stops_page_faults_on_repeated_batches():
    """Batch after batch, glibc hands the large activations back to the kernel and faults them in afresh
    (~12k page faults per batch for one B/32 layer); with ``keep_freed_memory`` the next batch reuses
    them. Fresh processes: ``mallopt`` is process-wide. Both start from glibc's default 128 KiB mmap
    threshold held fixed (``MALLOC_MMAP_THRESHOLD_``): glibc's own dynamic raise of the threshold depends
    on which thread frees what first, and gave 0 or ~12k faults a batch on runs of the same script."""

    def run(env_value: str | None) -> tuple[str, int]:
        env = {k: v for k, v in os.environ.items() if k != "ASAP_MALLOC_KEEP"}
        env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
        if env_value is not None:
            env["ASAP_MALLOC_KEEP"] = env_value
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], env=env, capture_output=True, text=True,
                             check=True, cwd=str(Path(__file__).resolve().parents[2])).stdout.split()
        return out[0], int(out[1])

    on, faults_on = run(None)
    if on != "True":
        pytest.skip("mallopt not available (not glibc)")
    off, faults_off = run("0")
    assert off == "False"
    assert faults_off > 2000 and faults_on < faults_off // 20
    assert device_mod.keep_freed_memory("cuda") == device_mod._MALLOC_STATE.get("on", False)  # GPU: untouched


def test_last_inputs_that_overflow_float16_are_not_kept(tiny_clip_dir, files, tmp_path):
    """A batch whose last-layer input does not fit float16 is left out of the kept rows (the relevance
    pass then recomputes it from the pixels); its embeddings are stored as always."""
    enc = ClipEncoder.from_pretrained(str(tiny_clip_dir), device="cpu")
    with torch.no_grad():
        enc.vision_model.vision_model.pre_layrnorm.bias.fill_(1e5)  # the residual stream past float16's range
    ids = [f"id{i}" for i in range(4)]
    emb, thumbs = _stores(tmp_path)
    kept = RowStore(tmp_path, "kept", (enc.patch_side ** 2 + 1, enc.vision_model.config.hidden_size))
    assert embed_files(lambda: enc, enc.preprocessor, files[:4], ids, emb, thumbs, batch_size=2, num_workers=0,
                       last_input_store=kept) == []
    assert emb.missing(ids) == [] and np.isfinite(emb.get(ids)).all()
    assert kept.missing(ids) == ids
