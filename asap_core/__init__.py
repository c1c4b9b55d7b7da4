"""ASAP Explorer core library: scan, embed, distil, explain and lay out image collections.

Heavy dependencies (torch, transformers) are imported lazily, so bundles open without them:
``asap_core.Bundle`` needs neither; ``asap_core.relevance_maps`` imports torch when called.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Bundle": "storage.bundle", "ClipEncoder": "model.encoder", "load_encoder": "model.factory",
    "Distiller": "method.distiller", "DistillerTrainer": "method.training",
    "VisionOnlyProjection": "method.projection", "relevance_maps": "method.relevance",
    "AttentionRelevance": "method.relevance", "scan_folder": "inputs.scan", "analyze": "pipeline.analyze",
    "AnalyzeOptions": "pipeline.analyze", "AsapError": "errors", "bundle_models": "method.bundle_models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'asap_core' has no attribute {name!r}")
