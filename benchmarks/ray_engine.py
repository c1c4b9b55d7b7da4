"""``analyze --engine ray`` against the local engine on one folder: equal results, and what Ray costs.

    python benchmarks/ray_engine.py                                  # faces140k_subset, tiny random CLIP
    python benchmarks/ray_engine.py --model vitb32                   # a random CLIP shaped as ViT-B/32
    python benchmarks/ray_engine.py --cpus-per-actor 1               # more, smaller actors

Both runs start from an empty cache of their own (under ``--scratch``, default /tmp/ray_engine_bench), in
this process: first the local engine, then ``ray.init(num_cpus=--num-cpus)`` (timed) and the Ray engine.
Checked: the same image ids, embeddings within 1e-5 (max |diff| printed), the same metrics.

Per engine: the hash and embed stages' seconds as ``analyze`` reports them and the embed stage's images per
second; "first back": seconds from the embed stage's start to the first batch back at the driver (Ray:
actor start-up and model load); "driver writes": seconds in ``RowStore.put`` (bringing embeddings and
thumbnails back and storing them: the driver's share), "bytes back": per image (embedding + thumbnail).
"actor, no Ray": ``ray_engine.EmbedActor`` with the pool's CPUs called in a plain loop over the same calls
in this process, so the per-actor rate without Ray; the Ray embed stage minus this is what Ray adds.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {"tiny": {}, "vitb32": dict(image_size=224, patch_size=32, hidden=768, layers=12, dim=512)}


class Clock:
    """``progress(stage, done, total)`` that keeps ``(time, done)`` per stage; and time spent in ``RowStore.put``."""

    def __init__(self) -> None:
        self.marks: dict[str, list[tuple[float, int]]] = {}
        self.put_s = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.marks.setdefault(stage, []).append((time.perf_counter(), done))


def run(engine: str, data: Path, model: Path, scratch: Path, batch_size: int | None):
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze
    from asap_core.storage import cache

    clock = Clock()
    put = cache.RowStore.put

    def timed_put(self, ids, values):
        t0 = time.perf_counter()
        put(self, ids, values)
        clock.put_s += time.perf_counter() - t0

    cache.RowStore.put = timed_put
    try:
        shutil.rmtree(scratch / f"cache_{engine}", ignore_errors=True)
        opts = AnalyzeOptions(model=str(model), cache_dir=str(scratch / f"cache_{engine}"), engine=engine,
                              batch_size=batch_size)
        t0 = time.perf_counter()
        report = analyze(data, scratch / f"bundle_{engine}", opts, progress=clock)
        return report, clock, time.perf_counter() - t0
    finally:
        cache.RowStore.put = put


def stored(scratch: Path, engine: str, bundle):
    """(embeddings [N, D] in bundle order, mean thumbnail bytes) from the run's own cache."""
    import torch

    from asap_core.pipeline.stages import embedding_store_name
    from asap_core.storage.cache import RowStore
    from asap_core.storage.schema import THUMB_SIDE

    enc, ids = bundle.encoder_info, bundle.images.image_id.tolist()
    cache = scratch / f"cache_{engine}"
    emb = RowStore(cache, embedding_store_name(enc.cache_key, torch.float32), (enc.embed_dim,)).get(ids)
    thumbs = RowStore(cache, f"thumbs-v1-{THUMB_SIDE}", None).get(ids)
    return emb, float(np.mean([len(t) for t in thumbs]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "faces140k_subset"))
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--scratch", default="/tmp/ray_engine_bench")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    ap.add_argument("--cpus-per-actor", type=int, default=None, help="override ray_engine.CPUS_PER_ACTOR")
    ap.add_argument("--batch-size", type=int, default=None)
    a = ap.parse_args()
    data, scratch = Path(a.data), Path(a.scratch)
    if not data.is_dir():
        print(f"{data} is not there: nothing to measure.")
        return 0
    from asap_core.pipeline import ray_engine
    from asap_core.pipeline.demo import write_random_clip

    scratch.mkdir(parents=True, exist_ok=True)
    model = scratch / f"clip_{a.model}"
    if not (model / "config.json").is_file():
        write_random_clip(model, **MODELS[a.model])
    if a.cpus_per_actor:
        ray_engine.CPUS_PER_ACTOR = a.cpus_per_actor
    results = {"local": run("local", data, model, scratch, a.batch_size)}
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=a.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    start_s = time.perf_counter() - t0
    plan = ray_engine.plan_pool(ray.nodes())
    results["ray"] = run("ray", data, model, scratch, a.batch_size)
    ray.shutdown()
    plain_s = plain_actor_seconds(results, plan, model, a.batch_size)
    report_table(results, scratch, plan, start_s, a, plain_s)
    return 0


