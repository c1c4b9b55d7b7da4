"""``AnalyzeOptions``: what ``analyze`` is asked to do, checked before any work starts.

Its own module, so that the stages (``pipeline.stages``) and the engines read the options without importing
``pipeline.analyze``, which runs them.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..errors import InputError
from ..model.embedding import DECODERS
from ..storage import schema as S

ENGINES = ("local", "ray")  # --engine: this process, or Ray Data (pipeline.ray_engine; the [ray] extra)


@dataclass(frozen=True)
class AnalyzeOptions(S.AnalysisOptions):
    """Options of ``analyze``: the ones a bundle stores (``schema.AnalysisOptions``, whose docstring says what
    each does) and ``cache_dir``, the run's cache folder (None: ``$ASAP_CACHE_DIR`` or the default), which is
    not stored. Frozen: a stage records a choice with ``dataclasses.replace``."""

    cache_dir: str | None = None

    def check(self) -> None:
        """``InputError`` naming the first option that cannot be used (before any work starts)."""
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
            check_ray_available()
        elif self.ray_address:
            raise InputError("--ray-address is given without --engine ray.", "add --engine ray, or drop --ray-address.")
        if int(self.faithfulness or 0) < 0:
            raise InputError(f"--faithfulness {self.faithfulness}: the sample size cannot be negative.",
                             "use 0 (off) or a number of images, e.g. 16.")


def check_ray_available() -> None:
    """``InputError`` with the fix when Ray Data cannot be imported (checked before any work; Ray itself is
    imported only by ``pipeline.ray_engine``, when a stage runs there)."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise InputError("--engine ray needs Ray Data, which is not installed.",
                         "pip install -e '.[ray]' (or run without --engine ray).")


__all__ = ["ENGINES", "AnalyzeOptions", "check_ray_available"]
