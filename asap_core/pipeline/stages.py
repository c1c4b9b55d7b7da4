"""The stages of ``analyze``, each a function with typed inputs and outputs (docs/design.md §1):

    scan -> hash -> embed -> project -> train -> layout -> relevance -> write

Every heavy result goes through the content-keyed cache (``storage.cache``) under a key that carries
the method's version, so a change of method never reuses a stale result: embeddings per checkpoint,
dtype and ``EMBEDDING_VERSION``; the projection per embeddings, sample and ``PROJECTION_VERSION``; the
distiller per training data and ``TRAINING_VERSION``; the 2-D map per z and ``LAYOUT_VERSION``;
relevance maps per encoder, distiller, method and ``RELEVANCE_VERSION``.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from ..analyses.explanation_checks import (
    CheckSource,
    check_sample,
    checks_method,
    run_checks,
    summary_json,
    write_summary,
)
from ..errors import ImageLoadError, InputError
from ..inputs.imageio import decode_image, file_sha1, read_checked
from ..inputs.scan import ScanResult
from ..method.distiller import Distiller
from ..method.layout import assign_cells, cell_table, default_grid, embed_2d
from ..method.projection import VisionOnlyProjection
from ..method.relevance_store import (
    keeps_last_inputs,
    last_input_bytes,
    last_input_store,
    map_store,
    precompute_relevance,
)
from ..method.training import DistillerTrainer, classification_metrics
from ..model.device import cpu_cores, dtype_name, resolve_dtype
from ..model.embedding import approximate_decoding, decode_batch, embed_files
from ..model.encoder import CheckpointInfo, inspect_checkpoint, resolve_device
from ..model.factory import load_encoder
from ..storage import schema as S
from ..storage.bundle import write_bundle
from ..storage.cache import RowStore, cached_call, default_cache_dir, free_disk_bytes, hash_key
from .options import AnalyzeOptions

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from ..model.encoder import ClipEncoder
    from ..model.preprocess import ClipPreprocessor

# progress(stage, done, total): the CLI draws tqdm bars, the app a st.progress
StageProgress = Callable[[str, int, int], None]
EMBEDDING_VERSION = 1  # bump when the embedding stage computes other values for the same files
PROJECTION_VERSION = 5  # 2: text rendered on the model-input crop; 3: thin SVD when N >= D (no [N, N] matrix);
#                        4: the texted sample scaled to the collection (projection_sample_size);
#                        5: directions from the [D, D] covariance of all N rows summed in chunks (no 50,000-row
#                        sample beyond that size; equal to 4 up to sign below it), signs fixed
LAYOUT_VERSION = 1


@dataclass
class RunContext:
    """What every stage of one ``analyze`` run shares: options, device, precision, the checkpoint, the
    cache folder, the encoder (loaded on first need only), skipped files and seconds per stage."""

    options: AnalyzeOptions
    device: torch.device
    dtype: torch.dtype
    info: CheckpointInfo
    cache: Path
    progress: StageProgress | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _encoder: ClipEncoder | None = None

    @classmethod
    def create(cls, options: AnalyzeOptions, progress: StageProgress | None) -> RunContext:
        """Check the options (before any work) and resolve device, precision and checkpoint."""
        options.check()
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        cache = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
        return cls(options, device, dtype, inspect_checkpoint(options.model), cache, progress)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (seconds add up when a stage runs twice)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def report(self, stage: str) -> Callable[[int, int], None] | None:
        """``progress(done, total)`` for one stage, or None without a progress callback."""
        progress = self.progress
        return (lambda d, t: progress(stage, d, t)) if progress else None

    def encoder(self) -> ClipEncoder:
        """The model, from the one encoder factory; loaded only when a stage needs it (a fully cached run
        never does)."""
        if self._encoder is None:
            with self.stage("load model"):
                self._encoder = load_encoder(self.info.model_id, device=self.options.device, dtype=self.dtype)
        return self._encoder


# ----------------------------------------------------------------------------- hash


def hash_files(paths: list[str], progress: Callable[[int, int], None] | None = None
               ) -> tuple[list[str | None], list[tuple[str, str]]]:
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
            progress(n + 1, len(paths))
    return ids, bad


def dedupe(images: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Keep the first file of each image id; report the others (label conflicts named as such)."""
    first = images.drop_duplicates("image_id")
    dup = images[images.duplicated("image_id")]
    reasons: list[tuple[str, str]] = []
    lookup = first.set_index("image_id")
    for image_id, path, label in zip(dup["image_id"], dup["path"], dup["label"]):
        orig = lookup.loc[image_id]
        if label != orig["label"] and label is not None and orig["label"] is not None:
            reasons.append((path, f"label conflict: same bytes as {orig['path']} labelled {orig['label']}, "
                                  f"here labelled {label}; the first one is kept"))
        else:
            reasons.append((path, f"duplicate of {orig['path']}; the first one is kept"))
    return first.reset_index(drop=True), reasons


