"""``analyze``: from an image folder to a bundle, stage by stage (``pipeline.stages``), every heavy step cached."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..inputs.scan import LabelConflict, ScanResult, label_summary_lines, scan_folder
from ..storage import schema as S
from .stages import (
    Embedded,
    Results,
    RunContext,
    StageProgress,
    check_labels,
    checks_stage,
    layout_stage,
    project_stage,
    store_checks,
    train_stage,
    write_stage,
)

ENGINES = ("local", "ray")  # --engine: this process, or Ray Data (pipeline.ray_engine; requirements-ray.txt)


@dataclass
class AnalyzeOptions:
    """Options of ``analyze``; ``None`` model means ``$ASAP_MODEL`` or the default ViT-B/32."""

    model: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    num_workers: int | None = None
    decoder: str = "auto"  # embedding.DECODERS; "thread" where worker processes cannot start (Streamlit)
    compile: bool | None = None
    relevance_batch_size: int | None = None  # None: device.relevance_batch_size
    dtype: str | None = None  # None / "auto": bf16 on GPU, fp32 on CPU ($ASAP_CPU_BF16=1: bf16 where native)
    relevance: str = S.NO_RELEVANCE
    grid: int | None = None  # None: method.layout.default_grid (cells of about 10 images)
    projection_file: str | None = None
    projection_samples: int | None = None  # texted copies fitting the projection; None: stages.projection_sample_size
    distiller: str | None = None
    cache_dir: str | None = None
    seed: int = 0
    engine: str = "local"  # ENGINES: "ray" runs hash, embed and relevance on Ray Data (pipeline.ray_engine)
    ray_address: str | None = None  # engine "ray": a running cluster; None: Ray's default (starts a local one)
    faithfulness: int = 0  # explanation checks on a seeded sample of this many labelled images (0: off)

    def check(self) -> None:
        """``InputError`` naming the first option that cannot be used (before any work starts)."""
        from ..model.embedding import DECODERS

        methods = (S.NO_RELEVANCE, *S.RELEVANCE_METHODS)
        if self.relevance not in methods:
            raise InputError(f"--relevance {self.relevance} is not one of {', '.join(methods)}.",
                             f"use one of {', '.join(methods)}.")
        if self.decoder not in DECODERS:
            raise InputError(f"decoder {self.decoder!r} is not one of {', '.join(DECODERS)}.", "use decoder='auto'.")
        if self.grid is not None and int(self.grid) < 1:
            raise InputError(f"grid {self.grid} must be at least 1.", f"use e.g. --grid {S.DEFAULT_GRID}.")
        if self.engine not in ENGINES:
            raise InputError(f"--engine {self.engine} is not one of {', '.join(ENGINES)}.",
                             f"use one of {', '.join(ENGINES)}.")
        if self.engine == "ray":
            from .ray_engine import check_available

            check_available()
        elif self.ray_address:
            raise InputError("--ray-address is given without --engine ray.", "add --engine ray, or drop --ray-address.")
        if int(self.faithfulness or 0) < 0:
            raise InputError(f"--faithfulness {self.faithfulness}: the sample size cannot be negative.",
                             "use 0 (off) or a number of images, e.g. 16.")


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
    label_counts: pd.DataFrame | None = None  # ScanResult.label_counts(): images per label and top folder
    conflicts: list[LabelConflict] = field(default_factory=list)  # folders whose label words disagree
    encoder_source: str = "unknown"  # schema.ENCODER_SOURCES: "random" puts a warning in the summary
    checks: dict | None = None  # --faithfulness: explanation_checks.summary_json of the sample

    def summary(self, where: str = "cli") -> str:
        """Human-readable multi-line summary (what the CLI prints at the end); ends with the bundle's
        ``views.trust`` notices, their fixes worded for ``where`` (``model.hints.WHERES``)."""
        from ..views.trust import notices

        lines = [f"Bundle written: {self.bundle}", f"Layout: {self.layout}",
                 *label_summary_lines(self.label_counts, self.conflicts),
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
        if self.checks:
            lines.append(checks_line(self.checks))
        lines.append("Time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        lines += [n.line() for n in notices(self.encoder_source, self.metrics, where)]
        return "\n".join(lines)


def analyze(data_dir: str | Path, out: str | Path, options: AnalyzeOptions | None = None,
            progress: StageProgress | None = None) -> AnalyzeReport:
    """Scan ``data_dir``, embed (cached), fit projection and distiller (cached), lay out, write the bundle ``out``.

    ``progress(stage, done, total)`` is called as stages advance. Bad files are skipped and listed in the
    report; bad options or a folder without usable images raise ``InputError`` before any heavy work.
    """
    ctx = RunContext.create(options or AnalyzeOptions(), progress)
    engine = _engine(ctx.options.engine)
    with ctx.stage("scan"):
        scan = scan_folder(data_dir)
        ctx.skipped += scan.skipped
    with ctx.stage("hash"):
        images = engine.hash_stage(ctx, scan)
    check_labels(ctx, scan, images)
    with ctx.stage("embed"):
        emb = engine.embed_stage(ctx, images, scan.root)
    return after_embedding(ctx, scan, emb, out)


def analyze_embeddings(table: str | Path | pd.DataFrame, out: str | Path, options: AnalyzeOptions | None = None,
                       progress: StageProgress | None = None) -> AnalyzeReport:
    """``analyze`` for images whose embeddings and thumbnails are already in the cache (``--from-embeddings``):
    ``table`` (a Parquet or CSV file, or a DataFrame) names them by ``image_id`` with ``path`` and ``label``
    (``from_embeddings.TABLE_COLUMNS``) instead of a folder to scan and hash; every stage after the
    embedding pass is ``analyze``'s own. The projection's sample still reads its images (``path``).
    ``InputError`` when an id has no cached row for the options' model and dtype."""
    from .from_embeddings import cached_embed_stage, read_ids_table

    ctx = RunContext.create(options or AnalyzeOptions(), progress)
    with ctx.stage("scan"):
        scan = read_ids_table(table)
        ctx.skipped += scan.skipped
    check_labels(ctx, scan, scan.images)
    with ctx.stage("embed"):
        emb = cached_embed_stage(ctx, scan.images, scan.root)
    return after_embedding(ctx, scan, emb, out)


