"""Find images and their labels in a folder: one rule covers every supported layout.

Layouts (docs/design.md §2): plain ``real/`` + ``fake/[<generator>/]`` at any depth; ForenSynths
``<generator>/[<class>/]0_real|1_fake``; GenImage ``<generator>/{train,val}/{nature,ai}``; CIFAKE
``{train,test}/{REAL,FAKE}``; a CSV manifest ``path,label[,generator][,split]``; unlabelled folders.

The rule: a folder named exactly ``real`` or ``fake`` (any case: the strong words) sets the label, the
deepest one if several; only where none is above a file does the deepest folder named by another layout's
word (``0_real``, ``nature``, ``ai``, ``synthetic``, ...: the weak words) set it. So in ``fake/nature/x.jpg``
``nature`` is a topic and the label is fake; every folder above a file whose word says the other label is
reported as a ``LabelConflict``. A folder named train/val/test sets the split. The generator is the first
non-split folder right under the label folder if there is one (``fake/nature/`` -> ``nature``), else the
first folder above it that is neither a split nor a label word (``sdv14/train/ai/`` -> ``sdv14``); for real
images that name is kept as ``source`` (e.g. ``real/ffhq``).

Paths that are not valid UTF-8 (``os.walk`` returns them with surrogate escapes, which Parquet and JSON
cannot store) are skipped with a reason, shown with the bad bytes as ``\\xNN``.
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import pandas as pd

from ..errors import InputError
from .imageio import IMAGE_EXTENSIONS

STRONG_WORDS = {"real": "real", "fake": "fake"}
WEAK_WORDS = {"0_real": "real", "nature": "real", "authentic": "real", "genuine": "real",
              "1_fake": "fake", "ai": "fake", "synthetic": "fake", "generated": "fake"}
LABEL_WORDS = {**WEAK_WORDS, **STRONG_WORDS}
REAL_WORDS = frozenset(w for w, lab in LABEL_WORDS.items() if lab == "real")
FAKE_WORDS = frozenset(w for w, lab in LABEL_WORDS.items() if lab == "fake")
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
LABEL_VALUES = {"real": "real", "0": "real", "fake": "fake", "1": "fake", "ai": "fake", "nature": "real"}
COLUMNS = ["path", "relpath", "label", "generator", "source", "split"]
COUNT_COLUMNS = ["real", "fake", "unlabelled"]
ROOT_FOLDER = "."  # label_counts() key of the files directly in the root
BAD_FILE_NAME = "file name is not valid UTF-8; rename the file (e.g. `convmv --notest -f latin1 -t utf8 FILE`)"
BAD_FOLDER_NAME = ("folder name is not valid UTF-8; rename the folder "
                   "(e.g. `convmv --notest -r -f latin1 -t utf8 FOLDER`)")


@dataclass(frozen=True)
class LabelConflict:
    """Folders above the same ``n_files`` files whose names say different labels; ``used_label`` won.

    Folders are '/'-separated paths relative to the scanned root.
    """

    used_folder: str
    used_label: str
    other_folder: str
    other_label: str
    n_files: int

    def describe(self) -> str:
        """One line: the folders, what each says, and which label the files got (and why)."""
        used, other = PurePath(self.used_folder), PurePath(self.other_folder)
        why = ("a real/fake folder wins" if used.name.lower() in STRONG_WORDS
               and other.name.lower() not in STRONG_WORDS else "the deeper folder wins")
        deeper = max(self.used_folder, self.other_folder, key=lambda f: len(PurePath(f).parts))
        files = f"{self.n_files} file" + ("s" if self.n_files != 1 else "")
        return (f"{deeper}/ ({files}): '{used.name}' says {self.used_label}, "
                f"'{other.name}' says {self.other_label}; labelled {self.used_label} ({why})")


@dataclass
class ScanResult:
    """``images``: one row per image file (columns ``COLUMNS``); ``skipped``: ``(path, reason)`` pairs;
    ``conflicts``: folders whose label words disagree above the same files."""

    root: Path
    images: pd.DataFrame
    layout: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[LabelConflict] = field(default_factory=list)

    @property
    def n_real(self) -> int:
        return int((self.images["label"] == "real").sum())

    @property
    def n_fake(self) -> int:
        return int((self.images["label"] == "fake").sum())

    def label_counts(self) -> pd.DataFrame:
        """Images per label and top folder: index ``folder`` (first path part under the root, ``"."`` for
        files in the root itself, sorted), int columns ``real, fake, unlabelled``."""
        df = self.images
        if df.empty:
            return pd.DataFrame(columns=COUNT_COLUMNS, dtype=int).rename_axis("folder")
        top = [p[0] if len(p) > 1 else ROOT_FOLDER for p in (PurePath(r).parts for r in df["relpath"])]
        label = df["label"].fillna("unlabelled").to_numpy()
        counts = pd.crosstab(pd.Series(top), pd.Series(label))
        return counts.reindex(columns=COUNT_COLUMNS, fill_value=0).astype(int).rename_axis(index="folder", columns=None)

    def label_summary(self, max_lines: int = 20) -> list[str]:
        """The printed lines of :func:`label_summary_lines` for this scan."""
        return label_summary_lines(self.label_counts(), self.conflicts, max_lines)


def label_summary_lines(counts: pd.DataFrame | None, conflicts: list[LabelConflict],
                        max_lines: int = 20) -> list[str]:
    """Compact lines: one per top folder of ``counts`` (as from ``ScanResult.label_counts``), then one per
    conflict; each list cut after ``max_lines`` with "... and N more"."""
    lines: list[str] = []
    if counts is not None and len(counts):
        lines.append("Images per top folder:")
        for folder, row in list(counts.iterrows())[:max_lines]:
            parts = [f"{int(row[c])} {c}" for c in COUNT_COLUMNS if c in row and int(row[c])]
            lines.append(f"  {folder}/: {', '.join(parts) or 'no images'}")
        if len(counts) > max_lines:
            lines.append(f"  ... and {len(counts) - max_lines} more folders")
    if conflicts:
        lines.append(f"Folder names that disagree on the label ({len(conflicts)}):")
        lines += [f"  {c.describe()}" for c in conflicts[:max_lines]]
        if len(conflicts) > max_lines:
            lines.append(f"  ... and {len(conflicts) - max_lines} more")
    return lines


def is_utf8(text: str) -> bool:
    """False for a str holding surrogate escapes (``os.fsdecode`` of bytes that are not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_path(path: str | Path) -> str:
    """``path`` as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _word_label(name: str, words: dict[str, str]) -> str | None:
    return words.get(name.lower())


def _label_of(parts: list[str]) -> tuple[str | None, int]:
    """(label, index of the folder that sets it) from folder names (root first), or (None, -1).

    The deepest strong word (real/fake) wins; without one, the deepest weak word.
    """
    for words in (STRONG_WORDS, WEAK_WORDS):
        for i in range(len(parts) - 1, -1, -1):
            label = _word_label(parts[i], words)
            if label is not None:
                return label, i
    return None, -1


def _conflicts_of(parts: list[str]) -> list[tuple[str, str, str, str]]:
    """``(used_folder, used_label, other_folder, other_label)`` for each folder in ``parts`` whose word says
    another label than the one the rule gives; folders as '/'-joined paths relative to the root."""
    label, at = _label_of(parts)
    if label is None:
        return []
    used = "/".join(parts[:at + 1])
    return [(used, label, "/".join(parts[:j + 1]), other) for j, p in enumerate(parts)
            if (other := _word_label(p, LABEL_WORDS)) not in (None, label)]


def parse_parts(parts: list[str]) -> dict[str, str | None]:
    """Label, generator/source and split from the folder names above one image (root first)."""
    label, at = _label_of(parts)
    split = next((SPLIT_WORDS[p.lower()] for p in parts if p.lower() in SPLIT_WORDS), None)
    source = None
    if at >= 0:
        below = [p for p in parts[at + 1:] if p.lower() not in SPLIT_WORDS]
        above = [p for p in parts[:at] if p.lower() not in SPLIT_WORDS and p.lower() not in LABEL_WORDS]
        source = below[0] if below else (above[0] if above else None)
    return {"label": label, "source": source, "split": split,
            "generator": source if label == "fake" else None}


def _rule_name(word: str) -> str:
    """Name of the layout whose folder word ``word`` labelled files."""
    if word.lower() in ("0_real", "1_fake"):
        return "ForenSynths (0_real/1_fake)"
    if word.lower() in ("nature", "ai"):
        return "GenImage (nature/ai)"
    if word in ("REAL", "FAKE"):
        return "CIFAKE (REAL/FAKE)"
    return "real/fake folders"


def _layout_name(deciding_words: set[str]) -> str:
    """The layouts whose words labelled files (joined by " + "), or "unlabelled folder"."""
    order = ["real/fake folders", "ForenSynths (0_real/1_fake)", "GenImage (nature/ai)", "CIFAKE (REAL/FAKE)"]
    used = {_rule_name(w) for w in deciding_words}
    return " + ".join(n for n in order if n in used) or "unlabelled folder"


def _bad_name_reason(root: Path, path: Path) -> str | None:
    """Why ``path`` (an image under ``root``) cannot be used because of its name, or None if it can."""
    rel = path.relative_to(root)
    if not is_utf8(str(rel.parent)):
        return BAD_FOLDER_NAME
    return None if is_utf8(rel.name) else BAD_FILE_NAME


def _walk_images(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files below ``root`` (hidden entries skipped, symlinked folders not followed); files whose
    path is not valid UTF-8 go to the skipped ``(path, reason)`` pairs."""
    found: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=lambda e: skipped.append(
            (shown_path(e.filename), f"folder cannot be read ({e.strerror})"))):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            reason = _bad_name_reason(root, p)
            if reason is None:
                found.append(p)
            else:
                skipped.append((shown_path(p), reason))
    return found, skipped


