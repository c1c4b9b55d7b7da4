"""Every input layout of docs/design.md §2 is recognised by scan_folder."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from asap_core.errors import InputError
from asap_core.inputs.scan import (
    BAD_FILE_NAME,
    BAD_FOLDER_NAME,
    LabelConflict,
    is_utf8,
    label_summary_lines,
    scan_folder,
)
from tests.conftest import SHARED_DATA


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
    assert res.layout == "ForenSynths (0_real/1_fake)" and not res.conflicts


def test_forensynths_with_split_on_top(tmp_path):
    _touch_images(tmp_path, ["test/crn/1_fake/a.png", "test/crn/0_real/b.png"])
    r = _rows(scan_folder(tmp_path))
    assert r["test/crn/1_fake/a.png"][:3] == ("fake", "crn", "test")


def test_genimage_layout(tmp_path):
    _touch_images(tmp_path, ["sdv14/train/ai/a.png", "sdv14/val/nature/b.JPEG", "midjourney/val/ai/c.png"])
    res = scan_folder(tmp_path)
    r = _rows(res)
    assert res.layout == "GenImage (nature/ai)" and not res.conflicts
    assert r["sdv14/train/ai/a.png"][:3] == ("fake", "sdv14", "train")
    assert r["sdv14/val/nature/b.JPEG"][:3] == ("real", None, "val")
    assert r["midjourney/val/ai/c.png"][:3] == ("fake", "midjourney", "val")


def test_cifake_layout(tmp_path):
    _touch_images(tmp_path, ["train/REAL/1.jpg", "train/FAKE/2.jpg", "test/REAL/3.jpg", "test/FAKE/4.jpg"])
    res = scan_folder(tmp_path)
    r = _rows(res)
    assert res.layout == "CIFAKE (REAL/FAKE)" and not res.conflicts
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


# ----------------------------------------------------------------------------- real/fake beats other layouts' words

TOPICS = ["city", "interior", "nature", "people"]


def test_real_fake_folders_with_topic_subfolders(tmp_path):
    """``fake/nature/`` is AI images on the topic nature, not GenImage's real class: real/fake words win."""
    _touch_images(tmp_path, [f"{lab}/{t}/{i}.png" for lab in ("real", "fake") for t in TOPICS for i in range(2)])
    res = scan_folder(tmp_path)
    r = _rows(res)
    assert all(v[0] == rel.split("/")[0] for rel, v in r.items()) and len(r) == 16
    assert res.layout == "real/fake folders"
    assert r["fake/nature/0.png"] == ("fake", "nature", None, "nature")
    assert r["real/nature/0.png"] == ("real", None, None, "nature")
    # under fake/ the word nature disagrees; under real/ both say real: no conflict
    assert res.conflicts == [LabelConflict("fake", "fake", "fake/nature", "real", 2)]
    line = res.conflicts[0].describe()
    assert "fake/nature/ (2 files)" in line and "labelled fake" in line and "real/fake folder wins" in line


@pytest.mark.parametrize("rel, expected, conflict", [
    ("real/1_fake/a.png", ("real", None, None, "1_fake"), ("real", "real/1_fake")),
    ("fake/0_real/a.png", ("fake", "0_real", None, "0_real"), ("fake", "fake/0_real")),
    ("real/ai/a.png", ("real", None, None, "ai"), ("real", "real/ai")),
    ("ai/x/real/a.png", ("real", None, None, "x"), ("ai/x/real", "ai")),
    ("genuine/FAKE/a.png", ("fake", None, None, None), ("genuine/FAKE", "genuine")),
    ("fake/synthetic/a.png", ("fake", "synthetic", None, "synthetic"), None),
    ("fake/real/a.png", ("real", None, None, None), ("fake/real", "fake")),
    ("real/train/a.png", ("real", None, "train", None), None),
    ("fake/train/sdxl/a.png", ("fake", "sdxl", "train", "sdxl"), None),
    ("fake/sdv14/train/ai/a.png", ("fake", "sdv14", "train", "sdv14"), None),
    ("real/sdv14/val/ai/a.png", ("real", None, "val", "sdv14"), ("real", "real/sdv14/val/ai")),
])
def test_real_fake_word_wins_over_other_layouts(tmp_path, rel, expected, conflict):
    _touch_images(tmp_path, [rel])
    res = scan_folder(tmp_path)
    assert _rows(res)[rel] == expected
    assert [(c.used_folder, c.other_folder) for c in res.conflicts] == ([conflict] if conflict else [])
    assert all(c.n_files == 1 and c.used_label == expected[0] != c.other_label for c in res.conflicts)


