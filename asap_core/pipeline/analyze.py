"""``analyze``: from an image folder to a bundle, stage by stage (``pipeline.stages``), every heavy step cached."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..analyses.checks_digest import checks_line
from ..inputs.scan import LabelConflict, ScanResult, label_summary_lines, scan_folder
from ..storage import schema as S
from .engine import engine
from .from_embeddings import cached_embed_stage, read_ids_table
from .options import ENGINES, AnalyzeOptions
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
    encoder_source: str = "unknown"  # schema.ENCODER_SOURCES: "random" calls for a warning (views.trust)
    checks: dict | None = None  # --faithfulness: explanation_checks.summary_json of the sample

    def summary(self) -> str:
        """Human-readable multi-line summary of the run (what the CLI prints at the end). What the figures are
        worth (``views.trust.notices`` of ``encoder_source`` and ``metrics``) is the caller's to add, worded
        for where it is read."""
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
        return "\n".join(lines)


def analyze(data_dir: str | Path, out: str | Path, options: AnalyzeOptions | None = None,
            progress: StageProgress | None = None) -> AnalyzeReport:
    """Scan ``data_dir``, embed (cached), fit projection and distiller (cached), lay out, write the bundle ``out``.

    Parameters
    ----------
    data_dir : folder of images (labels read from ``real/`` / ``fake/`` folders or names).
    out : the bundle folder to write (replaced atomically when it exists).
    options : ``AnalyzeOptions``; None: the defaults. ``bundle.json["options"]`` stores them (without
        ``cache_dir``), with the grid and projection sample chosen.
    progress : ``progress(stage, done, total)``, called as stages advance.

    Returns
    -------
    ``AnalyzeReport``: the bundle's path, counts, skipped files with reasons, metrics, seconds per stage.
    Bad files are skipped and listed; bad options or a folder without usable images raise ``InputError``
    before any heavy work.
    """
    ctx = RunContext.create(options or AnalyzeOptions(), progress)
    run = engine(ctx.options.engine)
    with ctx.stage("scan"):
        scan = scan_folder(data_dir)
        ctx.skipped += scan.skipped
    with ctx.stage("hash"):
        images = run.hash_stage(ctx, scan)
    check_labels(ctx, scan, images)
    with ctx.stage("embed"):
        emb = run.embed_stage(ctx, images, scan.root)
    return after_embedding(ctx, scan, emb, out)


def analyze_embeddings(table: str | Path | pd.DataFrame, out: str | Path, options: AnalyzeOptions | None = None,
                       progress: StageProgress | None = None) -> AnalyzeReport:
    """``analyze`` for images whose embeddings and thumbnails are already in the cache (``--from-embeddings``):
    ``table`` (a Parquet or CSV file, or a DataFrame) names them by ``image_id`` with ``path`` and ``label``
    (``from_embeddings.TABLE_COLUMNS``) instead of a folder to scan and hash; every stage after the
    embedding pass is ``analyze``'s own. The projection's sample still reads its images (``path``).
    ``InputError`` when an id has no cached row for the options' model and dtype."""
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
    with ctx.stage("projection"):
        projection = project_stage(ctx, emb)
    with ctx.stage("train"):
        distiller, metrics = train_stage(ctx, emb, projection)
        z, p_fake = distiller.predict(emb.vectors())
    emb.embeds = None  # [N, D] float32 (2 GB at a million images): no later stage reads it
    with ctx.stage("layout"):
        images, cells = layout_stage(ctx, emb.images, z, p_fake)
    maps = None
    if ctx.options.relevance != S.NO_RELEVANCE:
        with ctx.stage(f"relevance ({ctx.options.relevance})"):
            maps = engine(ctx.options.engine).relevance_stage(ctx, images, distiller, emb.last_inputs)
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


__all__ = ["ENGINES", "AnalyzeOptions", "AnalyzeReport", "after_embedding", "analyze", "analyze_embeddings"]
