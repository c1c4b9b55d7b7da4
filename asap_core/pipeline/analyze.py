"""``analyze``: from an image folder to a bundle, every heavy step through the content-keyed cache."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from ..storage.bundle import Z_COLUMNS, write_bundle
from ..storage.cache import RowStore, cached_call, default_cache_dir, free_disk_bytes, hash_key
from ..model.device import dtype_name
from ..errors import ImageLoadError, InputError
from ..inputs.imageio import decode_image, file_sha1, read_bytes
from ..inputs.scan import scan_folder

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

# progress(stage, done, total): the CLI draws tqdm bars, the app a st.progress
StageProgress = Callable[[str, int, int], None]
RELEVANCE_METHODS = ("none", "last-block", "rollout")


@dataclass
class AnalyzeOptions:
    """Options of ``analyze``; ``None`` model means ``$ASAP_MODEL`` or the default ViT-B/32."""

    model: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    num_workers: int | None = None
    decoder: str = "auto"  # embedding.DECODERS; "thread" where worker processes cannot start (Streamlit)
    compile: bool | None = None
    relevance_batch_size: int | None = None  # None: 128 on GPU, 8 on CPU (device.relevance_batch_size)
    dtype: str | None = None  # None / "auto": bf16 on GPU, fp32 on CPU ($ASAP_CPU_BF16=1: bf16 where native)
    relevance: str = "none"
    grid: int = 24
    projection_file: str | None = None
    projection_samples: int = 128
    distiller: str | None = None
    cache_dir: str | None = None
    seed: int = 0


@dataclass
class AnalyzeReport:
    """What ``analyze`` found and did: counts, skipped files with reasons, metrics, seconds per stage."""

    bundle: Path
    layout: str
    n_found: int
    n_used: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable multi-line summary (what the CLI prints at the end)."""
        lines = [f"Bundle written: {self.bundle}", f"Layout: {self.layout}",
                 f"Images found: {self.n_found}  used: {self.n_used}  skipped: {len(self.skipped)}"]
        for path, reason in self.skipped[:50]:
            lines.append(f"  skipped {path}: {reason}")
        if len(self.skipped) > 50:
            lines.append(f"  ... and {len(self.skipped) - 50} more (all listed in bundle.json)")
        val = self.metrics.get("val")
        if val:
            lines.append(f"Validation ({val['n']} images): accuracy {val['accuracy']:.3f}  AP {val['ap']:.3f}  "
                         f"ROC-AUC {val['roc_auc']:.3f}")
        if "max_offdiag_cos" in self.metrics:
            lines.append(f"Dimensions: max off-diagonal |cos| {self.metrics['max_offdiag_cos']:.3f}")
        if "generator_val_accuracy" in self.metrics:
            lines.append(f"Generator head: validation accuracy {self.metrics['generator_val_accuracy']:.3f}")
        lines.append("Time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


def hash_files(paths: list[str], progress: StageProgress | None = None) -> tuple[list[str | None], list[tuple[str, str]]]:
    """SHA-1 image ids for ``paths`` (None where unreadable) and the unreadable files with reasons."""
    ids: list[str | None] = []
    bad: list[tuple[str, str]] = []
    for n, p in enumerate(paths):
        try:
            ids.append(file_sha1(p))
        except ImageLoadError as exc:
            ids.append(None)
            bad.append((p, exc.reason))
        if progress and (n % 256 == 0 or n == len(paths) - 1):
            progress("hash", n + 1, len(paths))
    return ids, bad


def dedupe(images: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Keep the first file of each image id; report the others (label conflicts named as such)."""
    first = images.drop_duplicates("image_id")
    dup = images[images.duplicated("image_id")]
    reasons = []
    lookup = first.set_index("image_id")
    for row in dup.itertuples():
        orig = lookup.loc[row.image_id]
        if row.label != orig["label"] and row.label is not None and orig["label"] is not None:
            reasons.append((row.path, f"label conflict: same bytes as {orig['path']} labelled {orig['label']}, "
                                      f"here labelled {row.label}; the first one is kept"))
        else:
            reasons.append((row.path, f"duplicate of {orig['path']}; the first one is kept"))
    return first.reset_index(drop=True), reasons


@contextmanager
def _timed(timings: dict[str, float], name: str):
    t0 = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


def _sample_images(paths: list[str], n: int, seed: int) -> tuple[list[int], list]:
    """Up to ``n`` decoded PIL images from ``paths`` (a seeded sample; unreadable ones are passed over),
    and their positions in ``paths``."""
    rng = np.random.default_rng(seed)
    idx, out = [], []
    for i in rng.permutation(len(paths)):
        try:
            out.append(decode_image(read_bytes(paths[i]), paths[i]))
        except ImageLoadError:
            continue
        idx.append(int(i))
        if len(out) >= n:
            break
    return idx, out


def _fit_projection(images: pd.DataFrame, embeds: np.ndarray, n: int, seed: int, embed_images: Callable,
                    exact_decode: bool):
    """``VisionOnlyProjection`` from ``n`` sampled images of ``images`` (rows of ``embeds [N, D]``).

    With ``exact_decode`` (the embedding pass decoded exactly as ``embed_images`` does: fp32) the sample's
    embeddings are taken from ``embeds`` and only its texted copies go through the model; otherwise
    (JPEG draft / nvJPEG for bf16) both are embedded the same way, so that their difference is the text.
    """
    from ..method.projection import VisionOnlyProjection

    idx, sample = _sample_images(images["path"].tolist(), n, seed)
    return VisionOnlyProjection(random_state=seed).fit(
        sample, embed_images, clean_embeds=embeds, image_embeds=embeds[idx] if exact_decode else None)


def embedding_store_name(encoder_key: str, dtype: "torch.dtype") -> str:
    """Cache store of the embeddings of one encoder run in one dtype: ``emb-KEY`` (fp32), ``emb-KEY-bfloat16``.

    The dtype is part of the key because bf16 (GPU, opt-in CPU) embeddings differ from fp32 ones
    (cosine ~0.9999): one store never mixes them, and a fp32 run never reuses bf16 rows.
    """
    name = dtype_name(dtype)
    return f"emb-{encoder_key}" if name == "float32" else f"emb-{encoder_key}-{name}"


def analyze(data_dir: str | Path, out: str | Path, options: AnalyzeOptions | None = None,
            progress: StageProgress | None = None) -> AnalyzeReport:
    """Scan ``data_dir``, embed (cached), fit projection and distiller (cached), lay out, write the bundle ``out``."""
    from ..method.distiller import Distiller
    from ..model.embedding import DECODERS, approximate_decoding, embed_files
    from ..model.device import resolve_dtype
    from ..model.encoder import ClipEncoder, inspect_checkpoint, resolve_device
    from ..method.layout import assign_cells, cell_table, embed_2d
    from ..method.projection import VisionOnlyProjection
    from ..method.training import DistillerTrainer

    opt = options or AnalyzeOptions()
    if opt.relevance not in RELEVANCE_METHODS:
        raise InputError(f"--relevance {opt.relevance} is not one of {', '.join(RELEVANCE_METHODS)}.", "")
    if opt.decoder not in DECODERS:
        raise InputError(f"decoder {opt.decoder!r} is not one of {', '.join(DECODERS)}.", "use decoder='auto'.")
    device = resolve_device(opt.device)
    dtype = resolve_dtype(opt.dtype, device)  # checked before any work
    cache = Path(opt.cache_dir) if opt.cache_dir else default_cache_dir()
    timings: dict[str, float] = {}
    with _timed(timings, "scan"):
        scan = scan_folder(data_dir)
        skipped = list(scan.skipped)
        images = scan.images.copy()
    with _timed(timings, "hash"):
        ids, bad = hash_files(images["path"].tolist(), progress)
        skipped += bad
        images["image_id"] = ids
        images = images[images["image_id"].notna()]
        images, dups = dedupe(images)
        skipped += dups
    labelled = images["label"].notna()
    if opt.distiller is None:
        counts = images.loc[labelled, "label"].value_counts()
        if counts.get("real", 0) < 2 or counts.get("fake", 0) < 2:
            raise InputError(
                f"{scan.root}: found {counts.get('real', 0)} real and {counts.get('fake', 0)} fake images "
                f"({int((~labelled).sum())} unlabelled); the distiller needs at least 2 of each to learn.",
                "put images in real/ and fake/ subfolders (or 0_real/1_fake, nature/ai, REAL/FAKE, or a CSV "
                "with path,label), or pass --distiller OTHER_BUNDLE to apply a distiller trained elsewhere.")
    info = inspect_checkpoint(opt.model)
    loaded: list[ClipEncoder] = []

    def load_encoder() -> ClipEncoder:
        """The model is built only when something needs it (a fully cached run never does)."""
        if not loaded:
            with _timed(timings, "load model"):
                loaded.append(ClipEncoder.from_pretrained(info.model_id, device=opt.device, dtype=dtype))
        return loaded[0]

    embed_store = RowStore(cache, embedding_store_name(info.cache_key, dtype), (info.embed_dim,))
    thumb_store = RowStore(cache, "thumbs-128", None)
    last_inputs = None  # last-block relevance starts from the last layer's input the embedding pass keeps
    if opt.relevance == "last-block":
        from ..method.relevance_store import keeps_last_inputs, last_input_bytes, last_input_store

        if keeps_last_inputs(device) and last_input_bytes(info, len(images)) <= free_disk_bytes(cache) // 2:
            last_inputs = last_input_store(cache, info, dtype)
    with _timed(timings, "embed"):
        failures = embed_files(load_encoder, info.preprocessor, images["path"].tolist(), images["image_id"].tolist(), embed_store,
                               thumb_store, batch_size=opt.batch_size, num_workers=opt.num_workers, decoder=opt.decoder,
                               compile=opt.compile, last_input_store=last_inputs,
                               progress=(lambda d, t: progress("embed", d, t)) if progress else None)
        skipped += failures
        failed_paths = {p for p, _ in failures}
        images = images[~images["path"].isin(failed_paths)].reset_index(drop=True)
        if images.empty:
            raise InputError(f"None of the images in {scan.root} could be decoded.", "see the reasons listed above.")
        embeds = embed_store.get(images["image_id"].tolist())
    y = (images["label"] == "fake").to_numpy()
    labelled = images["label"].notna().to_numpy()
    with _timed(timings, "projection"):
        if opt.distiller is not None:
            distiller = Distiller.from_pretrained(_model_dir(opt.distiller))
            projection = VisionOnlyProjection.from_components(distiller.projection.numpy())
        elif opt.projection_file:
            projection = VisionOnlyProjection.load(opt.projection_file, info.embed_dim)
        else:
            key = hash_key(info.cache_key, embeds, opt.projection_samples, opt.seed)
            projection = cached_call(
                cache, "projection", key,
                lambda: _fit_projection(images, embeds, opt.projection_samples, opt.seed,
                                        lambda ims: load_encoder().encode_images(ims).numpy(),
                                        exact_decode=not approximate_decoding(dtype)),
                lambda p, d: p.save(d / "projection.safetensors"),
                lambda d: VisionOnlyProjection.load(d / "projection.safetensors"))
    trainer_metrics: dict = {}
    with _timed(timings, "train"):
        if opt.distiller is None:
            trainer = DistillerTrainer(seed=opt.seed)
            split = images["split"].to_numpy(dtype=object)
            gens = images["generator"].to_numpy(dtype=object)
            idx = np.flatnonzero(labelled)
            key = hash_key(embeds[idx], y[idx], split[idx].astype(str), gens[idx].astype(str),
                           projection.components_, trainer.get_params())

            def fit():
                t = trainer.fit(embeds[idx], y[idx], projection.components_, split=split[idx], generators=gens[idx])
                return t.model_, t.metrics_

            def save(res, d):
                res[0].save_pretrained(d)
                (d / "metrics.json").write_text(__import__("json").dumps(res[1], default=float))

            def load(d):
                return Distiller.from_pretrained(d), __import__("json").loads((d / "metrics.json").read_text())

            distiller, trainer_metrics = cached_call(cache, "distiller", key, fit, save, load)
        z, p_fake = distiller.predict(embeds)
    with _timed(timings, "layout"):
        images = _prediction_columns(images, z, p_fake)
        xy = cached_call(cache, "map2d", hash_key(z, opt.seed), lambda: embed_2d(z, random_state=opt.seed),
                         lambda a, d: np.save(d / "xy.npy", a), lambda d: np.load(d / "xy.npy"))
        images["map_x"], images["map_y"] = xy[:, 0], xy[:, 1]
        images["cell"], images["col"], images["row"] = assign_cells(xy, opt.grid)
        cells = cell_table(images, opt.grid)
    rel_store = None
    if opt.relevance != "none":
        from ..method.relevance_store import precompute_relevance

        with _timed(timings, f"relevance ({opt.relevance})"):
            rel_store = precompute_relevance(cache, info, load_encoder, distiller, images, opt.relevance,
                                             batch_size=opt.relevance_batch_size, decoder=opt.decoder,
                                             last_inputs=last_inputs,
                                             progress=(lambda d, t: progress("relevance", d, t)) if progress else None)
    metrics = dict(trainer_metrics)
    if labelled.any() and opt.distiller is not None:
        from ..method.training import classification_metrics

        metrics["all"] = classification_metrics(y[labelled], p_fake[labelled])
        metrics["max_offdiag_cos"] = distiller.orthogonality()
    with _timed(timings, "write"):
        ids_list = images["image_id"].tolist()
        meta = {
            "data_dir": str(scan.root.resolve()), "layout": scan.layout,
            "encoder": {"model_id": info.model_id, "cache_key": info.cache_key,
                        "dtype": dtype_name(dtype),
                        "embed_dim": info.embed_dim, "patch_side": info.patch_side,
                        "image_size": info.image_size},
            "preprocessing": info.preprocessor.version,
            "options": {k: v for k, v in vars(opt).items() if k != "cache_dir"},
            "counts": {"found": len(scan.images) + len(scan.skipped), "used": len(images),
                       "real": int((images["label"] == "real").sum()), "fake": int((images["label"] == "fake").sum()),
                       "unlabelled": int(images["label"].isna().sum()), "cells": len(cells)},
            "metrics": metrics,
            "skipped": [{"path": p, "reason": r} for p, r in skipped],
            "timings": timings,
        }

        def model_writer(d: Path) -> None:
            distiller.save_pretrained(d)
            projection.save(d / "projection.safetensors")

        bundle = write_bundle(out, meta, images, cells, (ids_list, thumb_store.get(ids_list)), model_writer,
                              cache_stores=(rel_store,) if rel_store is not None else ())
    return AnalyzeReport(bundle, scan.layout, meta["counts"]["found"], len(images), skipped, metrics, timings)


def _model_dir(path: str) -> Path:
    """A distiller folder, or a bundle whose ``model/`` holds one."""
    p = Path(path).expanduser()
    return p / "model" if (p / "model").is_dir() else p


def _prediction_columns(images: pd.DataFrame, z: np.ndarray, p_fake: np.ndarray) -> pd.DataFrame:
    """Add p_fake, pred, correct (NA when unlabelled), confidence and z0..z15."""
    images = images.copy()
    images["p_fake"] = p_fake.astype(np.float32)
    images["pred"] = np.where(p_fake >= 0.5, "fake", "real")
    correct = pd.Series(images["pred"].to_numpy() == images["label"].to_numpy(), dtype="boolean")
    correct[images["label"].isna().to_numpy()] = pd.NA
    images["correct"] = correct.to_numpy()
    images["confidence"] = np.abs(2 * p_fake - 1).astype(np.float32)
    zdf = pd.DataFrame(z.astype(np.float32), columns=Z_COLUMNS)
    return pd.concat([images.reset_index(drop=True), zdf], axis=1)