def test_deeper_folder_wins_between_equally_strong_words(tmp_path):
    _touch_images(tmp_path, ["0_real/1_fake/a.png", "fake/real/b.png"])
    res = scan_folder(tmp_path)
    r = _rows(res)
    assert r["0_real/1_fake/a.png"][0] == "fake" and r["fake/real/b.png"][0] == "real"
    assert all("the deeper folder wins" in c.describe() for c in res.conflicts) and len(res.conflicts) == 2


def test_layout_names_every_rule_that_labelled_files(tmp_path):
    _touch_images(tmp_path, ["real/a.png", "fake/b.png", "biggan/0_real/c.png", "biggan/1_fake/d.png",
                             "real/1_fake/e.png"])
    res = scan_folder(tmp_path)
    assert res.layout == "real/fake folders + ForenSynths (0_real/1_fake)"
    assert [c.other_folder for c in res.conflicts] == ["real/1_fake"]


# ----------------------------------------------------------------------------- counts per top folder, summary


def test_label_counts_per_top_folder(tmp_path):
    _touch_images(tmp_path, ["real/a.png", "real/x/b.png", "fake/nature/c.png", "fake/nature/d.png",
                             "fake/e.png", "mixed/real/f.png", "mixed/ai/g.png", "mixed/h.png", "top.png"])
    counts = scan_folder(tmp_path).label_counts()
    assert list(counts.index) == [".", "fake", "mixed", "real"] and counts.index.name == "folder"
    assert list(counts.columns) == ["real", "fake", "unlabelled"]
    assert counts.loc["real"].tolist() == [2, 0, 0]
    assert counts.loc["fake"].tolist() == [0, 3, 0]
    assert counts.loc["mixed"].tolist() == [1, 1, 1]
    assert counts.loc["."].tolist() == [0, 0, 1]


def test_label_summary_lines(tmp_path):
    _touch_images(tmp_path, [f"{lab}/{t}/0.png" for lab in ("real", "fake") for t in TOPICS] + ["m/real/a.png",
                                                                                               "m/b.png"])
    lines = scan_folder(tmp_path).label_summary()
    assert lines == ["Images per top folder:", "  fake/: 4 fake", "  m/: 1 real, 1 unlabelled", "  real/: 4 real",
                     "Folder names that disagree on the label (1):",
                     "  fake/nature/ (1 file): 'fake' says fake, 'nature' says real; labelled fake "
                     "(a real/fake folder wins)"]


def test_label_summary_lines_are_capped():
    counts = pd.DataFrame({"real": range(25), "fake": 1, "unlabelled": 0},
                          index=pd.Index([f"f{i:02d}" for i in range(25)], name="folder"))
    conflicts = [LabelConflict("real", "real", f"real/ai{i}", "fake", 1) for i in range(22)]
    lines = label_summary_lines(counts, conflicts, max_lines=20)
    assert lines[1] == "  f00/: 1 fake" and lines[20] == "  f19/: 19 real, 1 fake"
    assert lines[21] == "  ... and 5 more folders" and lines[-1] == "  ... and 2 more"
    assert len(lines) == 1 + 20 + 1 + 1 + 20 + 1
    assert label_summary_lines(None, []) == []


