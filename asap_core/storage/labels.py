"""How every view, link and export names a dimension: the one labelling function.

A dimension reads ``"dim 3"`` until a user names it, then ``"dim 3 · smooth skin"`` (the index stays
visible: links and tables carry dimensions by index). ``names`` is ``Bundle.dimension_names`` (``N_DIMS``
strings, "" = unnamed); any shorter or empty sequence means "no names". The fake logit (target
``FAKE_LOGIT``) is always "fake logit". No Streamlit here.
"""
from __future__ import annotations

from collections.abc import Sequence

from .schema import FAKE_LOGIT, N_DIMS, TARGET_NAMES

SEP = " · "


def dimension_name(i: int, names: Sequence[str] = ()) -> str:
    """The user's name of dimension ``i`` ("" when unnamed or out of range)."""
    i = int(i)
    if 0 <= i < min(len(names), N_DIMS):
        return str(names[i] or "").strip()
    return ""


def target_label(t: int, names: Sequence[str] = ()) -> str:
    """Relevance target ``t`` in words: ``"dim 3"``, ``"dim 3 · smooth skin"``, or ``"fake logit"``
    (``FAKE_LOGIT``). ``IndexError`` for another target."""
    t = int(t)
    if not 0 <= t <= FAKE_LOGIT:
        raise IndexError(f"no relevance target {t}")
    name = dimension_name(t, names) if t < N_DIMS else ""
    return TARGET_NAMES[t] + (SEP + name if name else "")


def dimension_label(i: int, names: Sequence[str] = ()) -> str:
    """Dimension ``i`` (0..15) in words: ``"dim 3"``, or ``"dim 3 · smooth skin"`` once named."""
    if not 0 <= int(i) < N_DIMS:
        raise IndexError(f"no dimension {i}")
    return target_label(i, names)


def dimension_labels(names: Sequence[str] = ()) -> list[str]:
    """``dimension_label`` of every dimension, in index order."""
    return [dimension_label(i, names) for i in range(N_DIMS)]


def named_dims(names: Sequence[str] = ()) -> list[int]:
    """The dimensions that carry a name."""
    return [i for i in range(N_DIMS) if dimension_name(i, names)]


__all__ = ["SEP", "dimension_label", "dimension_labels", "dimension_name", "named_dims", "target_label"]
