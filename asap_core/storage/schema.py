"""The bundle schema: what a bundle is, and the constants every layer shares (one home for each).

A bundle folder (docs/design.md §4) holds ``bundle.json`` (``META_FIELDS``), ``images.parquet``
(``IMAGE_COLUMNS``), ``cells.parquet`` (``CELL_COLUMNS``), ``thumbs.parquet`` (``THUMB_COLUMNS``),
``model/`` (distiller + projection, safetensors) and ``cache/`` (on-demand results).

Targets of the relevance maps: the ``N_DIMS`` dimensions of z (0..15), then the fake logit (``FAKE_LOGIT``).
A prediction is ``fake`` when ``p_fake >= DECISION_THRESHOLD``; confidence is ``|2 p_fake - 1|``.
"""
from __future__ import annotations

import types
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, get_args, get_type_hints

import numpy as np

FORMAT_VERSION = 1
META_NAME = "bundle.json"
IMAGES_FILE = "images.parquet"
CELLS_FILE = "cells.parquet"
THUMBS_FILE = "thumbs.parquet"
MODEL_DIR = "model"
CACHE_DIR = "cache"
# the names users give the dimensions (optional; written by ``bundle.save_dimension_names``, JSON):
# ``{"version": 1, "names": [16 strings, "" = unnamed], "updated": ISO time}``
NAMES_FILE = "dimension_names.json"
NAMES_VERSION = 1
MAX_DIMENSION_NAME = 40  # characters of one dimension's name (it goes into captions, tooltips and headers)

N_DIMS = 16
Z_COLUMNS: list[str] = [f"z{i}" for i in range(N_DIMS)]
FAKE_LOGIT = N_DIMS  # index of the fake logit among the relevance targets
N_TARGETS = N_DIMS + 1
TARGET_NAMES: list[str] = [f"dim {i}" for i in range(N_DIMS)] + ["fake logit"]
RELEVANCE_METHODS: tuple[str, ...] = ("last-block", "rollout")
DEFAULT_METHOD = RELEVANCE_METHODS[0]
NO_RELEVANCE = "none"
DECISION_THRESHOLD = 0.5
LABELS: tuple[str, str] = ("real", "fake")
DEFAULT_GRID = 24  # cells per side when a bundle names no grid (a grid chosen at analyze time: GRID_*)
# the overview's grid rule (method.layout.default_grid): the largest grid in [GRID_MIN, GRID_MAX] whose
# median non-empty cell holds at least GRID_MEDIAN_IMAGES images (pies of ~10-20 images read; 1-4 do not)
GRID_MIN = 4
GRID_MAX = 30  # the map is ~570 px wide at 1280 px: 19 px cells, the smallest whose pies still show slices
GRID_MEDIAN_IMAGES = 10
GRID_FILL = 0.7  # share of the chosen grid's cells a t-SNE map occupies (the estimate without map positions)
THUMB_SIDE = 128  # longest side of the thumbnails, px
#: Largest thumbnail read from a bundle (pixels, from its header): thumbnails are written at most
#: ``THUMB_SIDE`` px, so anything over (4 x THUMB_SIDE)^2 is not a thumbnail and is shown grey.
THUMB_MAX_PIXELS = (4 * THUMB_SIDE) ** 2

# column -> kind; kinds: "string", "float", "int", "bool" (null-typed columns pass: all values missing)
IMAGE_COLUMNS: dict[str, str] = {
    "image_id": "string", "path": "string", "relpath": "string", "label": "string", "generator": "string",
    "source": "string", "split": "string", "p_fake": "float", "pred": "string", "correct": "bool",
    "confidence": "float", **{z: "float" for z in Z_COLUMNS}, "map_x": "float", "map_y": "float",
    "cell": "int", "col": "int", "row": "int",
}
CELL_COLUMNS: dict[str, str] = {
    "cell": "int", "col": "int", "row": "int", "x": "float", "y": "float", "n": "int",
    "n_real_ok": "int", "n_real_wrong": "int", "n_fake_ok": "int", "n_fake_wrong": "int", "n_unlabelled": "int",
    "mean_conf": "float", "accuracy": "float", "dominant_generator": "string", "share_fake": "float",
}
THUMB_COLUMNS: dict[str, str] = {"image_id": "string", "jpeg": "binary"}
TABLES: dict[str, dict[str, str]] = {IMAGES_FILE: IMAGE_COLUMNS, CELLS_FILE: CELL_COLUMNS, THUMBS_FILE: THUMB_COLUMNS}

