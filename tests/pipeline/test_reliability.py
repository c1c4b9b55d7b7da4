"""Messy folders, interruptions (SIGKILL) and hosted-mode rules."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asap_core.cli import main
from asap_core.errors import BundleError, ImageLoadError, InputError
from asap_core.hosting import BUDGET_WINDOW_S, HostedPolicy, WorkSlots, check_bundle_files
from asap_core.pipeline.analyze import AnalyzeOptions, analyze
from asap_core.settings import reload_settings
from asap_core.storage.bundle import Bundle
from asap_core.storage.cache import RowStore
from tests.conftest import make_image

REPO = Path(__file__).resolve().parents[2]


def build_messy_folder(root: Path) -> tuple[set[str], set[str]]:
    """Every kind of bad input file plus good images; returns (good names, bad names)."""
    rng = np.random.default_rng(0)
    real, fake = root / "real", root / "fake" / "gen x"
    real.mkdir(parents=True)
    fake.mkdir(parents=True)
    good = set()
    for i in range(8):
        make_image(rng, False).save(real / f"r{i}.jpg")
        make_image(rng, True).save(fake / f"f{i}.png")
        good |= {f"r{i}.jpg", f"f{i}.png"}
    base = make_image(rng, False, 40)
    base.convert("CMYK").save(real / "cmyk.jpg")
    Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257).save(real / "sixteen_bit.png")
    base.convert("P", palette=Image.ADAPTIVE).save(real / "palette.png")
    rgba = make_image(rng, True, 40).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(fake / "rgba.png")
    frames = [make_image(rng, True, 32) for _ in range(3)]
    frames[0].save(fake / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(real / "one_pixel.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    make_image(rng, False, 40).save(real / "rotated.jpg", exif=exif)
    make_image(rng, False).save(real / "naïve name ünïcode.jpg")
    good |= {"cmyk.jpg", "sixteen_bit.png", "palette.png", "rgba.png", "animated.gif", "one_pixel.png",
             "rotated.jpg", "naïve name ünïcode.jpg"}
    (real / "zero.jpg").write_bytes(b"")
    data = (real / "r0.jpg").read_bytes()
    (real / "truncated.jpg").write_bytes(data[: len(data) // 2])
    png = (fake / "f0.png").read_bytes()
    (fake / "truncated.png").write_bytes(png[: len(png) // 2])
    (fake / "text.jpg").write_text("this is a text file with an image name")
    Image.new("1", (14000, 13000)).save(fake / "bomb.png")  # 182 Mpx: over twice Pillow's limit
    (real / "loop_a.jpg").symlink_to(real / "loop_b.jpg")
    (real / "loop_b.jpg").symlink_to(real / "loop_a.jpg")
    (fake / "conflict.jpg").write_bytes((real / "r3.jpg").read_bytes())  # same bytes, other label
    locked = real / "locked.jpg"
    make_image(rng, False).save(locked)
    locked.chmod(0)
    bad = {"zero.jpg", "truncated.jpg", "truncated.png", "text.jpg", "bomb.png", "loop_a.jpg", "loop_b.jpg",
           "conflict.jpg"}
    if os.access(locked, os.R_OK):  # root reads anything: then it is a good image
        good.add("locked.jpg")
    else:
        bad.add("locked.jpg")
    return good, bad


@pytest.mark.slow
def test_messy_folder_completes_and_names_every_bad_file(tmp_path, tiny_clip_dir):
    good, bad = build_messy_folder(tmp_path / "data")
    report = analyze(tmp_path / "data", tmp_path / "b", AnalyzeOptions(
        model=str(tiny_clip_dir), cache_dir=str(tmp_path / "cache"), num_workers=1, projection_samples=8))
    skipped = {Path(p).name: reason for p, reason in report.skipped}
    # the conflict pair: whichever of the two came second is reported
    if "conflict.jpg" not in skipped:
        bad = (bad - {"conflict.jpg"}) | {"r3.jpg"}
        good = (good - {"r3.jpg"}) | {"conflict.jpg"}
    assert set(skipped) == bad
    assert "empty" in skipped["zero.jpg"] and "truncated" in skipped["truncated.png"]
    assert "not an image" in skipped["text.jpg"] and "decompression bomb" in skipped["bomb.png"]
    assert "loop" in skipped["loop_a.jpg"]
    assert "label conflict" in skipped["conflict.jpg" if "conflict.jpg" in skipped else "r3.jpg"]
    b = Bundle.open(report.bundle)
    assert set(b.images.path.map(lambda p: Path(p).name)) == good
    assert {Path(s["path"]).name for s in b.meta["skipped"]} == bad
    summary = report.summary()
    for name in bad:
        assert name in summary


def _run_cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "asap_core", "analyze", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


KILL_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_clip_dir, small_folder):
    """An uninterrupted run of the same command, in this process (only the killed run needs its own process,
    and each one costs a cold start of torch): (bundle path, cache path)."""
    tmp = tmp_path_factory.mktemp("ref")
    common = ["--model", str(tiny_clip_dir), "--batch-size", "8", "--workers", "0"]
    assert main(["analyze", str(small_folder), "--out", str(tmp / "ref"), "--cache-dir", str(tmp / "ref-cache"),
                 *common]) == 0
    return tmp / "ref", tmp / "ref-cache"


@pytest.mark.parametrize("point", ["first-batch", "after-embedding", "after-layout"])
@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_run(point, tmp_path, tiny_clip_dir, small_folder, reference_run):
    # the killed run computes with this process's torch threads: the reference and the rerun run here, and
    # what the killed run cached (projection, distiller) must be what they would have computed
    env = {**KILL_ENV, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    workers = "1" if point == "first-batch" else "0"  # one run with a decode process, killed with it
    common = ["--model", str(tiny_clip_dir), "--batch-size", "8", "--workers", workers]
    ref_bundle, ref_cache = reference_run
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = _run_cli([str(small_folder), "--out", str(out), "--cache-dir", str(cache), *common], env)
    shards = lambda: list(cache.glob("emb-*/[!.]*.parquet"))
    cond = {
        "first-batch": lambda: len(shards()) >= 1,
        "after-embedding": lambda: (cache / "distiller").is_dir() or (cache / "projection").is_dir(),
        "after-layout": lambda: (cache / "map2d").is_dir(),
    }[point]
    reached = _wait_for(cond, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not reached:
        pytest.skip(f"run finished before reaching '{point}' on this machine")
    if out.exists():  # killed after the rename: then it must be complete
        Bundle.open(out)
    else:
        with pytest.raises(BundleError):
            Bundle.open(out)
    done_before = len(shards())
    # the rerun in this process: what it resumes from is the killed process's cache, whatever runs it
    assert main(["analyze", str(small_folder), "--out", str(out), "--cache-dir", str(cache), *common]) == 0
    a, b = Bundle.open(ref_bundle), Bundle.open(out)
    assert a.images.image_id.tolist() == b.images.image_id.tolist()
    from asap_core.pipeline.stages import embedding_store_name

    name = embedding_store_name(a.encoder_info.cache_key, torch.float32)
    ea = RowStore(ref_cache, name, (64,)).get(a.images.image_id.tolist())
    eb = RowStore(cache, name, (64,)).get(b.images.image_id.tolist())
    np.testing.assert_allclose(ea, eb, atol=1e-6)
    np.testing.assert_allclose(a.images.p_fake, b.images.p_fake, atol=1e-5)
    # the rerun embedded only what the killed run had not stored: 48 images in batches of 8 = 6 shards
    assert len(shards()) - done_before == 6 - done_before


# ---------------------------------------------------------------- hosted mode
@pytest.fixture()
def policy(tmp_path, monkeypatch):
    root = tmp_path / "bundles"
    (root / "faces").mkdir(parents=True)
    (root / "faces" / "bundle.json").write_text("{}")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "bundle.json").write_text("{}")
    (root / "escape").symlink_to(tmp_path / "secret", target_is_directory=True)
    monkeypatch.setenv("ASAP_HOSTED", "1")
    monkeypatch.setenv("ASAP_BUNDLE_ROOT", str(root))
    monkeypatch.setenv("ASAP_MODEL_ALLOWLIST", "openai/clip-vit-base-patch32, openai/clip-vit-large-patch14")
    monkeypatch.setenv("ASAP_MAX_UPLOAD_MB", "1")
    monkeypatch.setenv("ASAP_RELEVANCE_BUDGET", "10")
    monkeypatch.setenv("ASAP_CACHE_DIR", str(tmp_path / "cache"))  # the budgets' state store lives here
    reload_settings()
    return HostedPolicy.from_settings()


def test_hosted_paths_cannot_escape(policy, tmp_path):
    assert policy.list_bundles() == ["escape", "faces"] or policy.list_bundles() == ["faces"]
    assert policy.resolve_bundle("faces") == (tmp_path / "bundles" / "faces").resolve()
    for name in ["../secret", "/etc", str(tmp_path / "secret"), "faces/../../secret", "~root", "escape", "C:x", ""]:
        with pytest.raises(InputError):
            policy.resolve_bundle(name)


def test_hosted_models_only_from_allowlist(policy):
    assert policy.check_model("openai/clip-vit-large-patch14") == "openai/clip-vit-large-patch14"
    with pytest.raises(InputError, match="not offered"):
        policy.check_model("evil/remote-code-model")


def test_hosted_uploads_checked(policy):
    import io

    buf = io.BytesIO()
    make_image(np.random.default_rng(0), True).save(buf, "PNG")
    assert policy.check_upload("x.png", buf.getvalue()).size == (48, 48)
    with pytest.raises(InputError, match="over the 1 MB limit"):
        policy.check_upload("big.png", b"\x89PNG" + b"0" * (2 * 1024 * 1024))
    with pytest.raises(InputError, match="not an image type"):
        policy.check_upload("run.exe", b"MZ")
    with pytest.raises(ImageLoadError, match="not an image"):
        policy.check_upload("fake.jpg", b"<html>hello</html>")


def test_hosted_refuses_pickle_bearing_bundle(policy, tmp_path):
    faces = tmp_path / "bundles" / "faces"
    (faces / "model").mkdir()
    (faces / "model" / "distiller.safetensors").write_bytes(b"x")
    check_bundle_files(faces)
    np.save(faces / "model" / "numbers.npy", np.arange(4))  # plain arrays are fine
    check_bundle_files(faces)
    np.save(faces / "model" / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match="pickled code"):
        policy.resolve_bundle("faces")
    (faces / "model" / "objects.npy").unlink()
    (faces / "model" / "extra.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(BundleError, match="pickled code"):
        policy.resolve_bundle("faces")


def test_hosted_relevance_budget(policy):
    policy.charge_relevance("s1", 6, now=1000.0)
    policy.charge_relevance("s2", 10, now=1000.0)
    with pytest.raises(InputError, match="used 6 of the 10"):
        policy.charge_relevance("s1", 5, now=2000.0)
    policy.charge_relevance("s1", 4, now=2000.0)                    # what is left still fits
    with pytest.raises(InputError, match="used 10 of the 10"):
        policy.charge_relevance("s1", 1, now=1000.0 + BUDGET_WINDOW_S - 1)
    policy.charge_relevance("s1", 10, now=1000.0 + BUDGET_WINDOW_S)  # a day later the budget is renewed


def test_work_slots_let_n_run_and_the_rest_wait():
    import threading

    slots = WorkSlots(1)
    started, release, waited = threading.Event(), threading.Event(), []

    def first():
        with slots.hold(5):
            started.set()
            release.wait(5)

    t = threading.Thread(target=first)
    t.start()
    started.wait(5)
    with pytest.raises(InputError, match="busy"):                    # nothing frees within the timeout
        with slots.hold(0.05, waited.append):
            pass
    assert waited == [1] and slots.waiting == 0 and slots.running == 1
    release.set()
    t.join(5)
    with slots.hold(1, waited.append):                               # free again: no wait
        assert slots.running == 1
    assert waited == [1] and slots.running == 0


def test_hosted_mode_needs_a_root(monkeypatch):
    monkeypatch.delenv("ASAP_BUNDLE_ROOT", raising=False)
    reload_settings()
    with pytest.raises(InputError, match="ASAP_BUNDLE_ROOT"):
        HostedPolicy.from_settings()


def test_no_trust_remote_code_anywhere():
    src = "\n".join(p.read_text() for p in (REPO / "asap_core").rglob("*.py"))
    assert "trust_remote_code=True" not in src
