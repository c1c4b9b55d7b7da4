"""``analyze --engine ray``: the hash, embed and relevance stages of ``pipeline.stages`` on Ray Data.

Same signatures as the local stages (both satisfy ``pipeline.engine.Engine``; ``engine.engine`` picks the
module), same results, same cache::

    paths --map_batches(hash_batch: tasks)------------------> image ids        (driver: dedupe as locally)
    ids the cache lacks --map_batches(EmbedActor: a pool)---> embeddings [n, D] float32 + JPEG thumbnails
    (--relevance) ids lacking maps --map_batches(MapActor)--> maps [n, 17, s, s] float16
                        each finished batch --> the driver --> the content-keyed RowStores of a local run

- One encoder per actor, loaded once in ``__init__`` through ``model.factory.load_encoder`` and checked
  against the driver's checkpoint (``cache_key``). Actors run the local functions on their batch
  (``embedding.embed_files``, ``relevance_store.compute_missing_maps``) with an in-memory stand-in for
  the stores (``_Rows``): decode, preprocessing and forward are the local code, and on CPU each call gets
  whole model batches cut where a local run cuts them (``call_rows``), so fp32 embeddings equal the local
  ones bit for bit. Files that fail come back as rows with a reason and end in the bundle's skipped list.
- Results are written by the driver, not by the actors: what comes back is small beside the decode work
  (D float32 and one small JPEG thumbnail per image; ``benchmarks/ray_engine.py`` measures it), and the
  cache then needs no storage shared between the nodes. The stores, keys and shards are the local run's
  (``stages.embedding_stores``, ``relevance_store.map_store``), so a later local run reuses them and the
  other way round. Only ids the cache lacks are sent.
- Projection fit, distiller training and layout run on the driver from the cached embeddings (the local
  stages). Precision is the driver's (``--dtype``; auto: bf16 when the driver sees a GPU, else fp32) so
  that one store and the projection's model agree; a CPU driver in front of GPU workers should pass
  ``--dtype bfloat16``.
- The pool: one actor per GPU when the cluster has GPUs (and ``--device`` is not ``cpu``), each with its
  node's CPUs per GPU for decoding; else actors of ``CPUS_PER_ACTOR`` cores (fewer on smaller nodes),
  as many as the cluster holds. The image files (and a local model folder) must be readable at the same
  paths on every node: a single machine, or shared storage.
- Ray is imported only here, only when a stage runs (inside the functions: Ray is an optional extra, and
  importing this module must work without it); ``analyze`` without ``engine="ray"`` never imports Ray. A
  Ray started by the first stage (no running one, no ``--ray-address``) lives until the
  process ends, so later runs in the same process reuse it.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import errors
from ..errors import AsapError, InputError, ModelLoadError
from ..inputs.scan import ScanResult
from ..method.relevance_store import compute_missing_maps, map_store
from ..model.device import CPU_BATCH_SIZE, CPU_RELEVANCE_BATCH, configure_threads
from ..model.embedding import embed_files
from ..model.factory import load_encoder
from ..storage.cache import RowStore
from ..storage.schema import N_TARGETS
from . import stages
from .stages import Embedded, RunContext

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from ..method.distiller import Distiller

CPUS_PER_ACTOR = 4  # cores per CPU actor: torch threads for the forward, decode threads between batches
HASH_BATCH = 256  # files per hashing task
CPU_CALL_BATCHES = 2  # local model batches per call of a CPU actor (see ``call_rows``)
GPU_CALL_ROWS = 512  # images per call of a GPU actor (its model batches: chosen there from free memory)
ACTOR_DECODERS = ("inline", "thread", "nvjpeg")  # others ("auto", "process") become "thread" in an actor


# ----------------------------------------------------------------------------- cluster


@dataclass(frozen=True)
class PoolPlan:
    """An actor pool: ``actors`` of ``cpus`` CPUs and ``gpus`` GPUs each, the model on ``device``."""

    actors: int
    cpus: int
    gpus: int
    device: str


def plan_pool(nodes: list[dict], device: str = "auto") -> PoolPlan:
    """The pool for the alive ``nodes`` (``ray.nodes()`` entries) and the ``--device`` option: one actor per
    GPU (its node's CPUs per GPU each) unless ``device`` is ``cpu``; else ``CPUS_PER_ACTOR``-core actors."""
    res = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    gpu_nodes = [r for r in res if r.get("GPU", 0) >= 1]
    if gpu_nodes and device != "cpu":
        cpus = min(int(r.get("CPU", 1) // int(r["GPU"])) for r in gpu_nodes)
        return PoolPlan(sum(int(r["GPU"]) for r in gpu_nodes), max(1, cpus), 1, "cuda")
    if device.startswith("cuda"):
        raise InputError(f"--device {device} was asked for, but the Ray cluster has no GPU.",
                         "drop --device (CPU actors), or add GPU nodes to the cluster.")
    cpu_nodes = [int(r.get("CPU", 0)) for r in res if r.get("CPU", 0) >= 1]
    if not cpu_nodes:
        raise InputError("The Ray cluster has no CPU to run on.", "add nodes with CPUs to the cluster.")
    cpus = max(1, min(CPUS_PER_ACTOR, min(cpu_nodes)))
    return PoolPlan(max(1, sum(c // cpus for c in cpu_nodes)), cpus, 0, "cpu")


def connect(address: str | None) -> None:
    """Join the running Ray of this process, or ``ray.init(address)`` (None: Ray's default, which starts a
    local cluster). A named cluster gets ``asap_core`` shipped with the job (``py_modules``)."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        kwargs["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parents[1])]}
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"Could not start or reach Ray at {address or 'a new local cluster'}: {exc}",
                         "check --ray-address (e.g. `ray start --head` prints it), or drop it to start "
                         "a local cluster.") from None


def _pool(ctx: RunContext) -> PoolPlan:
    """Start or join Ray (timed as stage "start ray"), then plan the actor pool for the cluster and options."""
    import ray

    with ctx.stage("start ray"):
        connect(ctx.options.ray_address)
    return plan_pool(ray.nodes(), ctx.options.device)


@contextmanager
def _quiet_data() -> Iterator[None]:
    """Ray Data without its own progress bars and INFO lines (the CLI draws ours), restored after."""
    import ray.data

    dc = ray.data.DataContext.get_current()
    names = [n for n in ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start")
             if hasattr(dc, n)]
    before = {n: getattr(dc, n) for n in names}
    log = logging.getLogger("ray.data")
    level = log.level
    for n in names:
        setattr(dc, n, False)
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)
        for n, v in before.items():
            setattr(dc, n, v)


def _drain(ds, progress: Callable[[int, int], None] | None, total: int,
           write: Callable[[dict, np.ndarray], None]) -> list[tuple[str, str]]:
    """Run ``ds`` and hand each finished batch to ``write(batch, ok)`` on the driver as it comes (any order;
    ``ok``: rows without a ``reason``); ``progress(done, total)``. Returns the ``(path, reason)`` failures.
    An ``AsapError`` raised in a worker (e.g. other weights on a node) is raised here (``worker_error``)."""
    import ray

    failures: list[tuple[str, str]] = []
    done = 0
    if progress:
        progress(0, total)
    try:
        with _quiet_data():
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                reason = batch["reason"].astype(str)
                ok = reason == ""
                failures += [(str(p), str(r)) for p, r in zip(batch["path"][~ok], reason[~ok])]
                write(batch, ok)
                done += len(ok)
                if progress:
                    progress(done, total)
    except ray.exceptions.RayError as exc:
        raise worker_error(exc) from None
    return failures


_WORKER_ERROR = re.compile(r"asap_core\.errors\.(\w+): ([^\n]+)(?:\n +Fix: ([^\n]+))?")


def worker_error(exc: Exception) -> Exception:
    """The ``AsapError`` a Ray worker raised, rebuilt from the traceback text Ray hands back (Ray keeps the
    text, not the object, e.g. of an actor that failed to start), so the CLI prints message and fix; else
    ``exc`` itself."""
    m = _WORKER_ERROR.search(str(exc))
    if not m:
        return exc
    cls = getattr(errors, m.group(1), AsapError)
    try:
        return cls(m.group(2), m.group(3) or "") if issubclass(cls, AsapError) else AsapError(m.group(2))
    except TypeError:  # a subclass with other arguments (ImageLoadError)
        return AsapError(m.group(2), m.group(3) or "")


# ----------------------------------------------------------------------------- hash


def hash_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data task: ``{row, path}`` -> ``{row, path, image_id, reason}`` (``stages.hash_files``; id and
    reason "" where not applicable)."""
    ids, bad = stages.hash_files([str(p) for p in batch["path"]])
    reasons = dict(bad)
    return {"row": batch["row"], "path": batch["path"],
            "image_id": np.array([i or "" for i in ids], dtype=object),
            "reason": np.array([reasons.get(str(p), "") for p in batch["path"]], dtype=object)}


def ray_hash_files(paths: list[str], progress: Callable[[int, int], None] | None = None
                   ) -> tuple[list[str | None], list[tuple[str, str]]]:
    """``stages.hash_files`` on Ray Data: SHA-1 ids for ``paths`` (None where unreadable), failures."""
    ids: list[str | None] = [None] * len(paths)
    if not paths:
        return ids, []
    rows = pd.DataFrame({"row": np.arange(len(paths)), "path": [str(p) for p in paths]})
    ds = _blocks(rows, HASH_BATCH).map_batches(hash_batch, batch_size=None, batch_format="numpy")

    def write(batch: dict, ok: np.ndarray) -> None:
        for row, image_id in zip(batch["row"][ok], batch["image_id"][ok]):
            ids[int(row)] = str(image_id)

    bad = _drain(ds, progress, len(paths), write)
    order = {str(p): i for i, p in enumerate(paths)}
    return ids, sorted(bad, key=lambda f: order.get(f[0], 0))


def hash_stage(ctx: RunContext, scan: ScanResult) -> pd.DataFrame:
    """``stages.hash_stage`` with the hashing on Ray (starts or joins the cluster first)."""
    _pool(ctx)
    return stages.hash_stage(ctx, scan, hasher=ray_hash_files)


# ----------------------------------------------------------------------------- actors


class _Rows:
    """In an actor, what ``embed_files`` / ``compute_missing_maps`` see as their store (a ``cache.RowSink``): it
    lacks every id and keeps what is put, by id."""

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}

    def missing(self, ids: Iterable[str]) -> list[str]:
        return list(dict.fromkeys(ids))

    def put(self, ids: list[str], values: np.ndarray | list[bytes]) -> None:
        for k, image_id in enumerate(ids):
            self.rows.setdefault(image_id, values[k])

    def column(self, ids: list[str], empty: Any) -> np.ndarray:
        """The rows of ``ids`` in order (``empty`` where none was put) as one array."""
        vals = [self.rows.get(i, empty) for i in ids]
        if isinstance(empty, bytes):
            out = np.empty(len(vals), dtype=object)
            out[:] = vals
            return out
        return np.stack(vals) if vals else np.zeros((0, *np.shape(empty)), dtype=np.asarray(empty).dtype)


@dataclass(frozen=True)
class ActorSpec:
    """What every actor of a pool loads and how it runs: checkpoint ``model`` (``cache_key`` as the driver
    saw it), ``device``, ``dtype``, ``threads`` (the CPUs Ray gave it), model ``batch_size`` (None: chosen
    as locally), ``decoder`` (``ACTOR_DECODERS``), ``compile``."""

    model: str
    cache_key: str
    device: str
    dtype: torch.dtype
    threads: int
    batch_size: int | None = None
    decoder: str = "thread"
    compile: bool | None = None

    @classmethod
    def for_run(cls, ctx: RunContext, plan: PoolPlan, batch_size: int | None) -> ActorSpec:
        o = ctx.options
        decoder = o.decoder if o.decoder in ACTOR_DECODERS else "thread"  # a process pool per call costs more
        return cls(ctx.info.model_id, ctx.info.cache_key, plan.device, ctx.dtype, plan.cpus, batch_size, decoder,
                   o.compile)

    def load(self):
        """The encoder, once per actor, from the one factory; ``ModelLoadError`` if the node has other weights."""
        configure_threads(self.device, self.threads)
        encoder = load_encoder(self.model, device=self.device, dtype=self.dtype)
        if encoder.cache_key != self.cache_key:
            raise ModelLoadError(f"A Ray worker loaded other weights for {self.model} than the driver "
                                 f"({encoder.cache_key} vs {self.cache_key}).",
                                 "give every node the same checkpoint (shared storage or the same hub revision).")
        return encoder


class EmbedActor:
    """Ray Data callable class (one per actor): ``{path, image_id}`` rows -> the same rows with ``embedding``
    ``[n, D]`` float32 (L2-normalised; zeros where it failed), ``thumb`` (JPEG bytes) and ``reason`` (""
    when it decoded), computed by ``embedding.embed_files`` as locally. Also runs without Ray."""

    def __init__(self, spec: ActorSpec) -> None:
        self.spec = spec
        self.encoder = spec.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths, ids = [str(p) for p in batch["path"]], [str(i) for i in batch["image_id"]]
        embeds, thumbs = _Rows(), _Rows()
        failures = embed_files(lambda: self.encoder, self.encoder.preprocessor, paths, ids, embeds, thumbs,
                               batch_size=self.spec.batch_size, num_workers=self.spec.threads,
                               decoder=self.spec.decoder, compile=self.spec.compile)
        zero = np.zeros(self.encoder.embed_dim, dtype=np.float32)
        return {"path": batch["path"], "image_id": batch["image_id"], "embedding": embeds.column(ids, zero),
                "thumb": thumbs.column(ids, b""), "reason": _reasons(paths, failures)}


class MapActor:
    """Ray Data callable class: ``{path, image_id}`` rows -> the same rows with ``map`` ``[n, 17, s, s]``
    float16 (``relevance_store.compute_missing_maps`` with ``method``; zeros where it failed) and ``reason``."""

    def __init__(self, spec: ActorSpec, distiller: Distiller, method: str) -> None:
        self.spec, self.distiller, self.method = spec, distiller, method
        self.encoder = spec.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths, ids = [str(p) for p in batch["path"]], [str(i) for i in batch["image_id"]]
        maps, rows = _Rows(), pd.DataFrame({"image_id": ids, "path": paths})
        failures = compute_missing_maps(maps, self.encoder, self.distiller, rows, self.method, self.spec.batch_size,
                                        decoder=self.spec.decoder, num_workers=self.spec.threads)
        side = self.encoder.patch_side
        return {"path": batch["path"], "image_id": batch["image_id"],
                "map": maps.column(ids, np.zeros((N_TARGETS, side, side), dtype=np.float16)),
                "reason": _reasons(paths, failures)}


def _reasons(paths: list[str], failures: list[tuple[str, str]]) -> np.ndarray:
    why = dict(failures)
    return np.array([why.get(p, "") for p in paths], dtype=object)


def call_rows(plan: PoolPlan, model_batch: int | None, cpu_model_batch: int) -> int:
    """Images per actor call. On CPU ``CPU_CALL_BATCHES`` whole model batches of the local run
    (``model_batch``, else ``cpu_model_batch``): cut from the same list at the same places, each forward
    then holds the rows a local forward holds, and gives the same floats (a matrix product's rounding can
    depend on its row count). On a GPU ``model_batch`` or ``GPU_CALL_ROWS``."""
    if plan.device == "cpu":
        return (model_batch or cpu_model_batch) * CPU_CALL_BATCHES
    return model_batch or GPU_CALL_ROWS


def _blocks(rows: pd.DataFrame, size: int):
    """A Ray dataset of ``rows`` in blocks of ``size`` consecutive rows (the last one shorter), in order:
    ``map_batches(batch_size=None)`` then hands each block to one call, cut where a local run cuts."""
    import ray.data

    return ray.data.from_pandas([rows.iloc[s:s + size].reset_index(drop=True) for s in range(0, len(rows), size)])


def _map_over_pool(todo: pd.DataFrame, actor: type, args: tuple, plan: PoolPlan, rows: int):
    """The dataset of ``todo`` (``path``, ``image_id``) in calls of ``rows`` images to ``actor(*args)``, over
    the pool ``plan`` (no more actors than calls)."""
    import ray.data

    calls = max(1, -(-len(todo) // rows))
    return _blocks(todo[["path", "image_id"]], rows).map_batches(
        actor, fn_constructor_args=args, batch_size=None, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(plan.actors, calls)), num_cpus=plan.cpus, num_gpus=plan.gpus)


# ----------------------------------------------------------------------------- embed


def embed_stage(ctx: RunContext, images: pd.DataFrame, root: Path) -> Embedded:
    """``stages.embed_stage`` on Ray: the images the cache lacks are embedded by a pool of ``EmbedActor``;
    the driver stores each finished batch (thumbnails, then embeddings) in the local run's stores."""
    store, thumbs = stages.embedding_stores(ctx)
    todo = images[images["image_id"].isin(store.missing(images["image_id"]))]
    report = ctx.report("embed")
    if todo.empty:  # all cached: no actor starts
        if report:
            report(0, 0)
        return stages.keep_embedded(ctx, images, root, [], (store, thumbs))
    plan = _pool(ctx)
    ds = _map_over_pool(todo, EmbedActor, (ActorSpec.for_run(ctx, plan, ctx.options.batch_size),), plan,
                        call_rows(plan, ctx.options.batch_size, CPU_BATCH_SIZE))

    def write(b: dict, ok: np.ndarray) -> None:
        ids = [str(i) for i in b["image_id"][ok]]
        thumbs.put(ids, [bytes(t) for t in b["thumb"][ok]])
        store.put(ids, np.asarray(b["embedding"][ok], dtype=np.float32))

    failures = _drain(ds, report, len(todo), write)
    return stages.keep_embedded(ctx, images, root, failures, (store, thumbs))


# ----------------------------------------------------------------------------- relevance


def relevance_stage(ctx: RunContext, images: pd.DataFrame, distiller: Distiller,
                    last_inputs: RowStore | None = None) -> RowStore:
    """``stages.relevance_stage`` on Ray: maps the cache lacks computed by a pool of ``MapActor`` (from the
    pixels: the Ray engine keeps no last-layer inputs), stored by the driver in the local run's map store."""
    method = ctx.options.relevance
    store = map_store(ctx.cache, ctx.info.cache_key, distiller.fingerprint, method, ctx.info.patch_side)
    todo = images[images["image_id"].isin(store.missing(images["image_id"]))]
    if todo.empty:
        return store
    plan = _pool(ctx)
    spec = ActorSpec.for_run(ctx, plan, ctx.options.relevance_batch_size)
    ds = _map_over_pool(todo, MapActor, (spec, distiller, method), plan,
                        call_rows(plan, ctx.options.relevance_batch_size, CPU_RELEVANCE_BATCH))

    def write(b: dict, ok: np.ndarray) -> None:
        store.put([str(i) for i in b["image_id"][ok]], np.asarray(b["map"][ok], dtype=np.float16))

    _drain(ds, ctx.report("relevance"), len(todo), write)  # failures: as locally, the bundle just lacks those maps
    return store