def hash_stage(ctx: RunContext, scan: ScanResult, hasher: Callable = hash_files) -> pd.DataFrame:
    """The scanned files with an ``image_id`` column (SHA-1 of the bytes), unreadable files and duplicates
    moved to ``ctx.skipped``. ``hasher(paths, progress)``: ``hash_files`` here, or another engine's
    (``ray_engine``) with the same result."""
    images = scan.images.copy()
    ids, bad = hasher(images["path"].tolist(), ctx.report("hash"))
    ctx.skipped += bad
    images["image_id"] = ids
    images, dups = dedupe(images[images["image_id"].notna()])
    ctx.skipped += dups
    return images


def check_labels(ctx: RunContext, scan: ScanResult, images: pd.DataFrame) -> None:
    """``InputError`` when a distiller is to be trained and the folder lacks 2 real and 2 fake images."""
    if ctx.options.distiller is not None:
        return
    labelled = images["label"].notna()
    counts = images.loc[labelled, "label"].value_counts()
    if counts.get("real", 0) < 2 or counts.get("fake", 0) < 2:
        raise InputError(
            f"{scan.root}: found {counts.get('real', 0)} real and {counts.get('fake', 0)} fake images "
            f"({int((~labelled).sum())} unlabelled); the distiller needs at least 2 of each to learn.",
            "put images in real/ and fake/ subfolders (or 0_real/1_fake, nature/ai, REAL/FAKE, or a CSV "
            "with path,label), or pass --distiller OTHER_BUNDLE to apply a distiller trained elsewhere.")


# ----------------------------------------------------------------------------- embed


def embedding_store_name(encoder_key: str, dtype: torch.dtype) -> str:
    """Cache store of the embeddings of one checkpoint in one dtype: ``emb-v1-KEY`` (fp32),
    ``emb-v1-KEY-bfloat16``. bf16 embeddings differ slightly from fp32 ones: one store never mixes them."""
    name = dtype_name(dtype)
    base = f"emb-v{EMBEDDING_VERSION}-{encoder_key}"
    return base if name == "float32" else f"{base}-{name}"


@dataclass
class Embedded:
    """Output of the embed stage: the images that decoded (``images``), their embeddings ``embeds [N, D]``
    (float32, L2-normalised; one copy, set to None by ``analyze`` once predicted), the thumbnail store and
    the kept last-layer inputs (or None)."""

    images: pd.DataFrame
    embeds: np.ndarray | None
    thumbs: RowStore
    last_inputs: RowStore | None

    def vectors(self) -> np.ndarray:
        """``embeds`` ``[N, D]``; ``RuntimeError`` once ``analyze`` has let them go (after the train stage)."""
        if self.embeds is None:
            raise RuntimeError("the embeddings were let go after the train stage; no later stage reads them")
        return self.embeds


def _last_input_store(ctx: RunContext, n_images: int) -> RowStore | None:
    """Where the embedding pass keeps each image's last-layer input for ``last-block`` relevance, or None
    (another method, not on this device, or not enough free disk)."""
    if ctx.options.relevance != "last-block" or not keeps_last_inputs(ctx.device):
        return None
    if last_input_bytes(ctx.info, n_images) > free_disk_bytes(ctx.cache) // 2:
        return None
    return last_input_store(ctx.cache, ctx.info, ctx.dtype)


