"""ASAP Explorer core library: scan, embed, distil, explain and lay out image collections.

Heavy dependencies (torch, transformers) are imported lazily so bundles open without them.
"""
from __future__ import annotations

__version__ = "0.1.0"
