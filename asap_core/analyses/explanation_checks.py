"""Explanations you can check (issue 18): faithfulness curves and the parameter-randomisation sanity check
of a bundle's relevance maps, per target (16 dimensions + the fake logit), cached like the maps.

Entry points for the app and the CLI: ``faithfulness_report(bundle, image_ids, method)`` and
``sanity_report(bundle, image_ids, method)`` (computed once per image, then read from the bundle's
``cache/``), ``checks_missing`` (what a call would have to compute), ``check_sample`` (the seeded sample of
labelled images, both classes) and ``analysis_checks(bundle)`` (the reports ``analyze --faithfulness N``
stored). The figures and their definitions: ``method.faithfulness`` and ``method.sanity``.

Cache: ``RowStore``s in the bundle's ``cache/``, named by the check, its version and parameters, the method,
the encoder's ``cache_key`` and the distiller's fingerprint: one row per image and target (key
``IMAGE_ID/TARGET``) of raw curves ``[6, steps + 1]`` (float32; a view asks for the targets it shows), one row
per image of rank correlations ``[17, 2]`` (float32; cheap, always all 17). The tables are made from the rows
on every call (cheap).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..method.faithfulness import (CURVES, FAITHFULNESS_VERSION, DeletionInsertion, mean_curves, patch_counts,
                                   per_image_table, summarise)
from ..method.sanity import RANDOMISATIONS, SANITY_VERSION, ParameterRandomisation, summarise_rho
from ..storage import schema as S
from ..storage.cache import RowStore

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

CHECKS_VERSION = 2  # bump when what is stored per image changes (with the methods' own versions)
DEFAULT_STEPS = 16
DEFAULT_RANDOM = 4
CHUNK = 8  # images per evaluation (each image's perturbed copies are batched inside)


@dataclass
class CheckSource:
    """What the checks read, on an open bundle or in a running ``analyze``: the cache folder, the encoder's
    key and patch side, the distiller, whether the CLIP is a random initialisation, the encoder (loaded on
    first need only), the model inputs ``pixels(encoder, ids) -> [n, 3, S, S]`` and the original maps
    ``maps(encoder, ids) -> [n, 17, side, side]`` (cached)."""

    cache_dir: Path
    encoder_key: str
    side: int
    distiller: object
    encoder_random: bool
    load_encoder: Callable[[], object]
    pixels: Callable[[object, list[str]], "torch.Tensor"]
    maps: Callable[[object, list[str]], np.ndarray]

    @classmethod
    def from_bundle(cls, bundle, method: str, encoder=None) -> "CheckSource":
        """The source of an open ``Bundle`` (its encoder, or ``encoder``, loaded on a cache miss only)."""
        from ..method.relevance_store import bundle_maps

        enc_info = bundle.encoder_info
        is_random = enc_info.source == "random" or (enc_info.source == "unknown"
                                                    and S.is_random_clip(enc_info.model_id))

        def pixels(enc, ids: list[str]) -> "torch.Tensor":
            return enc.preprocess([bundle.decode(i, "its explanation checks") for i in ids])

        return cls(bundle.cache_dir, enc_info.cache_key if encoder is None else encoder.cache_key,
                   enc_info.patch_side, bundle.distiller, is_random, lambda: encoder or bundle.encoder(), pixels,
                   lambda enc, ids: np.asarray(bundle_maps(bundle, ids, method, encoder=enc), np.float32))

    @classmethod
    def from_files(cls, cache_dir: str | Path, info, load_encoder: Callable[[], object], distiller,
                   images: pd.DataFrame, method: str) -> "CheckSource":
        """The source of a running ``analyze``: ``info`` (the checkpoint's ``CheckpointInfo``), its encoder
        loader, distiller and images (``image_id``, ``path``); the maps come from, or go into, the run's map
        store (``relevance_store.map_store``)."""
        from ..inputs.imageio import decode_image, read_checked
        from ..method.relevance_store import compute_missing_maps, map_store

        store = map_store(cache_dir, info.cache_key, distiller.fingerprint, method, info.patch_side)
        paths = dict(zip(images["image_id"], images["path"]))

        def pixels(enc, ids: list[str]) -> "torch.Tensor":
            return enc.preprocess([decode_image(read_checked(paths[i], i), paths[i]) for i in ids])

        def maps(enc, ids: list[str]) -> np.ndarray:
            rows = pd.DataFrame({"image_id": ids, "path": [paths[i] for i in ids]})
            compute_missing_maps(store, enc, distiller, rows, method, decoder="inline")
            return np.asarray(store.get(ids), np.float32)

        return cls(Path(cache_dir), info.cache_key, info.patch_side, distiller, info.source == "random",
                   load_encoder, pixels, maps)


@dataclass
class FaithfulnessReport:
    """``summary`` (one row per target, ``faithfulness.SUMMARY_COLUMNS``), ``per_image`` (image_id, target,
    target_name, deletion_abc, insertion_abc, deletion_abc_mask, insertion_abc_mask, ratio, delta), ``curves``
    (mean normalised curves: target, target_name, curve, x, y), ``x`` ``[steps + 1]``, ``method``, ``image_ids``."""

    summary: pd.DataFrame
    per_image: pd.DataFrame
    curves: pd.DataFrame
    x: np.ndarray
    method: str
    image_ids: list[str]


@dataclass
class SanityReport:
    """``summary`` (one row per target: target, target_name, n_images, rho_distiller, rho_last_block,
    encoder_random, flagged, reason), ``per_image`` (image_id, target, target_name, rho_distiller,
    rho_last_block), ``encoder_random``, ``method``, ``image_ids``."""

    summary: pd.DataFrame
    per_image: pd.DataFrame
    encoder_random: bool
    method: str
    image_ids: list[str]


# ----------------------------------------------------------------------------- stores


def faithfulness_store(cache_dir: str | Path, encoder_key: str, distiller_fingerprint: str, method: str,
                       steps: int = DEFAULT_STEPS, n_random: int = DEFAULT_RANDOM, random_state: int = 0) -> RowStore:
    """Rows ``[6, steps + 1]`` float32, one per image and target (key ``faithfulness_key``): raw deletion /
    insertion curves (``faithfulness.CURVES``). Per target, because the map curves cost most (on ViT-B/32,
    all 17 targets take about 92 s per image on 2 CPU cores): a view asks for the targets it shows."""
    name = (f"faith-v{CHECKS_VERSION}.{FAITHFULNESS_VERSION}-{method}-s{int(steps)}-r{int(n_random)}-"
            f"seed{int(random_state)}-{encoder_key}-{distiller_fingerprint}")
    return RowStore(cache_dir, name, (len(CURVES), int(steps) + 1))


def faithfulness_key(image_id: str, target: int) -> str:
    """The faithfulness store's key of one image and target: ``IMAGE_ID/TARGET``."""
    return f"{image_id}/{int(target)}"


def check_targets(targets: Sequence[int] | None) -> list[int]:
    """``None`` -> all 17; else the given targets (0..15 dimensions, 16 the fake logit), duplicates dropped."""
    if targets is None:
        return list(range(S.N_TARGETS))
    out = list(dict.fromkeys(int(t) for t in targets))
    bad = [t for t in out if not 0 <= t < S.N_TARGETS]
    if not out or bad:
        raise InputError(f"targets {list(targets)} are not a list of targets 0..{S.N_TARGETS - 1}.",
                         f"pass dimensions 0..{S.N_DIMS - 1} and/or {S.FAKE_LOGIT} (the fake logit), or None for all.")
    return out



def sanity_store(cache_dir: str | Path, encoder_key: str, distiller_fingerprint: str, method: str,
                 random_state: int = 0) -> RowStore:
    """Rows ``[17, 2]`` float32: rank correlations per image after each of ``sanity.RANDOMISATIONS``."""
    name = (f"sanity-v{CHECKS_VERSION}.{SANITY_VERSION}-{method}-seed{int(random_state)}-{encoder_key}-"
            f"{distiller_fingerprint}")
    return RowStore(cache_dir, name, (S.N_TARGETS, len(RANDOMISATIONS)))


def image_seed(image_id: str) -> int:
    """A stable per-image seed of the random baselines (so an image's figures never depend on its batch)."""
    return int(hashlib.sha1(str(image_id).encode()).hexdigest()[:8], 16)


def _stores(src: CheckSource, method: str, steps: int, n_random: int, random_state: int) -> tuple[RowStore, RowStore]:
    fp = src.distiller.fingerprint
    return (faithfulness_store(src.cache_dir, src.encoder_key, fp, method, steps, n_random, random_state),
            sanity_store(src.cache_dir, src.encoder_key, fp, method, random_state))


# ----------------------------------------------------------------------------- compute


def _fill(store: RowStore, ids: list[str], compute: Callable[[object, list[str]], np.ndarray], src: CheckSource,
          progress: Callable[[int, int], None] | None) -> None:
    """Compute and store the rows of ``ids`` that ``store`` lacks, ``CHUNK`` images at a time."""
    todo = store.missing(ids)
    if progress:
        progress(0, len(todo))
    if not todo:
        return
    encoder = src.load_encoder()
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        store.put(chunk, compute(encoder, chunk).astype(np.float32))
        if progress:
            progress(min(start + CHUNK, len(todo)), len(todo))


def fill_faithfulness(src: CheckSource, ids: list[str], method: str, targets: Sequence[int] | None = None,
                      steps: int = DEFAULT_STEPS, n_random: int = DEFAULT_RANDOM, random_state: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> RowStore:
    """Faithfulness rows of ``ids`` x ``targets`` (None: all 17), computed where missing, ``CHUNK`` images at a
    time (one evaluation per chunk for the targets its images lack); returns the store. The random baselines
    are seeded per image, so rows computed in separate calls agree."""
    store = _stores(src, method, steps, n_random, random_state)[0]
    targets = check_targets(targets)
    missing = set(store.missing([faithfulness_key(i, t) for i in ids for t in targets]))
    todo = [i for i in ids if any(faithfulness_key(i, t) in missing for t in targets)]
    if progress:
        progress(0, len(todo))
    if not todo:
        return store
    encoder = src.load_encoder()
    metric = DeletionInsertion(encoder, src.distiller, steps=steps, n_random=n_random, random_state=random_state)
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        need = [t for t in targets if any(faithfulness_key(i, t) in missing for i in chunk)]
        res = metric.evaluate(src.pixels(encoder, chunk), src.maps(encoder, chunk)[:, need], target=need,
                              seeds=[image_seed(i) for i in chunk])
        store.put([faithfulness_key(i, t) for i in chunk for t in need],
                  res.curves.reshape(-1, len(CURVES), int(steps) + 1).astype(np.float32))
        if progress:
            progress(min(start + CHUNK, len(todo)), len(todo))
    return store


def fill_sanity(src: CheckSource, ids: list[str], method: str, random_state: int = 0,
                progress: Callable[[int, int], None] | None = None) -> RowStore:
    """Sanity rows for ``ids`` (computed where missing); returns the store."""
    store = _stores(src, method, DEFAULT_STEPS, DEFAULT_RANDOM, random_state)[1]

    def compute(encoder, chunk: list[str]) -> np.ndarray:
        test = ParameterRandomisation(encoder, src.distiller, method, random_state=random_state,
                                      encoder_random=src.encoder_random)
        return test.evaluate(src.pixels(encoder, chunk), target=None, original=src.maps(encoder, chunk)).rho

    _fill(store, ids, compute, src, progress)
    return store


# ----------------------------------------------------------------------------- reports


def faithfulness_from_rows(curves: np.ndarray, ids: list[str], method: str, steps: int, side: int,
                           targets: Sequence[int] | None = None) -> FaithfulnessReport:
    """The report from stored curves ``[n, K, 6, steps + 1]`` of ``targets`` (None: all 17)."""
    x = patch_counts(side * side, steps) / (side * side)
    targets = check_targets(targets)
    curves = np.asarray(curves, np.float64)
    return FaithfulnessReport(summarise(curves, x, targets), per_image_table(curves, x, targets, ids),
                              mean_curves(curves, x, targets), x, method, ids)


def sanity_from_rows(rho: np.ndarray, ids: list[str], method: str, encoder_random: bool) -> SanityReport:
    """The report from stored rank correlations ``[n, 17, 2]``."""
    rho = np.asarray(rho, np.float64)
    k = S.N_TARGETS
    per_image = pd.DataFrame({"image_id": np.repeat(np.asarray(ids, dtype=object), k),
                              "target": np.tile(np.arange(k), len(ids)),
                              "target_name": np.tile(np.asarray(S.TARGET_NAMES, dtype=object), len(ids)),
                              "rho_distiller": rho[..., 0].reshape(-1), "rho_last_block": rho[..., 1].reshape(-1)})
    return SanityReport(summarise_rho(rho, list(range(k)), encoder_random), per_image, encoder_random, method, ids)


def _check_method(method: str) -> str:
    if method not in S.RELEVANCE_METHODS:
        raise InputError(f"Unknown relevance method '{method}'.", f"use one of: {', '.join(S.RELEVANCE_METHODS)}.")
    return method


def faithfulness_report(bundle, image_ids: Sequence[str], method: str = S.DEFAULT_METHOD, encoder=None,
                        targets: Sequence[int] | None = None, steps: int = DEFAULT_STEPS,
                        n_random: int = DEFAULT_RANDOM, random_state: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> FaithfulnessReport:
    """Deletion / insertion figures of ``method``'s maps for ``image_ids`` x ``targets`` (None: all 17) of an
    open ``Bundle``; each image and target is computed once (the maps too), then read from the bundle's cache.
    The encoder loads on a miss only. ``progress(done, total)`` counts images."""
    ids = bundle.check_ids(image_ids)
    targets = check_targets(targets)
    src = CheckSource.from_bundle(bundle, _check_method(method), encoder)
    store = fill_faithfulness(src, ids, method, targets, steps, n_random, random_state, progress)
    rows = store.get([faithfulness_key(i, t) for i in ids for t in targets])
    curves = np.asarray(rows).reshape(len(ids), len(targets), len(CURVES), int(steps) + 1)
    return faithfulness_from_rows(curves, ids, method, steps, src.side, targets)


def sanity_report(bundle, image_ids: Sequence[str], method: str = S.DEFAULT_METHOD, encoder=None,
                  random_state: int = 0, progress: Callable[[int, int], None] | None = None) -> SanityReport:
    """Parameter-randomisation figures and verdicts of ``method``'s maps for ``image_ids`` of an open
    ``Bundle`` (cached per image like ``faithfulness_report``)."""
    ids = bundle.check_ids(image_ids)
    src = CheckSource.from_bundle(bundle, _check_method(method), encoder)
    store = fill_sanity(src, ids, method, random_state, progress)
    return sanity_from_rows(store.get(ids), ids, method, src.encoder_random)


def checks_missing(bundle, image_ids: Sequence[str], method: str = S.DEFAULT_METHOD, encoder=None,
                   targets: Sequence[int] | None = None, steps: int = DEFAULT_STEPS, n_random: int = DEFAULT_RANDOM,
                   random_state: int = 0) -> dict[str, list[str]]:
    """``{"faithfulness": ids, "sanity": ids}``: the images each report would compute for ``targets`` (None:
    all 17; the sanity check always covers all 17). Empty lists: everything is cached."""
    ids = bundle.check_ids(image_ids)
    targets = check_targets(targets)
    faith, sanity = _stores(CheckSource.from_bundle(bundle, method, encoder), method, steps, n_random, random_state)
    missing = set(faith.missing([faithfulness_key(i, t) for i in ids for t in targets]))
    return {"faithfulness": [i for i in ids if any(faithfulness_key(i, t) in missing for t in targets)],
            "sanity": sanity.missing(ids)}


def run_checks(src: CheckSource, ids: list[str], method: str,
               progress: Callable[[str, int, int], None] | None = None
               ) -> tuple[FaithfulnessReport, SanityReport, tuple[RowStore, RowStore]]:
    """Both checks with the default parameters on ``ids`` (computed where missing): the reports and their
    stores. ``progress(check, done, total)``, ``check`` "faithfulness" or "sanity"."""
    def report(name: str):
        return (lambda d, t: progress(name, d, t)) if progress else None

    faith = fill_faithfulness(src, ids, method, progress=report("faithfulness"))
    sanity = fill_sanity(src, ids, method, progress=report("sanity"))
    rows = faith.get([faithfulness_key(i, t) for i in ids for t in range(S.N_TARGETS)])
    curves = np.asarray(rows).reshape(len(ids), S.N_TARGETS, len(CURVES), DEFAULT_STEPS + 1)
    return (faithfulness_from_rows(curves, ids, method, DEFAULT_STEPS, src.side),
            sanity_from_rows(sanity.get(ids), ids, method, src.encoder_random), (faith, sanity))


# ----------------------------------------------------------------------------- the analyze-time sample


def check_sample(images: pd.DataFrame, n: int, seed: int = 0) -> list[str]:
    """A seeded sample of ``n`` labelled images (``image_id``, ``label``): half fake (rounded down), half real,
    the other class filling in where one has too few; independent of the table's row order."""
    if int(n) < 0:
        raise InputError(f"--faithfulness {n}: the sample size cannot be negative.", "use 0 (off) or e.g. 16.")
    rng = np.random.default_rng(int(seed))
    pools = {}
    for label in S.LABELS:
        ids = np.sort(images.loc[images["label"] == label, "image_id"].astype(str).to_numpy())
        pools[label] = list(ids[rng.permutation(len(ids))])
    want = {"fake": int(n) // 2, "real": int(n) - int(n) // 2}
    short = {k: max(want[k] - len(pools[k]), 0) for k in want}
    want = {"fake": want["fake"] + short["real"], "real": want["real"] + short["fake"]}
    return pools["fake"][:want["fake"]] + pools["real"][:want["real"]]


def checks_method(options: dict) -> str:
    """The relevance method ``analyze --faithfulness`` checks: the run's ``--relevance``, else the default."""
    method = options.get("relevance", S.NO_RELEVANCE)
    return method if method in S.RELEVANCE_METHODS else S.DEFAULT_METHOD


def analysis_sample(bundle) -> list[str]:
    """The images ``analyze --faithfulness N`` checked (empty when it was off)."""
    n = int(bundle.options.get("faithfulness") or 0)
    return check_sample(bundle.images, n, int(bundle.options.get("seed", 0))) if n > 0 else []


def analysis_checks(bundle) -> tuple[FaithfulnessReport, SanityReport] | None:
    """The reports ``analyze --faithfulness N`` stored in the bundle, read without computing anything; None
    when the option was off or the rows are not all there."""
    ids = analysis_sample(bundle)
    if not ids:
        return None
    method = checks_method(bundle.options)
    if any(checks_missing(bundle, ids, method).values()):
        return None
    return faithfulness_report(bundle, ids, method), sanity_report(bundle, ids, method)


def summary_json(faith: FaithfulnessReport, sanity: SanityReport) -> dict:
    """A small JSON-ready digest of both reports (``bundle.json["explanation_checks"]``): method, image ids
    and, per target, ratio, deletion_abc, insertion_abc, beats_random, rho_distiller, rho_last_block, flagged."""
    def clean(v):
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        v = float(v)
        return None if math.isnan(v) else round(v, 4)

    rows = faith.summary.merge(sanity.summary, on=["target", "target_name"], suffixes=("", "_sanity"))
    cols = ["ratio", "deletion_abc", "insertion_abc", "beats_random", "rho_distiller", "rho_last_block", "flagged"]
    return {"method": faith.method, "image_ids": list(faith.image_ids), "encoder_random": bool(sanity.encoder_random),
            "targets": [{"target": int(r["target"]), "name": r["target_name"], **{c: clean(r[c]) for c in cols}}
                        for _, r in rows.iterrows()]}


SUMMARY_FILE = "explanation-checks.json"  # in a bundle's cache/: the digest analyze --faithfulness wrote


def write_summary(cache_dir: str | Path, summary: dict) -> Path:
    """Write ``summary`` (``summary_json``) as ``cache_dir/SUMMARY_FILE`` (temporary name + rename)."""
    import json
    import os

    path = Path(cache_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, path)
    return path


def read_summary(bundle) -> dict | None:
    """The digest ``analyze --faithfulness`` stored in the bundle (``summary_json``), or None."""
    import json

    path = Path(bundle.cache_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


__all__ = ["CHECKS_VERSION", "CheckSource", "FaithfulnessReport", "SanityReport", "analysis_checks", "analysis_sample",
           "check_sample", "check_targets", "checks_method", "checks_missing", "faithfulness_from_rows", "faithfulness_report",
           "faithfulness_key", "faithfulness_store", "fill_faithfulness", "fill_sanity", "image_seed", "read_summary", "run_checks",
           "sanity_from_rows", "sanity_report", "sanity_store", "summary_json", "write_summary", "SUMMARY_FILE"]