# where a bundle's CLIP came from (EncoderInfo.source): an HF id, a local folder, the random fallback, not recorded
ENCODER_SOURCES: tuple[str, ...] = ("hub", "local", "random", "unknown")
RANDOM_CLIP_MARKER = "asap_random_init.json"  # written into the folder of a randomly initialised CLIP
RANDOM_CLIP_PREFIX = "random-clip-"  # the demo's random CLIP in the cache (folders written before the marker)
MEANINGFUL_AUC = 0.65  # below this validation ROC-AUC the classifier is close to chance: a caution on every page

# bundle.json: required field -> type ("options" is optional: ``SECTIONS`` checks it when present)
META_FIELDS: dict[str, type] = {"version": int, "complete": bool, "layout": str, "encoder": dict, "counts": dict,
                                "metrics": dict, "skipped": list}


@dataclass(frozen=True)
class EncoderInfo:
    """``bundle.json["encoder"]``: the CLIP a bundle was made with.

    ``model_id`` (HF id or local folder), ``cache_key`` (weights + preprocessing), ``embed_dim`` (D),
    ``patch_side`` (patches per side: maps are ``[patch_side, patch_side]``), ``image_size`` (px), ``dtype``,
    ``source`` (``ENCODER_SOURCES``: "hub", "local", "random" for a randomly initialised CLIP, "unknown" in
    bundles written before the field).
    """

    model_id: str
    cache_key: str
    embed_dim: int
    patch_side: int
    image_size: int
    dtype: str = "float32"
    source: str = "unknown"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Counts:
    """``bundle.json["counts"]``: files found, images used, real / fake / unlabelled images, cells."""

    found: int
    used: int
    real: int
    fake: int
    unlabelled: int
    cells: int

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class AnalysisOptions:
    """``bundle.json["options"]``: the options ``analyze`` ran with (``pipeline.options.AnalyzeOptions`` adds
    the run's cache folder, which is not stored).

    Parameters
    ----------
    model : HF id or local folder of the CLIP; None: ``$ASAP_MODEL`` or the default ViT-B/32.
    device : "auto", "cpu", "cuda", ... where the CLIP runs.
    batch_size, num_workers : images per forward and decoding workers; None: chosen for the device.
    decoder : how images are decoded (``model.embedding.DECODERS``); "thread" where worker processes
        cannot start (Streamlit).
    compile : compile the CLIP forward; None: where it pays.
    relevance_batch_size : images per relevance batch; None: ``model.device.relevance_batch_size``.
    dtype : CLIP precision; None / "auto": bfloat16 on GPU, float32 on CPU.
    relevance : maps precomputed for every image: ``NO_RELEVANCE`` or one of ``RELEVANCE_METHODS``.
    grid : cells per side of the overview; None: ``method.layout.default_grid`` (a run records its choice).
    projection_file : a published projection matrix file; None: fit one.
    projection_samples : images whose texted copies fit the projection; None: ``stages.projection_sample_size``
        (a run records the number used).
    distiller : a bundle or folder whose distiller is applied instead of training one.
    random_state : seed of the projection's sample, the training split, the 2-D map and the checks' sample.
    engine : "local" or "ray" (``pipeline.options.ENGINES``).
    ray_address : with engine "ray", the cluster to join; None: Ray's default.
    faithfulness : explanation checks on a seeded sample of this many labelled images (0: off).

    A section of a bundle written before a field existed loads that field's default; the key ``seed`` of
    older bundles loads as ``random_state`` (``renamed``).
    """

    renamed: ClassVar[dict[str, str]] = {"seed": "random_state"}  # key in older bundle.json -> field

    model: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    num_workers: int | None = None
    decoder: str = "auto"
    compile: bool | None = None
    relevance_batch_size: int | None = None
    dtype: str | None = None
    relevance: str = NO_RELEVANCE
    grid: int | None = None
    projection_file: str | None = None
    projection_samples: int | None = None
    distiller: str | None = None
    random_state: int = 0
    engine: str = "local"
    ray_address: str | None = None
    faithfulness: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The section as ``bundle.json`` stores it: this class's fields only (a subclass's stay out)."""
        return {f.name: getattr(self, f.name) for f in fields(AnalysisOptions)}

    def stored(self) -> AnalysisOptions:
        """These options as a bundle stores them and ``Bundle.options`` loads them back (equal objects)."""
        return AnalysisOptions(**self.to_dict())


# bundle.json sections written from dataclasses; "options" may be absent (bundles written before it: defaults)
SECTIONS: dict[str, type] = {"encoder": EncoderInfo, "counts": Counts, "options": AnalysisOptions}
OPTIONAL_SECTIONS: frozenset[str] = frozenset({"options"})


def _renamed(cls: type, value: dict) -> dict:
    """``value`` with the keys ``cls.renamed`` maps (older names) under their current names; a current name
    present wins."""
    renamed: dict[str, str] = getattr(cls, "renamed", {})
    out = dict(value)
    for old, new in renamed.items():
        if old in out:
            moved = out.pop(old)
            out.setdefault(new, moved)
    return out


def _accepts(want: Any, v: object) -> bool:
    """Whether ``v`` (read from JSON) is of the annotated type ``want`` (a class or a union such as
    ``int | None``); a bool is not an int here."""
    kinds = get_args(want) if isinstance(want, types.UnionType) else (want,)
    kinds = tuple(type(None) if k is None else k for k in kinds)
    if isinstance(v, bool):
        return bool in kinds
    return isinstance(v, kinds)


def _type_name(want: Any) -> str:
    kinds = get_args(want) if isinstance(want, types.UnionType) else (want,)
    return " or ".join("null" if k in (None, type(None)) else k.__name__ for k in kinds)


def section_problem(meta: dict, name: str) -> str | None:
    """What is wrong with ``meta[name]`` (a ``SECTIONS`` dataclass written as a dict), or None. An absent
    ``OPTIONAL_SECTIONS`` section is fine (its defaults load)."""
    cls = SECTIONS[name]
    if name not in meta and name in OPTIONAL_SECTIONS:
        return None
    value = meta.get(name)
    if not isinstance(value, dict):
        return f"'{name}' is {type(value).__name__}, expected an object"
    value = _renamed(cls, value)
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.name not in value:
            if f.default is MISSING:
                return f"'{name}' lacks '{f.name}'"
            continue
        v, want = value[f.name], hints[f.name]
        if not _accepts(want, v):
            return f"'{name}.{f.name}' is {type(v).__name__}, expected {_type_name(want)}"
    return None


def read_section(meta: dict, name: str) -> Any:
    """``meta[name]`` as its ``SECTIONS`` dataclass (keys renamed since, ``renamed``, under their current names;
    unknown keys ignored; an absent optional section or field: the defaults)."""
    cls = SECTIONS[name]
    known = {f.name for f in fields(cls)}
    value = _renamed(cls, meta.get(name) or {})
    return cls(**{k: v for k, v in value.items() if k in known})


def is_random_clip(model_dir: str | Path) -> bool:
    """True for the folder of a randomly initialised CLIP (``RANDOM_CLIP_MARKER`` in it, or named like the demo's)."""
    folder = Path(model_dir).expanduser()
    return folder.name.startswith(RANDOM_CLIP_PREFIX) or (folder / RANDOM_CLIP_MARKER).is_file()


def p_fake_from_logit(logit: np.ndarray | float) -> np.ndarray | float:
    """``sigmoid(logit)``: the fake logit -> p_fake (float64; a float for a float)."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(logit, dtype=np.float64)))
    return float(p) if np.ndim(p) == 0 else p


def predicted_label(p_fake: np.ndarray) -> np.ndarray:
    """``"fake"`` where ``p_fake >= DECISION_THRESHOLD``, else ``"real"`` (object array)."""
    return np.where(np.asarray(p_fake) >= DECISION_THRESHOLD, "fake", "real").astype(object)


def confidence(p_fake: np.ndarray) -> np.ndarray:
    """``|2 p_fake - 1|`` in [0, 1]: 0 on the decision boundary, 1 when certain."""
    return np.abs(2 * np.asarray(p_fake, dtype=np.float64) - 1)


__all__ = ["AnalysisOptions", "CACHE_DIR", "CELLS_FILE", "CELL_COLUMNS", "Counts", "DECISION_THRESHOLD",
           "DEFAULT_GRID", "DEFAULT_METHOD", "ENCODER_SOURCES", "EncoderInfo", "FAKE_LOGIT", "FORMAT_VERSION",
           "GRID_FILL", "GRID_MAX", "GRID_MEDIAN_IMAGES", "GRID_MIN", "IMAGES_FILE", "IMAGE_COLUMNS", "LABELS",
           "MEANINGFUL_AUC", "MAX_DIMENSION_NAME", "META_FIELDS", "META_NAME", "MODEL_DIR", "NAMES_FILE",
           "NAMES_VERSION", "NO_RELEVANCE", "N_DIMS", "N_TARGETS", "OPTIONAL_SECTIONS", "RANDOM_CLIP_MARKER",
           "RANDOM_CLIP_PREFIX", "RELEVANCE_METHODS", "SECTIONS", "TABLES", "TARGET_NAMES", "THUMBS_FILE",
           "THUMB_COLUMNS", "THUMB_MAX_PIXELS", "THUMB_SIDE", "Z_COLUMNS", "confidence", "is_random_clip",
           "p_fake_from_logit", "predicted_label", "read_section", "section_problem"]