def plain_actor_seconds(results: dict, plan, model: Path, batch_size: int | None) -> float:
    """Seconds for ``EmbedActor`` (``plan.cpus`` threads) over the Ray run's calls in a plain loop, no Ray."""
    import torch

    from asap_core.model.device import CPU_BATCH_SIZE
    from asap_core.pipeline.ray_engine import ActorSpec, EmbedActor, call_rows
    from asap_core.storage.bundle import Bundle

    report = results["ray"][0]
    images = Bundle.open(report.bundle).images
    rows = call_rows(plan, batch_size, CPU_BATCH_SIZE)
    threads = torch.get_num_threads()
    actor = EmbedActor(ActorSpec(str(model), Bundle.open(report.bundle).encoder_info.cache_key, "cpu",
                                 torch.float32, plan.cpus, batch_size))
    t0 = time.perf_counter()
    for s in range(0, len(images), rows):
        chunk = images.iloc[s:s + rows]
        actor({"path": chunk["path"].to_numpy(object), "image_id": chunk["image_id"].to_numpy(object)})
    torch.set_num_threads(threads)
    return time.perf_counter() - t0


def report_table(results: dict, scratch: Path, plan, start_s: float, a, plain_s: float) -> None:
    from asap_core.storage.bundle import Bundle

    bundles = {e: Bundle.open(r[0].bundle) for e, r in results.items()}
    embs = {e: stored(scratch, e, b) for e, b in bundles.items()}
    same_ids = bundles["local"].images.image_id.tolist() == bundles["ray"].images.image_id.tolist()
    diff = float(np.abs(embs["local"][0] - embs["ray"][0]).max()) if same_ids else float("nan")
    n = len(bundles["local"].images)
    print(f"data {a.data}: {n} images; model {a.model}; Ray pool: {plan.actors} actor(s) x {plan.cpus} CPU"
          f" ({plan.device}); ray.init {start_s:.1f} s")
    print(f"same ids: {same_ids}; embeddings max |diff| {diff:.2e} (<= 1e-5: {diff <= 1e-5}); "
          f"same metrics: {bundles['local'].metrics == bundles['ray'].metrics}")
    print("| engine | hash s | embed s | embed img/s | first back s | driver writes s | bytes back/img | total s |")
    print("|---|---|---|---|---|---|---|---|")
    for engine, (report, clock, total) in results.items():
        t = report.timings
        marks = clock.marks.get("embed", [])
        first = next((m[0] for m in marks if m[1] > 0), float("nan")) - marks[0][0] if marks else float("nan")
        print(f"| {engine} | {t.get('hash', 0):.2f} | {t['embed']:.2f} | {n / t['embed']:.0f} | {first:.2f} | "
              f"{clock.put_s:.2f} | {4 * embs[engine][0].shape[1] + embs[engine][1]:.0f} | {total:.2f} |")
    print(f"| actor, no Ray ({plan.cpus} threads) | | {plain_s:.2f} | {n / plain_s:.0f} | | | | |")


if __name__ == "__main__":
    sys.exit(main())