def embed_stage(ctx: RunContext, images: pd.DataFrame, root: Path) -> Embedded:
    """Embed (cached per image id) and thumbnail every image; files that fail to decode are skipped."""
    o = ctx.options
    store, thumbs = embedding_stores(ctx)
    last_inputs = _last_input_store(ctx, len(images))
    failures = embed_files(ctx.encoder, ctx.info.preprocessor, images["path"].tolist(), images["image_id"].tolist(),
                           store, thumbs, batch_size=o.batch_size, num_workers=o.num_workers, decoder=o.decoder,
                           compile=o.compile, last_input_store=last_inputs, progress=ctx.report("embed"))
    return keep_embedded(ctx, images, root, failures, (store, thumbs), last_inputs)


def embedding_stores(ctx: RunContext) -> tuple[RowStore, RowStore]:
    """The cache stores every engine's embed stage fills: embeddings ``[D]`` float32, thumbnails (JPEG)."""
    return (RowStore(ctx.cache, embedding_store_name(ctx.info.cache_key, ctx.dtype), (ctx.info.embed_dim,)),
            RowStore(ctx.cache, f"thumbs-v{EMBEDDING_VERSION}-{S.THUMB_SIDE}", None))


def keep_embedded(ctx: RunContext, images: pd.DataFrame, root: Path, failures: list[tuple[str, str]],
                  stores: tuple[RowStore, RowStore], last_inputs: RowStore | None = None) -> Embedded:
    """The embed stage's output once the stores are filled: ``failures`` (path, reason) moved to
    ``ctx.skipped``, the other images with their embeddings; ``InputError`` when none is left."""
    store, thumbs = stores
    ctx.skipped += failures
    failed = {p for p, _ in failures}
    images = images[~images["path"].isin(failed)].reset_index(drop=True)
    if images.empty:
        raise InputError(f"None of the images in {root} could be decoded.", "see the reasons listed above.")
    return Embedded(images, np.asarray(store.get(images["image_id"].tolist())), thumbs, last_inputs)


# ----------------------------------------------------------------------------- project


def sample_order(n_rows: int, random_state: int) -> np.ndarray:
    """The order ``[n_rows]`` in which the projection's sample takes its candidate images (a seeded
    permutation): the first ones that decode are used."""
    return np.random.default_rng(random_state).permutation(n_rows)


def _sample_images(paths: list[str], ids: list[str | None], n: int, random_state: int,
                   preprocessor: ClipPreprocessor | None, workers: int | None = None) -> tuple[list[int], list]:
    """The first ``n`` images of a seeded permutation of ``paths`` that decode (unreadable ones, and files
    whose bytes no longer hash to their id in ``ids``, are passed over), and their positions in ``paths``.
    ``workers``: most decode threads (``AnalyzeOptions.num_workers``; None: one per core).

    With ``preprocessor`` each is cut to the model input right after decoding, by the embedding pass's
    decoder (``embedding.decode_batch``: the very crops it embedded), one thread per core: the sample holds
    ``n`` crops, not ``n`` full-size photos (128 camera photos and their texted copies took over 10 GB).
    Without, the full-size decodes are kept (one thread)."""
    order = [int(i) for i in sample_order(len(paths), random_state)]
    idx: list[int] = []
    out: list[Image.Image] = []
    pos = 0
    while len(out) < n and pos < len(order):  # candidates in order until n decode
        chunk = order[pos:pos + n - len(out)]
        pos += len(chunk)
        for i, image in _decode_sample(paths, ids, chunk, preprocessor, workers):
            idx.append(i)
            out.append(image)
    return idx, out


def _decode_sample(paths: list[str], ids: list[str | None], chunk: list[int],
                   preprocessor: ClipPreprocessor | None, workers: int | None = None
                   ) -> list[tuple[int, Image.Image]]:
    """``(i, PIL image)`` for the ``i`` in ``chunk`` whose files decode, in ``chunk`` order: model-input
    crops (RGB, ``crop x crop``) decoded in threads with ``preprocessor``, else full-size decodes."""
    if preprocessor is None:
        out: list[tuple[int, Image.Image]] = []
        for i in chunk:
            try:
                out.append((i, decode_image(read_checked(paths[i], ids[i]), paths[i])))
            except ImageLoadError:
                continue
        return out
    items = [(i, paths[i], ids[i]) for i in chunk]
    k = max(1, min(cpu_cores() if workers is None else workers, len(items)))
    with ThreadPoolExecutor(k, thread_name_prefix="asap-sample") as pool:
        parts = list(pool.map(lambda j: decode_batch(items[j::k], preprocessor, thumb_side=0), range(k)))
    crops = {i: Image.fromarray(px.transpose(1, 2, 0)) for part in parts for i, px in zip(part.rows, part.pixels)}
    return [(i, crops[i]) for i in chunk if i in crops]


