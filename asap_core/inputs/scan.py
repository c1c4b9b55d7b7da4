"""Find images and their labels in a folder: one rule covers every supported layout.

Layouts (DESIGN §2): plain ``real/`` + ``fake/[<generator>/]`` at any depth; ForenSynths
``<generator>/[<class>/]0_real|1_fake``; GenImage ``<generator>/{train,val}/{nature,ai}``; CIFAKE
``{train,test}/{REAL,FAKE}``; a CSV manifest ``path,label[,generator][,split]``; unlabelled folders.

The rule: the deepest folder whose name is a label word sets the label; a folder named train/val/test
sets the split; the generator is the folder right under the label folder if there is one, else the
first non-split folder above it. For real images that name is kept as ``source`` (e.g. ``real/ffhq``).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import InputError
from .imageio import IMAGE_EXTENSIONS
REAL_WORDS = frozenset({"real", "0_real", "nature", "authentic", "genuine"})
FAKE_WORDS = frozenset({"fake", "1_fake", "ai", "synthetic", "generated"})
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
LABEL_VALUES = {"real": "real", "0": "real", "fake": "fake", "1": "fake", "ai": "fake", "nature": "real"}
COLUMNS = ["path", "relpath", "label", "generator", "source", "split"]


@dataclass
class ScanResult:
    """``images``: one row per image file (columns ``COLUMNS``); ``skipped``: ``(path, reason)`` pairs."""

    root: Path
    images: pd.DataFrame
    layout: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_real(self) -> int:
        return int((self.images["label"] == "real").sum())

    @property
    def n_fake(self) -> int:
        return int((self.images["label"] == "fake").sum())


def _label_of(parts: list[str]) -> tuple[str | None, int]:
    """(label, index of the deepest label folder) from folder names, or (None, -1)."""
    for i in range(len(parts) - 1, -1, -1):
        low = parts[i].lower()
        if low in REAL_WORDS:
            return "real", i
        if low in FAKE_WORDS:
            return "fake", i
    return None, -1


def parse_parts(parts: list[str]) -> dict[str, str | None]:
    """Label, generator/source and split from the folder names above one image (root first)."""
    label, at = _label_of(parts)
    split = next((SPLIT_WORDS[p.lower()] for p in parts if p.lower() in SPLIT_WORDS), None)
    source = None
    if at >= 0:
        below = parts[at + 1:]
        above = [p for p in parts[:at] if p.lower() not in SPLIT_WORDS]
        source = below[0] if below else (above[0] if above else None)
    return {"label": label, "source": source, "split": split,
            "generator": source if label == "fake" else None}


def _layout_name(parts_seen: set[str]) -> str:
    low = {p.lower() for p in parts_seen}
    if low & {"0_real", "1_fake"}:
        return "ForenSynths (0_real/1_fake)"
    if low & {"nature", "ai"}:
        return "GenImage (nature/ai)"
    if {"REAL", "FAKE"} & parts_seen:
        return "CIFAKE (REAL/FAKE)"
    if low & (REAL_WORDS | FAKE_WORDS):
        return "real/fake folders"
    return "unlabelled folder"


def _walk_images(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files below ``root`` (hidden entries skipped, symlinked folders not followed)."""
    found: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=lambda e: skipped.append(
            (str(e.filename), f"folder cannot be read ({e.strerror})"))):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(p)
    return found, skipped


def find_manifest(root: Path) -> Path | None:
    """A CSV in ``root`` whose header has ``path`` and ``label`` columns, or ``root`` itself if it is one."""
    candidates = [root] if root.is_file() else sorted(root.glob("*.csv"))
    for c in candidates:
        try:
            with open(c, newline="", encoding="utf-8-sig") as fh:
                header = {h.strip().lower() for h in next(csv.reader(fh), [])}
        except (OSError, UnicodeDecodeError):
            continue
        if {"path", "label"} <= header:
            return c
    return None


def scan_manifest(csv_path: Path) -> ScanResult:
    """Rows of a ``path,label[,generator][,split]`` CSV; paths relative to the CSV's folder."""
    base = csv_path.parent
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    df.columns = [c.strip().lower() for c in df.columns]
    rows, skipped = [], []
    for n, r in enumerate(df.to_dict("records"), start=2):
        p = Path(r["path"].strip())
        full = p if p.is_absolute() else base / p
        label = LABEL_VALUES.get(r["label"].strip().lower()) if r["label"].strip() else None
        if r["label"].strip() and label is None:
            skipped.append((str(full), f"{csv_path.name} line {n}: label '{r['label']}' is not real/fake/0/1"))
            continue
        if not full.is_file():
            skipped.append((str(full), f"{csv_path.name} line {n}: file does not exist"))
            continue
        gen = (r.get("generator") or "").strip() or None
        rows.append({"path": str(full), "relpath": os.path.relpath(full, base), "label": label,
                     "generator": gen if label == "fake" else None, "source": gen,
                     "split": SPLIT_WORDS.get((r.get("split") or "").strip().lower())})
    return ScanResult(base, pd.DataFrame(rows, columns=COLUMNS), "CSV manifest", skipped)


def scan_folder(root: str | Path) -> ScanResult:
    """Find the images under ``root`` (a folder or a CSV manifest) with labels, generators and splits.

    Raises ``InputError`` if ``root`` does not exist or holds no image.
    """
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise InputError(f"{root} does not exist.", "pass the folder that holds your images.")
    manifest = find_manifest(root)
    if manifest is not None:
        result = scan_manifest(manifest)
    else:
        if root.is_file():
            raise InputError(f"{root} is a file, not a folder or a CSV manifest with path,label columns.",
                             "pass a folder of images, or a CSV with columns path,label[,generator][,split].")
        files, skipped = _walk_images(root)
        rows, parts_seen = [], set()
        for f in files:
            parts = list(f.relative_to(root).parts[:-1])
            parts_seen.update(parts)
            rows.append({"path": str(f), "relpath": str(f.relative_to(root)), **parse_parts(parts)})
        result = ScanResult(root, pd.DataFrame(rows, columns=COLUMNS), _layout_name(parts_seen), skipped)
    if result.images.empty:
        raise InputError(
            f"No images found in {root}.",
            "put images (JPEG, PNG, WebP, BMP, TIFF, GIF) in real/ and fake/ subfolders "
            "(or 0_real/1_fake, nature/ai, REAL/FAKE), or pass a CSV manifest with path,label columns.")
    return result