def _check_utf8_root(path: Path) -> None:
    """``InputError`` if the folder ``path`` has a name that is not valid UTF-8 (bundles could not store it)."""
    if not is_utf8(str(path)):
        raise InputError(f"{shown_path(path)}: the folder path is not valid UTF-8.",
                         "rename the folder (e.g. `convmv --notest -f latin1 -t utf8 FOLDER`) and pass it again.")


def find_manifest(root: Path) -> Path | None:
    """A CSV in ``root`` whose header has ``path`` and ``label`` columns, or ``root`` itself if it is one."""
    candidates = [root] if root.is_file() else sorted(root.glob("*.csv"))
    for c in candidates:
        try:
            with open(c, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
                header = {h.strip().lower() for h in next(csv.reader(fh), [])}
        except (OSError, csv.Error):
            continue
        if {"path", "label"} <= header:
            return c
    return None


def _manifest_row_problem(r: Mapping[Hashable, Any], full: Path, where: str) -> str | None:
    """Why a manifest row whose text is not valid UTF-8 cannot be used, or None if its text is fine."""
    if all(is_utf8(v) for v in r.values()):
        return None
    if not is_utf8(r["path"]) and full.is_file():
        return f"{where}: {BAD_FILE_NAME}, then write its new name in the CSV, saved as UTF-8"
    return f"{where}: text is not valid UTF-8; save the CSV as UTF-8"


def scan_manifest(csv_path: Path) -> ScanResult:
    """Rows of a ``path,label[,generator][,split]`` CSV; paths relative to the CSV's folder."""
    base = csv_path.parent
    _check_utf8_root(base)
    # surrogateescape: a path in a non-UTF-8 CSV still names its file; such rows are skipped below
    df = pd.read_csv(csv_path, dtype=object, keep_default_na=False, encoding="utf-8-sig",
                     encoding_errors="surrogateescape")
    df.columns = [c.strip().lower() for c in df.columns]
    rows, skipped = [], []
    for n, r in enumerate(df.to_dict("records"), start=2):
        p = Path(r["path"].strip())
        full = p if p.is_absolute() else base / p
        where = f"{shown_path(csv_path.name)} line {n}"
        problem = _manifest_row_problem(r, full, where)
        if problem is not None:
            skipped.append((shown_path(full), problem))
            continue
        label = LABEL_VALUES.get(r["label"].strip().lower()) if r["label"].strip() else None
        if r["label"].strip() and label is None:
            skipped.append((str(full), f"{where}: label '{r['label']}' is not real/fake/0/1"))
            continue
        if not full.is_file():
            skipped.append((str(full), f"{where}: file does not exist"))
            continue
        gen = (r.get("generator") or "").strip() or None
        rows.append({"path": str(full), "relpath": os.path.relpath(full, base), "label": label,
                     "generator": gen if label == "fake" else None, "source": gen,
                     "split": SPLIT_WORDS.get((r.get("split") or "").strip().lower())})
    return ScanResult(base, pd.DataFrame(rows, columns=COLUMNS), "CSV manifest", skipped)


def _conflict_list(counts: Counter[tuple[str, str, str, str]]) -> list[LabelConflict]:
    """``LabelConflict``s from counts keyed ``(used_folder, used_label, other_folder, other_label)``."""
    return [LabelConflict(*key, n_files=n) for key, n in sorted(counts.items())]


def scan_tree(root: Path) -> ScanResult:
    """Labels, generators and splits of the images under the folder ``root`` from its folder names."""
    _check_utf8_root(root)
    files, skipped = _walk_images(root)
    rows, deciding = [], set()
    conflicts: Counter[tuple[str, str, str, str]] = Counter()
    for f in files:
        parts = list(f.relative_to(root).parts[:-1])
        label, at = _label_of(parts)
        if label is not None:
            deciding.add(parts[at])
        conflicts.update(_conflicts_of(parts))
        rows.append({"path": str(f), "relpath": f.relative_to(root).as_posix(), **parse_parts(parts)})
    return ScanResult(root, pd.DataFrame(rows, columns=COLUMNS), _layout_name(deciding), skipped,
                      _conflict_list(conflicts))


def scan_folder(root: str | Path) -> ScanResult:
    """Find the images under ``root`` (a folder or a CSV manifest) with labels, generators and splits.

    Raises ``InputError`` if ``root`` does not exist, its path is not valid UTF-8, or it holds no image.
    """
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise InputError(f"{shown_path(root)} does not exist.", "pass the folder that holds your images.")
    manifest = find_manifest(root)
    if manifest is not None:
        result = scan_manifest(manifest)
    elif root.is_file():
        raise InputError(f"{shown_path(root)} is a file, not a folder or a CSV manifest with path,label columns.",
                         "pass a folder of images, or a CSV with columns path,label[,generator][,split].")
    else:
        result = scan_tree(root)
    if result.images.empty:
        raise InputError(
            f"No images found in {shown_path(root)}"
            + (f" ({len(result.skipped)} skipped, e.g. {result.skipped[0][0]}: {result.skipped[0][1]})."
               if result.skipped else "."),
            "put images (JPEG, PNG, WebP, BMP, TIFF, GIF) in real/ and fake/ subfolders "
            "(or 0_real/1_fake, nature/ai, REAL/FAKE), or pass a CSV manifest with path,label columns.")
    return result