def after_embedding(ctx: RunContext, scan: ScanResult, emb: Embedded, out: str | Path) -> AnalyzeReport:
    """The stages after the embedding pass (projection, train, layout, relevance, checks, write) and the
    report. The embeddings ``[N, D]`` are let go once z and p_fake are predicted."""
    engine = _engine(ctx.options.engine)
    with ctx.stage("projection"):
        projection = project_stage(ctx, emb)
    with ctx.stage("train"):
        distiller, metrics = train_stage(ctx, emb, projection)
        z, p_fake = distiller.predict(emb.embeds)
    emb.embeds = None  # [N, D] float32 (2 GB at a million images): no later stage reads it
    with ctx.stage("layout"):
        images, cells = layout_stage(ctx, emb.images, z, p_fake)
    maps = None
    if ctx.options.relevance != S.NO_RELEVANCE:
        with ctx.stage(f"relevance ({ctx.options.relevance})"):
            maps = engine.relevance_stage(ctx, images, distiller, emb.last_inputs)
    checks = None
    if ctx.options.faithfulness:
        with ctx.stage("explanation checks"):
            checks = checks_stage(ctx, images, distiller)
    results = Results(scan, images, cells, emb.thumbs, distiller, projection, metrics, maps)
    with ctx.stage("write"):
        bundle = write_stage(ctx, out, results)
        store_checks(bundle, checks)
    return AnalyzeReport(bundle, scan.layout, len(scan.images) + len(scan.skipped), len(images), ctx.skipped,
                         metrics, ctx.timings, scan.label_counts(), scan.conflicts, ctx.info.source,
                         checks.summary if checks else None)


def checks_line(summary: dict) -> str:
    """One line on ``analyze --faithfulness``'s digest: the fake logit's faithfulness ratio and the targets
    the sanity check flags."""
    rows = {r["target"]: r for r in summary["targets"]}
    fake = rows.get(S.FAKE_LOGIT, {})
    ratio = fake.get("ratio")
    flagged = [r["name"] for r in summary["targets"] if r.get("flagged")]
    what = ("nothing: not assessed (random CLIP)" if summary.get("encoder_random") else
            ", ".join(flagged) if flagged else "none")
    ratio_text = f"{ratio:.1f}x" if isinstance(ratio, (int, float)) else "n/a"
    return (f"Explanation checks ({len(summary['image_ids'])} images, {summary['method']}): fake-probability maps "
            f"leave {ratio_text} less than random ({fake.get('verdict', 'n/a')}); sanity check flags {what}")


def _engine(name: str):
    """The module whose ``hash_stage``, ``embed_stage`` and ``relevance_stage`` run: ``pipeline.stages`` in this
    process (Ray never imported), or ``pipeline.ray_engine`` (same signatures, same cache, on Ray Data)."""
    if name == "ray":
        from . import ray_engine

        return ray_engine
    from . import stages

    return stages