def fit_projection(images: pd.DataFrame, embeds: np.ndarray, n: int, random_state: int, embed_images: Callable,
                   exact_decode: bool, preprocessor: ClipPreprocessor | None = None,
                   workers: int | None = None) -> VisionOnlyProjection:
    """``VisionOnlyProjection`` from ``n`` sampled images of ``images`` (rows of ``embeds [N, D]``; its
    ``image_id`` column, when present, is checked against the bytes decoded).

    With ``exact_decode`` (the embedding pass decoded exactly as ``embed_images`` does: fp32) the sample's
    embeddings are taken from ``embeds`` and only its texted copies go through the model; otherwise
    (JPEG draft / nvJPEG for bf16) both are embedded the same way, so that their difference is the text.
    ``preprocessor``: the model's; each sampled image is cut to the model input (the embedding pass's
    crop) before the text is drawn, so memory stays at ``n`` crops and the text always lands where the
    model looks; ``embed_images`` then gets crops (``ClipEncoder.encode_crops``: normalised, not
    resampled, so ``embeds`` still match). ``None`` keeps the decoded images as they are. ``workers``: most
    decode threads (None: one per core).
    """
    ids = images["image_id"].tolist() if "image_id" in images else [None] * len(images)
    idx, sample = _sample_images(images["path"].tolist(), ids, n, random_state, preprocessor, workers)
    return VisionOnlyProjection(random_state=random_state).fit(
        sample, embed_images, clean_embeds=embeds,
        image_embeds=embeds[idx] if exact_decode else None)


#: Texted copies the projection is fitted on by default: a tenth of the collection, at least
#: ``PROJECTION_MIN_SAMPLES`` and at most ``PROJECTION_MAX_SAMPLES``. Each is a second forward pass (a
#: fixed 128 on 300 images meant 43 % more forward passes than the embedding); the written subspace has
#: ``VisionOnlyProjection.n_text_components`` = 8 directions, estimated from at least 8 differences each.
#: benchmarks/RESULTS.md §21 measures how much of new images' text shift the directions from m images hold.
PROJECTION_MIN_SAMPLES = 64
PROJECTION_MAX_SAMPLES = 128


