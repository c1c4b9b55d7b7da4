"""Where the heavy stages of ``analyze`` run: an ``Engine`` provides the hash, embed and relevance stages.

Two engines, the same signatures, results and cache: ``pipeline.stages`` runs them in this process (the
local engine), ``pipeline.ray_engine`` on Ray Data. Each module satisfies ``Engine`` as it is; ``engine(name)``
picks one for ``AnalyzeOptions.engine``. The stages before and after (scan, projection, training, layout,
checks, write) are the local ones for both.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from ..inputs.scan import ScanResult
from ..storage.cache import RowStore
from . import ray_engine, stages
from .stages import Embedded, RunContext

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..method.distiller import Distiller


class Engine(Protocol):
    """The stage functions an engine provides (``pipeline.stages`` and ``pipeline.ray_engine`` have them)."""

    def hash_stage(self, ctx: RunContext, scan: ScanResult) -> pd.DataFrame:
        """The scanned files with an ``image_id`` column (SHA-1 of the bytes); unreadable files and duplicates
        moved to ``ctx.skipped``."""
        ...

    def embed_stage(self, ctx: RunContext, images: pd.DataFrame, root: Path) -> Embedded:
        """Embeddings ``[N, D]`` and thumbnails of ``images`` (cached per image id); files that fail are skipped."""
        ...

    def relevance_stage(self, ctx: RunContext, images: pd.DataFrame, distiller: Distiller,
                        last_inputs: RowStore | None) -> RowStore:
        """Relevance maps ``[17, side, side]`` of every image with the options' method, in the run's map store."""
        ...


def engine(name: str) -> Engine:
    """The engine called ``name`` (``options.ENGINES``): ``"local"`` is ``pipeline.stages``, ``"ray"`` is
    ``pipeline.ray_engine`` (which imports Ray, an optional extra, only when one of its stages runs)."""
    return ray_engine if name == "ray" else stages


__all__ = ["Engine", "engine"]
