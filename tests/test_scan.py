"""Every input layout of DESIGN §2 is recognised by scan_folder."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from asap_core.errors import InputError
from asap_core.inputs.scan import scan_folder

from conftest import SHARED_DATA


def _touch_images(root: Path, relpaths: list[str]) -> None:
    for rel in relpaths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (len(rel) * 7 % 255, 0, 0)).save(p)


def _rows(result) -> dict[str, tuple]:
    df = result.images
    def norm(v):
        return None if pd.isna(v) else v

    return {r.relpath: tuple(norm(v) for v in (r.label, r.generator, r.split, r.source)) for r in df.itertuples()}


def test_plain_real_fake_with_generator_subfolders(tmp_path):
    _touch_images(tmp_path, ["real/a.jpg", "real/ffhq/b.png", "fake/c.jpg", "fake/sdxl/d.webp",
                             "deep/er/fake/midjourney/v6/e.jpg"])
    (tmp_path / "fake" / "notes.txt").write_text("not an image, ignored by extension")
    r = _rows(scan_folder(tmp_path))
    assert r["real/a.jpg"][:2] == ("real", None)
    assert r["real/ffhq/b.png"] == ("real", None, None, "ffhq")
    assert r["fake/c.jpg"][:2] == ("fake", None)
    assert r["fake/sdxl/d.webp"][:2] == ("fake", "sdxl")
    assert r["deep/er/fake/midjourney/v6/e.jpg"][:2] == ("fake", "midjourney")
    assert len(r) == 5


def test_forensynths_layout(tmp_path):
    _touch_images(tmp_path, ["biggan/0_real/a.png", "biggan/1_fake/b.png",
                             "stylegan/car/0_real/c.png", "stylegan/car/1_fake/d.png"])
    res = scan_folder(tmp_path)
    r = _rows(res)
    assert "ForenSynths" in res.layout
    assert r["biggan/1_fake/b.png"][:2] == ("fake", "biggan")
    assert r["stylegan/car/1_fake/d.png"][:2] == ("fake", "stylegan")
    assert r["stylegan/car/0_real/c.png"][0] == "real"


def test_forensynths_with_split_on_top(tmp_path):
    _touch_images(tmp_path, ["test/crn/1_fake/a.png", "test/crn/0_real/b.png"])
    r = _rows(scan_folder(tmp_path))
    assert r["test/crn/1_fake/a.png"][:3] == ("fake", "crn", "test")


def test_genimage_layout(tmp_path):
    _touch_images(tmp_path, ["sdv14/train/ai/a.png", "sdv14/val/nature/b.JPEG", "midjourney/val/ai/c.png"])
    res = scan_folder(tmp_path)
    r = _rows(res)
    assert "GenImage" in res.layout
    assert r["sdv14/train/ai/a.png"][:3] == ("fake", "sdv14", "train")
    assert r["sdv14/val/nature/b.JPEG"][:3] == ("real", None, "val")
    assert r["midjourney/val/ai/c.png"][:3] == ("fake", "midjourney", "val")


def test_cifake_layout(tmp_path):
    _touch_images(tmp_path, ["train/REAL/1.jpg", "train/FAKE/2.jpg", "test/REAL/3.jpg", "test/FAKE/4.jpg"])
    res = scan_folder(tmp_path)
    r = _rows(res)
    assert "CIFAKE" in res.layout
    assert r["train/FAKE/2.jpg"][:3] == ("fake", None, "train")
    assert r["test/REAL/3.jpg"][:3] == ("real", None, "test")
    assert res.n_real == 2 and res.n_fake == 2


def test_csv_manifest(tmp_path):
    _touch_images(tmp_path, ["imgs/a.jpg", "imgs/b.jpg", "imgs/c.jpg"])
    (tmp_path / "labels.csv").write_text(
        "path,label,generator,split\nimgs/a.jpg,real,,train\nimgs/b.jpg,fake,dalle3,val\n"
        "imgs/c.jpg,1,sd,\nimgs/missing.jpg,fake,,\nimgs/a.jpg,maybe,,\n")
    res = scan_folder(tmp_path)
    r = _rows(res)
    assert res.layout == "CSV manifest"
    assert r["imgs/a.jpg"][:3] == ("real", None, "train")
    assert r["imgs/b.jpg"][:3] == ("fake", "dalle3", "val")
    assert r["imgs/c.jpg"][:2] == ("fake", "sd")
    reasons = " | ".join(reason for _, reason in res.skipped)
    assert "line 5: file does not exist" in reasons and "label 'maybe'" in reasons
    # the CSV itself can be passed too
    assert len(scan_folder(tmp_path / "labels.csv").images) == 3


def test_csv_without_label_column_is_not_a_manifest(tmp_path):
    _touch_images(tmp_path, ["real/a.jpg", "fake/g/b.jpg"])
    (tmp_path / "MANIFEST.csv").write_text("relpath,original_path\nreal/a.jpg,x\n")
    res = scan_folder(tmp_path)
    assert res.layout == "real/fake folders" and len(res.images) == 2


def test_unlabelled_folder(tmp_path):
    _touch_images(tmp_path, ["holiday/a.jpg", "b.png"])
    res = scan_folder(tmp_path)
    assert res.layout == "unlabelled folder"
    assert res.images["label"].isna().all() and len(res.images) == 2


def test_empty_and_missing_folder_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="No images found"):
        scan_folder(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_symlink_loop_does_not_hang(tmp_path):
    _touch_images(tmp_path, ["real/a.jpg", "fake/b.jpg"])
    (tmp_path / "real" / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert len(scan_folder(tmp_path).images) == 2


@pytest.mark.skipif(not (SHARED_DATA / "forensynths_ranking").is_dir(), reason="shared data absent")
def test_shared_forensynths_keeps_generators():
    res = scan_folder(SHARED_DATA / "forensynths_ranking")
    fakes = res.images[res.images.label == "fake"]
    assert fakes.generator.nunique() == 10 and len(fakes) == 200