def test_analyze_report_summary_shows_counts_and_conflicts_after_layout(tmp_path):
    from asap_core.pipeline.analyze import AnalyzeReport

    _touch_images(tmp_path, ["real/nature/a.png", "fake/nature/b.png", "fake/city/c.png"])
    scan = scan_folder(tmp_path)
    report = AnalyzeReport(tmp_path / "bundle", scan.layout, 3, 3, label_counts=scan.label_counts(),
                           conflicts=scan.conflicts)
    lines = report.summary().splitlines()
    at = lines.index("Layout: real/fake folders")
    assert lines[at + 1:at + 6] == ["Images per top folder:", "  fake/: 2 fake", "  real/: 1 real",
                                    "Folder names that disagree on the label (1):",
                                    "  " + scan.conflicts[0].describe()]
    assert lines[at + 6].startswith("Images found: 3")


# ----------------------------------------------------------------------------- names that are not UTF-8


def _write_png(path: bytes) -> None:
    with open(path, "wb") as fh:
        Image.new("RGB", (8, 8)).save(fh, format="PNG")


def _bytes_dir(folder: Path, *names: bytes) -> bytes:
    d = os.path.join(os.fsencode(str(folder)), *names)
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:  # a file system that refuses non-UTF-8 names cannot hold such files either
        pytest.skip("file system does not accept non-UTF-8 names")
    return d


def test_non_utf8_file_and_folder_names_are_skipped(tmp_path):
    _touch_images(tmp_path, ["real/ok.png", "fake/sd/ok.png"])
    _write_png(os.path.join(_bytes_dir(tmp_path, b"real"), b"caf\xe9.png"))
    _write_png(os.path.join(_bytes_dir(tmp_path, b"fake", b"d\xe9j\xe0"), b"x.png"))
    res = scan_folder(tmp_path)
    assert sorted(res.images.relpath) == ["fake/sd/ok.png", "real/ok.png"]
    skipped = dict(res.skipped)
    assert skipped == {str(tmp_path / "real" / "caf\\xe9.png"): BAD_FILE_NAME,
                       str(tmp_path / "fake" / "d\\xe9j\\xe0" / "x.png"): BAD_FOLDER_NAME}
    assert "convmv" in BAD_FILE_NAME and all(is_utf8(p) and is_utf8(why) for p, why in res.skipped)
    pd.DataFrame(res.skipped, columns=["path", "reason"]).to_parquet(tmp_path / "skipped.parquet")


def test_non_utf8_root_is_a_clear_error(tmp_path):
    root = _bytes_dir(tmp_path, b"d\xe9j\xe0")
    _write_png(os.path.join(_bytes_dir(tmp_path, b"d\xe9j\xe0", b"real"), b"a.png"))
    with pytest.raises(InputError, match="not valid UTF-8") as err:
        scan_folder(os.fsdecode(root))
    assert is_utf8(str(err.value))


def test_manifest_rows_that_are_not_utf8_are_skipped(tmp_path):
    _touch_images(tmp_path, ["imgs/a.png", "imgs/b.png", "imgs/c.png"])
    _write_png(os.path.join(_bytes_dir(tmp_path, b"imgs"), b"caf\xe9.png"))
    (tmp_path / "labels.csv").write_bytes(  # written in Latin-1, not UTF-8
        b"path,label,generator\nimgs/caf\xe9.png,fake,sd\nimgs/a.png,real,\nimgs/b.png,fake,g\xe9n\n"
        b"imgs/c.png,fake,sd\nimgs/\xe9t\xe9.png,fake,\n")
    res = scan_folder(tmp_path)
    assert res.layout == "CSV manifest"
    assert sorted(res.images.relpath) == ["imgs/a.png", "imgs/c.png"]
    reasons = {Path(p).name: why for p, why in res.skipped}
    assert reasons["caf\\xe9.png"] == "labels.csv line 2: " + BAD_FILE_NAME + \
        ", then write its new name in the CSV, saved as UTF-8"
    assert reasons["b.png"] == "labels.csv line 4: text is not valid UTF-8; save the CSV as UTF-8"
    assert reasons["\\xe9t\\xe9.png"].startswith("labels.csv line 6: text is not valid UTF-8")
    assert all(is_utf8(p) and is_utf8(why) for p, why in res.skipped)
