"""Explanations you can check (docs/design.md §7): faithfulness curves and the parameter-randomisation sanity check
of a bundle's relevance maps, per target (16 dimensions + the fake logit), cached like the maps.

What the figures test: whether the maps are faithful to **this model** (removing patches in a map's order
changes its target faster than removing them at random; the maps agree with each patch's occlusion effect;
the maps change when the model's weights are redrawn), not whether the pattern a map points at is a real
artifact of generated images.

Entry points for the app and the CLI: ``faithfulness_report(bundle, image_ids, method)`` (with the
occlusion agreement) and
``sanity_report(bundle, image_ids, method)`` (computed once per image, then read from the bundle's
``cache/``), ``checks_missing`` (what a call would have to compute), ``check_sample`` (the seeded sample of
labelled images, both classes) and ``analysis_checks(bundle)`` (the reports ``analyze --faithfulness N``
stored). The figures and their definitions: ``method.faithfulness`` and ``method.sanity``.

Cache: ``RowStore``s in the bundle's ``cache/``, named by the check, its version and parameters, the method,
the encoder's ``cache_key`` and the distiller's fingerprint: one row per image and target (key
``IMAGE_ID/TARGET``) of curves ``[6 + n_random, steps + 1]`` (float32: ``faithfulness.CURVES`` then each random
order's deletion curve; a view asks for the targets it shows); one row per image of occlusion agreements
``[17]``; one row per image of sanity similarities ``[n_seeds, sanity.MAX_STEPS, 17, 2]`` and one of target
sensitivities ``[17]`` (always all 17). The tables are made from the rows on every call (cheap).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import InputError
from ..inputs.imageio import decode_image, read_checked
from ..method.bundle_models import bundle_distiller, bundle_models
from ..method.faithfulness import (
    CURVES,
    DEFAULT_BASELINE,
    FAITHFULNESS_VERSION,
    DeletionInsertion,
    mean_curves,
    occlusion_agreement,
    occlusion_summary,
    patch_counts,
    per_image_table,
    summarise,
)
from ..method.relevance_store import bundle_maps, compute_missing_maps, map_store
from ..method.sanity import (
    DEFAULT_SEEDS,
    MAX_STEPS,
    SANITY_VERSION,
    SIMILARITIES,
    ParameterRandomisation,
    cascade_table,
    summarise_similarity,
    valid_steps,
)
from ..storage import schema as S
from ..storage.cache import RowStore
from .checks_digest import SUMMARY_FILE, checks_line, read_summary, write_summary

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from ..method.distiller import Distiller

CHECKS_VERSION = 3  # bump when what is stored per image changes (with the methods' own versions)
DEFAULT_STEPS = 16
DEFAULT_RANDOM = 16
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
    distiller: Distiller
    encoder_random: bool
    load_encoder: Callable[[], object]
    pixels: Callable[[object, list[str]], torch.Tensor]
    maps: Callable[[object, list[str]], np.ndarray]

    @classmethod
    def from_bundle(cls, bundle, method: str, encoder=None) -> CheckSource:
        """The source of an open ``Bundle`` (its encoder, or ``encoder``, loaded on a cache miss only)."""
        enc_info = bundle.encoder_info
        is_random = enc_info.source == "random" or (enc_info.source == "unknown"
                                                    and S.is_random_clip(enc_info.model_id))

        def pixels(enc, ids: list[str]) -> torch.Tensor:
            return enc.preprocess([bundle.decode(i, "its explanation checks") for i in ids])

        return cls(bundle.cache_dir, enc_info.cache_key if encoder is None else encoder.cache_key,
                   enc_info.patch_side, bundle_distiller(bundle), is_random,
                   lambda: bundle_models(bundle, encoder)[0], pixels,
                   lambda enc, ids: np.asarray(bundle_maps(bundle, ids, method, encoder=enc), np.float32))

    @classmethod
    def from_files(cls, cache_dir: str | Path, info, load_encoder: Callable[[], object], distiller,
                   images: pd.DataFrame, method: str) -> CheckSource:
        """The source of a running ``analyze``: ``info`` (the checkpoint's ``CheckpointInfo``), its encoder
        loader, distiller and images (``image_id``, ``path``); the maps come from, or go into, the run's map
        store (``relevance_store.map_store``)."""
        store = map_store(cache_dir, info.cache_key, distiller.fingerprint, method, info.patch_side)
        paths = dict(zip(images["image_id"], images["path"]))

        def pixels(enc, ids: list[str]) -> torch.Tensor:
            return enc.preprocess([decode_image(read_checked(paths[i], i), paths[i]) for i in ids])

        def maps(enc, ids: list[str]) -> np.ndarray:
            rows = pd.DataFrame({"image_id": ids, "path": [paths[i] for i in ids]})
            compute_missing_maps(store, enc, distiller, rows, method, decoder="inline")
            return np.asarray(store.get(ids), np.float32)

        return cls(Path(cache_dir), info.cache_key, info.patch_side, distiller, info.source == "random",
                   load_encoder, pixels, maps)


@dataclass
class FaithfulnessReport:
    """``summary`` (one row per target, ``faithfulness.SUMMARY_COLUMNS`` plus occlusion_rho, occlusion_low,
    occlusion_high), ``per_image`` (image_id, target, target_name, deletion_abc, insertion_abc,
    deletion_abc_mask, insertion_abc_mask, ratio, ratio_low, ratio_high, delta, occlusion_rho), ``curves``
    (mean normalised curves: target, target_name, curve, x, y), ``x`` ``[steps + 1]``, ``method``, ``image_ids``."""

    summary: pd.DataFrame
    per_image: pd.DataFrame
    curves: pd.DataFrame
    x: np.ndarray
    method: str
    image_ids: list[str]


@dataclass
class SanityReport:
    """``summary`` (one row per target, ``sanity.SANITY_COLUMNS``), ``per_image`` (image_id, target,
    target_name, rho_distiller, rho_cascade, ssim_distiller, ssim_cascade, target_rho: means over seeds),
    ``cascade`` (``sanity.cascade_table``), ``encoder_random``, ``method``, ``image_ids``."""

    summary: pd.DataFrame
    per_image: pd.DataFrame
    cascade: pd.DataFrame
    encoder_random: bool
    method: str
    image_ids: list[str]


# ----------------------------------------------------------------------------- stores


def faithfulness_store(cache_dir: str | Path, encoder_key: str, distiller_fingerprint: str, method: str,
                       steps: int = DEFAULT_STEPS, n_random: int = DEFAULT_RANDOM, random_state: int = 0) -> RowStore:
    """Rows ``[6 + n_random, steps + 1]`` float32, one per image and target (key ``faithfulness_key``): the
    scored deletion / insertion curves (``faithfulness.CURVES``), then each random order's deletion curve.
    Per target, because the map curves cost most: a view asks for the targets it shows."""
    name = (f"faith-v{CHECKS_VERSION}.{FAITHFULNESS_VERSION}-{method}-s{int(steps)}-r{int(n_random)}-"
            f"{DEFAULT_BASELINE}-seed{int(random_state)}-{encoder_key}-{distiller_fingerprint}")
    return RowStore(cache_dir, name, (len(CURVES) + int(n_random), int(steps) + 1))


def occlusion_store(cache_dir: str | Path, encoder_key: str, distiller_fingerprint: str, method: str) -> RowStore:
    """Rows ``[17]`` float32, one per image: the rank agreement of each target's map with the patches'
    occlusion effects (``faithfulness.occlusion_agreement``)."""
    name = (f"occlusion-v{CHECKS_VERSION}.{FAITHFULNESS_VERSION}-{method}-{DEFAULT_BASELINE}-{encoder_key}-"
            f"{distiller_fingerprint}")
    return RowStore(cache_dir, name, (S.N_TARGETS,))


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
    """Rows ``[n_seeds, MAX_STEPS, 17, 2]`` float32 per image: ``sanity.SIMILARITIES`` after each cascade step
    (NaN beyond the model's blocks)."""
    name = (f"sanity-v{CHECKS_VERSION}.{SANITY_VERSION}-{method}-n{DEFAULT_SEEDS}-seed{int(random_state)}-"
            f"{encoder_key}-{distiller_fingerprint}")
    return RowStore(cache_dir, name, (DEFAULT_SEEDS, MAX_STEPS, S.N_TARGETS, len(SIMILARITIES)))


def target_store(cache_dir: str | Path, encoder_key: str, distiller_fingerprint: str, method: str) -> RowStore:
    """Rows ``[17]`` float32 per image: target sensitivity (``sanity.target_sensitivity``)."""
    name = f"targets-v{CHECKS_VERSION}.{SANITY_VERSION}-{method}-{encoder_key}-{distiller_fingerprint}"
    return RowStore(cache_dir, name, (S.N_TARGETS,))


def image_seed(image_id: str) -> int:
    """A stable per-image seed of the random baselines (so an image's figures never depend on its batch)."""
    return int(hashlib.sha1(str(image_id).encode()).hexdigest()[:8], 16)


def _stores(src: CheckSource, method: str, steps: int, n_random: int, random_state: int
            ) -> tuple[RowStore, RowStore, RowStore, RowStore]:
    """(faithfulness, sanity, occlusion, target-sensitivity) stores of ``src``."""
    fp = src.distiller.fingerprint
    return (faithfulness_store(src.cache_dir, src.encoder_key, fp, method, steps, n_random, random_state),
            sanity_store(src.cache_dir, src.encoder_key, fp, method, random_state),
            occlusion_store(src.cache_dir, src.encoder_key, fp, method),
            target_store(src.cache_dir, src.encoder_key, fp, method))


# ----------------------------------------------------------------------------- compute


def _faith_todo(store: RowStore, occ: RowStore, ids: list[str], targets: list[int]) -> tuple[list[str], set[str]]:
    """(images with a missing curve row or occlusion row, the missing curve keys)."""
    missing = set(store.missing([faithfulness_key(i, t) for i in ids for t in targets]))
    no_occ = set(occ.missing(ids))
    todo = [i for i in ids if i in no_occ or any(faithfulness_key(i, t) in missing for t in targets)]
    return todo, missing


def fill_faithfulness(src: CheckSource, ids: list[str], method: str, targets: Sequence[int] | None = None,
                      steps: int = DEFAULT_STEPS, n_random: int = DEFAULT_RANDOM, random_state: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> RowStore:
    """Faithfulness rows of ``ids`` x ``targets`` (None: all 17) and the images' occlusion agreements,
    computed where missing, ``CHUNK`` images at a time (one evaluation per chunk for the targets its images
    lack); returns the curve store. The random baselines are seeded per image, so rows computed in separate
    calls agree."""
    store, _, occ, _ = _stores(src, method, steps, n_random, random_state)
    targets = check_targets(targets)
    todo, missing = _faith_todo(store, occ, ids, targets)
    if progress:
        progress(0, len(todo))
    if not todo:
        return store
    encoder = src.load_encoder()
    metric = DeletionInsertion(encoder, src.distiller, steps=steps, n_random=n_random, random_state=random_state)
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        px, maps = src.pixels(encoder, chunk), src.maps(encoder, chunk)
        need = [t for t in targets if any(faithfulness_key(i, t) in missing for i in chunk)]
        if need:
            res = metric.evaluate(px, maps[:, need], target=need, seeds=[image_seed(i) for i in chunk])
            store.put([faithfulness_key(i, t) for i in chunk for t in need],
                      res.rows.reshape(-1, len(CURVES) + int(n_random), int(steps) + 1).astype(np.float32))
        lack = [k for k, i in enumerate(chunk) if i not in occ]
        if lack:
            effects = metric.occlusion(px[lack])
            occ.put([chunk[k] for k in lack], occlusion_agreement(maps[lack], effects).astype(np.float32))
        if progress:
            progress(min(start + CHUNK, len(todo)), len(todo))
    return store


def fill_sanity(src: CheckSource, ids: list[str], method: str, random_state: int = 0,
                progress: Callable[[int, int], None] | None = None) -> RowStore:
    """Sanity rows (cascade similarities and target sensitivity) for ``ids``, computed where missing;
    returns the similarity store."""
    _, store, _, tstore = _stores(src, method, DEFAULT_STEPS, DEFAULT_RANDOM, random_state)
    todo = sorted(set(store.missing(ids)) | set(tstore.missing(ids)), key=ids.index)
    if progress:
        progress(0, len(todo))
    if not todo:
        return store
    encoder = src.load_encoder()
    test = ParameterRandomisation(encoder, src.distiller, method, random_state=random_state,
                                  n_seeds=DEFAULT_SEEDS, encoder_random=src.encoder_random)
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        res = test.evaluate(src.pixels(encoder, chunk), target=None, original=src.maps(encoder, chunk))
        store.put(chunk, res.similarity.astype(np.float32))
        tstore.put(chunk, res.target_rho.astype(np.float32))
        if progress:
            progress(min(start + CHUNK, len(todo)), len(todo))
    return store


# ----------------------------------------------------------------------------- reports


def faithfulness_from_rows(curves: np.ndarray, ids: list[str], method: str, steps: int, side: int,
                           targets: Sequence[int] | None = None, occlusion: np.ndarray | None = None,
                           random_state: int = 0) -> FaithfulnessReport:
    """The report from stored rows ``[n, K, 6 + n_random, steps + 1]`` of ``targets`` (None: all 17) and the
    occlusion agreements ``[n, 17]`` (None: NaN)."""
    x = patch_counts(side * side, steps) / (side * side)
    targets = check_targets(targets)
    curves = np.asarray(curves, np.float64)
    occ = np.full((len(ids), S.N_TARGETS), np.nan) if occlusion is None else np.asarray(occlusion, np.float64)
    summary = summarise(curves, x, targets, random_state=random_state).merge(
        occlusion_summary(occ[:, targets], targets).drop(columns=["target_name", "n_images"]), on="target")
    per_image = per_image_table(curves, x, targets, ids)
    per_image["occlusion_rho"] = occ[:, targets].reshape(-1)
    return FaithfulnessReport(summary, per_image, mean_curves(curves, x, targets), x, method, ids)


def sanity_from_rows(similarity: np.ndarray, target_rho: np.ndarray, ids: list[str], method: str,
                     encoder_random: bool) -> SanityReport:
    """The report from stored similarities ``[n, seeds, MAX_STEPS, 17, 2]`` and target sensitivities
    ``[n, 17]``."""
    import warnings

    sim = np.asarray(similarity, np.float64)
    trho = np.asarray(target_rho, np.float64)
    targets = list(range(S.N_TARGETS))
    summary = summarise_similarity(sim, trho, targets, encoder_random)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per = np.nanmean(sim, axis=1)  # [n, steps, 17, 2]
    last = max(valid_steps(sim) - 1, 0)
    k = S.N_TARGETS
    per_image = pd.DataFrame({"image_id": np.repeat(np.asarray(ids, dtype=object), k),
                              "target": np.tile(np.arange(k), len(ids)),
                              "target_name": np.tile(np.asarray(S.TARGET_NAMES, dtype=object), len(ids)),
                              "rho_distiller": per[:, 0, :, 0].reshape(-1),
                              "rho_cascade": per[:, last, :, 0].reshape(-1),
                              "ssim_distiller": per[:, 0, :, 1].reshape(-1),
                              "ssim_cascade": per[:, last, :, 1].reshape(-1),
                              "target_rho": trho.reshape(-1)})
    return SanityReport(summary, per_image, cascade_table(sim, targets), encoder_random, method, ids)


def _check_method(method: str) -> str:
    if method not in S.RELEVANCE_METHODS:
        raise InputError(f"Unknown relevance method '{method}'.", f"use one of: {', '.join(S.RELEVANCE_METHODS)}.")
    return method


def _read_faithfulness(src: CheckSource, ids: list[str], method: str, targets: list[int], steps: int,
                       n_random: int, random_state: int) -> FaithfulnessReport:
    """The faithfulness report of ``ids`` x ``targets`` from the stores (every row present)."""
    store, _, occ, _ = _stores(src, method, steps, n_random, random_state)
    rows = store.get([faithfulness_key(i, t) for i in ids for t in targets])
    curves = np.asarray(rows).reshape(len(ids), len(targets), len(CURVES) + int(n_random), int(steps) + 1)
    return faithfulness_from_rows(curves, ids, method, steps, src.side, targets, np.asarray(occ.get(ids)),
                                  random_state)


def faithfulness_report(bundle, image_ids: Sequence[str], method: str = S.DEFAULT_METHOD, encoder=None,
                        targets: Sequence[int] | None = None, steps: int = DEFAULT_STEPS,
                        n_random: int = DEFAULT_RANDOM, random_state: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> FaithfulnessReport:
    """Deletion / insertion figures and occlusion agreement of ``method``'s maps for ``image_ids`` x
    ``targets`` (None: all 17) of an open ``Bundle``; each image and target is computed once (the maps
    too), then read from the bundle's cache. The encoder loads on a miss only. ``progress(done, total)``
    counts images."""
    ids = bundle.check_ids(image_ids)
    targets = check_targets(targets)
    src = CheckSource.from_bundle(bundle, _check_method(method), encoder)
    fill_faithfulness(src, ids, method, targets, steps, n_random, random_state, progress)
    return _read_faithfulness(src, ids, method, targets, steps, n_random, random_state)


def sanity_report(bundle, image_ids: Sequence[str], method: str = S.DEFAULT_METHOD, encoder=None,
                  random_state: int = 0, progress: Callable[[int, int], None] | None = None) -> SanityReport:
    """Cascading parameter-randomisation and target-sensitivity figures and verdicts of ``method``'s maps
    for ``image_ids`` of an open ``Bundle`` (cached per image like ``faithfulness_report``)."""
    ids = bundle.check_ids(image_ids)
    src = CheckSource.from_bundle(bundle, _check_method(method), encoder)
    store = fill_sanity(src, ids, method, random_state, progress)
    tstore = _stores(src, method, DEFAULT_STEPS, DEFAULT_RANDOM, random_state)[3]
    return sanity_from_rows(np.asarray(store.get(ids)), np.asarray(tstore.get(ids)), ids, method, src.encoder_random)


def checks_missing(bundle, image_ids: Sequence[str], method: str = S.DEFAULT_METHOD, encoder=None,
                   targets: Sequence[int] | None = None, steps: int = DEFAULT_STEPS, n_random: int = DEFAULT_RANDOM,
                   random_state: int = 0) -> dict[str, list[str]]:
    """``{"faithfulness": ids, "sanity": ids}``: the images each report would compute for ``targets`` (None:
    all 17; the occlusion agreement comes with the faithfulness report; the sanity check always covers all
    17). Empty lists: everything is cached."""
    ids = bundle.check_ids(image_ids)
    targets = check_targets(targets)
    faith, sanity, occ, tstore = _stores(CheckSource.from_bundle(bundle, method, encoder), method, steps, n_random,
                                         random_state)
    no_sanity = set(sanity.missing(ids)) | set(tstore.missing(ids))
    return {"faithfulness": _faith_todo(faith, occ, ids, targets)[0], "sanity": [i for i in ids if i in no_sanity]}


def run_checks(src: CheckSource, ids: list[str], method: str,
               progress: Callable[[str, int, int], None] | None = None
               ) -> tuple[FaithfulnessReport, SanityReport, tuple[RowStore, ...]]:
    """Both checks with the default parameters on ``ids`` (computed where missing): the reports and their
    stores. ``progress(check, done, total)``, ``check`` "faithfulness" or "sanity"."""
    def report(name: str):
        return (lambda d, t: progress(name, d, t)) if progress else None

    fill_faithfulness(src, ids, method, progress=report("faithfulness"))
    fill_sanity(src, ids, method, progress=report("sanity"))
    stores = _stores(src, method, DEFAULT_STEPS, DEFAULT_RANDOM, 0)
    faith = _read_faithfulness(src, ids, method, list(range(S.N_TARGETS)), DEFAULT_STEPS, DEFAULT_RANDOM, 0)
    sanity = sanity_from_rows(np.asarray(stores[1].get(ids)), np.asarray(stores[3].get(ids)), ids, method,
                              src.encoder_random)
    return faith, sanity, stores


# ----------------------------------------------------------------------------- the analyze-time sample


def check_sample(images: pd.DataFrame, n: int, random_state: int = 0) -> list[str]:
    """A seeded sample of ``n`` labelled images (``image_id``, ``label``): half fake (rounded down), half real,
    the other class filling in where one has too few; independent of the table's row order."""
    if int(n) < 0:
        raise InputError(f"--faithfulness {n}: the sample size cannot be negative.", "use 0 (off) or e.g. 16.")
    rng = np.random.default_rng(int(random_state))
    pools = {}
    for label in S.LABELS:
        ids = np.sort(images.loc[images["label"] == label, "image_id"].astype(str).to_numpy())
        pools[label] = list(ids[rng.permutation(len(ids))])
    want = {"fake": int(n) // 2, "real": int(n) - int(n) // 2}
    short = {k: max(want[k] - len(pools[k]), 0) for k in want}
    want = {"fake": want["fake"] + short["real"], "real": want["real"] + short["fake"]}
    return pools["fake"][:want["fake"]] + pools["real"][:want["real"]]


def checks_method(options: S.AnalysisOptions) -> str:
    """The relevance method ``analyze --faithfulness`` checks: the run's ``--relevance``, else the default."""
    method = options.relevance
    return method if method in S.RELEVANCE_METHODS else S.DEFAULT_METHOD


def analysis_sample(bundle) -> list[str]:
    """The images ``analyze --faithfulness N`` checked (empty when it was off)."""
    n = bundle.options.faithfulness
    return check_sample(bundle.images, n, bundle.options.random_state) if n > 0 else []


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
    and, per target, the faithfulness ratio with its interval and verdict, the areas between curves, the
    occlusion agreement, the sanity similarities, status and flag."""
    def clean(v):
        if isinstance(v, str):
            return v
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        v = float(v)
        return None if math.isnan(v) else round(v, 4)

    rows = faith.summary.merge(sanity.summary.drop(columns=["n_images"]), on=["target", "target_name"])
    cols = ["ratio", "ratio_low", "ratio_high", "verdict", "n_images", "deletion_abc", "insertion_abc", "beats_random",
            "occlusion_rho", "rho_distiller", "rho_cascade", "target_rho", "status", "flagged"]
    return {"method": faith.method, "image_ids": list(faith.image_ids), "encoder_random": bool(sanity.encoder_random),
            "targets": [{"target": int(r["target"]), "name": r["target_name"], **{c: clean(r[c]) for c in cols}}
                        for _, r in rows.iterrows()]}


__all__ = ["CHECKS_VERSION", "CheckSource", "FaithfulnessReport", "SanityReport", "analysis_checks", "analysis_sample",
           "check_sample", "check_targets", "checks_line", "checks_method", "checks_missing", "faithfulness_from_rows",
           "faithfulness_report", "faithfulness_key", "faithfulness_store", "fill_faithfulness", "fill_sanity",
           "image_seed", "occlusion_store",
           "read_summary", "run_checks", "target_store",
           "sanity_from_rows", "sanity_report", "sanity_store", "summary_json", "write_summary", "SUMMARY_FILE"]