def projection_sample_size(n_images: int, asked: int | None = None) -> int:
    """Images whose texted copies fit the projection: ``asked`` when given (``AnalyzeOptions.projection_samples``),
    else ``n_images // 10`` clipped to [``PROJECTION_MIN_SAMPLES``, ``PROJECTION_MAX_SAMPLES``]; never more
    than ``n_images``."""
    if asked is not None:
        return int(asked)
    return min(n_images, max(PROJECTION_MIN_SAMPLES, min(PROJECTION_MAX_SAMPLES, n_images // 10)))


def project_stage(ctx: RunContext, emb: Embedded) -> VisionOnlyProjection:
    """The vision-only projection: the given distiller's, a file's, or fitted on a sample (cached) of
    ``projection_sample_size`` images, a number then recorded in ``ctx.options``."""
    o = ctx.options
    if o.distiller is not None:
        given = Distiller.from_pretrained(model_dir(o.distiller))
        return VisionOnlyProjection.from_components(given.projection.numpy())
    if o.projection_file:
        return VisionOnlyProjection.from_pretrained(o.projection_file, ctx.info.embed_dim)
    n = projection_sample_size(len(emb.images), o.projection_samples)
    ctx.options = replace(o, projection_samples=n)  # bundle.json records the number used
    key = hash_key(PROJECTION_VERSION, ctx.info.cache_key, emb.vectors(), n, o.random_state)

    def save(p: VisionOnlyProjection, d: Path) -> None:
        p.save_pretrained(d)

    return cached_call(
        ctx.cache, "projection", key,
        lambda: fit_projection(emb.images, emb.vectors(), n, o.random_state,
                               lambda crops: ctx.encoder().encode_crops(crops).numpy(),
                               exact_decode=not approximate_decoding(ctx.dtype),
                               preprocessor=ctx.info.preprocessor, workers=o.num_workers),
        save, VisionOnlyProjection.from_pretrained)


def model_dir(path: str) -> Path:
    """A distiller folder, or a bundle whose ``model/`` holds one."""
    p = Path(path).expanduser()
    return p / S.MODEL_DIR if (p / S.MODEL_DIR).is_dir() else p


# ----------------------------------------------------------------------------- train


def train_stage(ctx: RunContext, emb: Embedded, projection: VisionOnlyProjection) -> tuple[Distiller, dict]:
    """The distiller (trained on the labelled images, cached; or the given one) and its metrics."""
    images, embeds = emb.images, emb.vectors()
    y = (images["label"] == "fake").to_numpy()
    labelled = images["label"].notna().to_numpy()
    if ctx.options.distiller is not None:
        distiller = Distiller.from_pretrained(model_dir(ctx.options.distiller))
        metrics: dict = {"max_offdiag_cos": distiller.orthogonality()}
        if labelled.any():
            metrics["all"] = classification_metrics(y[labelled], distiller.predict(embeds[labelled])[1])
        return distiller, metrics
    trainer = DistillerTrainer(projection=projection.components_, random_state=ctx.options.random_state)
    idx = np.flatnonzero(labelled)
    split = images["split"].to_numpy(dtype=object)[idx]
    gens = images["generator"].to_numpy(dtype=object)[idx]
    rows = embeds if len(idx) == len(embeds) else embeds[idx]  # all labelled: no second [N, D] copy
    key = hash_key(rows, y[idx], split.astype(str), gens.astype(str), trainer.cache_params())

    def fit() -> tuple[Distiller, dict]:
        t = trainer.fit(rows, y[idx], split=split, generators=gens)
        return t.model_, t.metrics_

    def save(res: tuple[Distiller, dict], d: Path) -> None:
        res[0].save_pretrained(d)
        (d / "metrics.json").write_text(json.dumps(res[1], default=float))

    def load(d: Path) -> tuple[Distiller, dict]:
        return Distiller.from_pretrained(d), json.loads((d / "metrics.json").read_text())

    return cached_call(ctx.cache, "distiller", key, fit, save, load)


# ----------------------------------------------------------------------------- layout


def prediction_columns(images: pd.DataFrame, z: np.ndarray, p_fake: np.ndarray) -> pd.DataFrame:
    """Add p_fake, pred, correct (NA when unlabelled), confidence and z0..z15 (``schema``)."""
    images = images.copy()
    images["p_fake"] = p_fake.astype(np.float32)
    images["pred"] = S.predicted_label(p_fake)
    correct = pd.Series(images["pred"].to_numpy() == images["label"].to_numpy(), dtype="boolean")
    correct[images["label"].isna().to_numpy()] = pd.NA
    images["correct"] = correct.to_numpy()
    images["confidence"] = S.confidence(p_fake).astype(np.float32)
    zdf = pd.DataFrame(z.astype(np.float32), columns=S.Z_COLUMNS)
    return pd.concat([images.reset_index(drop=True), zdf], axis=1)


def layout_stage(ctx: RunContext, images: pd.DataFrame, z: np.ndarray, p_fake: np.ndarray
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images with predictions, map position and cell; the cell table) on the options' grid; without one
    (``grid`` None or 0) on ``default_grid`` of the map, recorded in ``ctx.options`` (so in bundle.json)."""
    images = prediction_columns(images, z, p_fake)
    seed = ctx.options.random_state
    xy = cached_call(ctx.cache, "map2d", hash_key(LAYOUT_VERSION, z, seed), lambda: embed_2d(z, random_state=seed),
                     lambda a, d: np.save(d / "xy.npy", a), lambda d: np.load(d / "xy.npy"))
    images["map_x"], images["map_y"] = xy[:, 0], xy[:, 1]
    grid = ctx.options.grid
    if not grid:
        grid = default_grid(len(xy), xy)
        ctx.options = replace(ctx.options, grid=grid)
    images["cell"], images["col"], images["row"] = assign_cells(xy, grid)
    return images, cell_table(images, grid)


# ----------------------------------------------------------------------------- relevance


def relevance_stage(ctx: RunContext, images: pd.DataFrame, distiller: Distiller,
                    last_inputs: RowStore | None) -> RowStore:
    """Precomputed relevance maps of every image with the options' method (``--relevance``)."""
    return precompute_relevance(ctx.cache, ctx.info, ctx.encoder, distiller, images, ctx.options.relevance,
                                batch_size=ctx.options.relevance_batch_size, decoder=ctx.options.decoder,
                                last_inputs=last_inputs, progress=ctx.report("relevance"))


# ----------------------------------------------------------------------------- explanation checks


@dataclass
class Checks:
    """Output of the checks stage: the stores to copy into the bundle's ``cache/`` (the sample's maps, the
    faithfulness curves, the rank correlations) and their JSON digest (``explanation_checks.summary_json``)."""

    stores: tuple[RowStore, ...]
    summary: dict


def checks_stage(ctx: RunContext, images: pd.DataFrame, distiller: Distiller) -> Checks | None:
    """``--faithfulness N``: deletion / insertion curves and the parameter-randomisation check of the maps
    (the run's ``--relevance`` method, else the default) on a seeded sample of N labelled images of both
    classes (``explanation_checks.check_sample``), cached per image in the run's cache. None when off."""
    n = int(ctx.options.faithfulness or 0)
    ids = check_sample(images, n, ctx.options.random_state) if n > 0 else []
    if not ids:
        return None
    method = checks_method(ctx.options)
    src = CheckSource.from_files(ctx.cache, ctx.info, ctx.encoder, distiller, images, method)
    faith, sanity, stores = run_checks(src, ids, method, progress=ctx.progress)
    maps = map_store(ctx.cache, ctx.info.cache_key, distiller.fingerprint, method, ctx.info.patch_side)
    return Checks((maps, *stores), summary_json(faith, sanity))


def store_checks(bundle: Path, checks: Checks | None) -> None:
    """Copy the checks' stores into the written bundle's ``cache/`` and their digest beside them
    (``explanation_checks.SUMMARY_FILE``). Cache, not bundle: without them the bundle is complete and the
    app computes the checks on demand."""
    if checks is None:
        return
    cache = Path(bundle) / S.CACHE_DIR
    for store in checks.stores:
        store.copy_to(cache)
    write_summary(cache, checks.summary)


# ----------------------------------------------------------------------------- write


@dataclass
class Results:
    """What the write stage puts into the bundle."""

    scan: ScanResult
    images: pd.DataFrame
    cells: pd.DataFrame
    thumbs: RowStore
    distiller: Distiller
    projection: VisionOnlyProjection
    metrics: dict
    maps: RowStore | None


def bundle_meta(ctx: RunContext, r: Results) -> dict:
    """``bundle.json`` (``schema.META_FIELDS``) of a finished run."""
    images = r.images
    counts = S.Counts(found=len(r.scan.images) + len(r.scan.skipped), used=len(images),
                      real=int((images["label"] == "real").sum()), fake=int((images["label"] == "fake").sum()),
                      unlabelled=int(images["label"].isna().sum()), cells=len(r.cells))
    encoder = S.EncoderInfo(ctx.info.model_id, ctx.info.cache_key, ctx.info.embed_dim, ctx.info.patch_side,
                            ctx.info.image_size, dtype_name(ctx.dtype), ctx.info.source)
    return {"data_dir": str(r.scan.root.resolve()), "layout": r.scan.layout, "encoder": encoder.to_dict(),
            "preprocessing": ctx.info.preprocessor.version,
            "options": ctx.options.to_dict(),
            "counts": counts.to_dict(), "metrics": r.metrics,
            "skipped": [{"path": p, "reason": why} for p, why in ctx.skipped], "timings": ctx.timings}


def write_stage(ctx: RunContext, out: str | Path, r: Results) -> Path:
    """Write the bundle ``out`` atomically (tables, thumbnails, model, precomputed maps). The thumbnails
    go from their store into the bundle a row group at a time (``r.thumbs.get`` on chunks of ids), never
    all in memory."""
    def model_writer(d: Path) -> None:
        r.distiller.save_pretrained(d)
        r.projection.save_pretrained(d)

    def thumbs(ids: list[str]) -> list[bytes | None]:  # JPEG bytes per id (the thumbnail store holds bytes)
        return list(r.thumbs.get(ids))

    return write_bundle(out, bundle_meta(ctx, r), r.images, r.cells, thumbs, model_writer,
                        cache_stores=(r.maps,) if r.maps is not None else ())
