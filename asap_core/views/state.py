"""What a link carries and how chart events become selections (no Streamlit here).

A link reopens the same view: query params ``bundle`` (path), ``grid`` (cells per side, only when it
differs from the bundle's), ``cell`` (comma-separated cell ids), ``images`` (comma-separated image-id
prefixes, :data:`ID_PREFIX` hex characters), ``page`` (one of :data:`PAGES`), ``quiz`` (a quiz's images,
``views.quiz_spec.QuizSpec.to_param``; a link with a quiz and no page opens the quiz page) and ``dim`` (a dimension
by its index, 0..15: the Dimensions page opens on it and shows its name; names are not part of links).

Chart events are the dicts Streamlit returns from ``st.altair_chart(..., on_select="rerun")``:
a point selection reads ``{"selection": {"cell": [{"cell_id": 17}, ...]}}``, an interval brush
``{"selection": {"brush": {"gx": [x0, x1], "gy": [y0, y1]}}}`` and an empty one ``{"selection": {"cell": {}}}``.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..storage.schema import N_DIMS
from .pages import SLUGS
from .params import MAX_GRID, MAX_LINK_CELLS
from .params import MAX_LINK_INT as MAX_LINK_INT
from .params import parse_int as parse_int
from .quiz_spec import QuizSpec

PAGES: tuple[str, ...] = SLUGS  # the page slugs a link may name (``views.pages``)
ID_PREFIX = 10
MAX_LINK_IMAGES = 64


@dataclass
class LinkState:
    """The selection a link carries. ``images`` may hold id prefixes until resolved against a bundle."""

    bundle: str | None = None
    grid: int | None = None
    cells: list[int] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    page: str | None = None
    quiz: str | None = None
    dim: int | None = None


def _first(value: Any) -> str | None:
    """A query value as one string (Streamlit gives str; a list keeps its last entry)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return str(value[-1]) if value else None
    return str(value)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def parse_query(params: Mapping[str, Any]) -> LinkState:
    """Query params -> ``LinkState``; malformed parts (non-integer cells, unknown page, non-hex ids) are dropped."""
    bundle = _first(params.get("bundle")) or None
    grid = parse_int(_first(params.get("grid")), 1, MAX_GRID)
    cell_texts = _split(_first(params.get("cell")))[:MAX_LINK_CELLS]
    cells = [c for c in (parse_int(t, 0, MAX_LINK_CELLS - 1) for t in cell_texts) if c is not None]
    images = [i.lower() for i in _split(_first(params.get("images")))
              if all(ch in "0123456789abcdefABCDEF" for ch in i)]
    page = _first(params.get("page"))
    quiz = QuizSpec.from_param(_first(params.get("quiz")))
    page = page if page in PAGES else ("quiz" if quiz else None)
    dim = parse_int(_first(params.get("dim")), 0, N_DIMS - 1)
    return LinkState(bundle=bundle, grid=grid, cells=list(dict.fromkeys(cells)),
                     images=list(dict.fromkeys(images)), page=page, quiz=quiz.to_param() if quiz else None, dim=dim)


def to_query(state: LinkState, id_len: int = ID_PREFIX, max_images: int = MAX_LINK_IMAGES) -> dict[str, str]:
    """``LinkState`` -> query params (only the parts that are set); ids shortened to ``id_len`` characters.

    At most ``max_images`` ids go into the link (a brush over a big cell would make URLs too long).
    """
    out: dict[str, str] = {}
    if state.bundle:
        out["bundle"] = str(state.bundle)
    if state.grid:
        out["grid"] = str(int(state.grid))
    if state.cells:
        out["cell"] = ",".join(str(int(c)) for c in state.cells)
    if state.images:
        out["images"] = ",".join(i[:id_len] for i in state.images[:max_images])
    if state.page and state.page in PAGES:
        out["page"] = state.page
    if state.quiz:
        out["quiz"] = state.quiz
    if state.dim is not None and 0 <= int(state.dim) < N_DIMS:
        out["dim"] = str(int(state.dim))
    return out


def resolve_ids(prefixes: Iterable[str], all_ids: Sequence[str]) -> list[str]:
    """Full image ids for id ``prefixes`` (order kept, duplicates dropped).

    A prefix that matches no id, or more than one, is skipped (a link must not pick the wrong image).
    """
    ids = np.sort(np.asarray(list(all_ids), dtype=object).astype(str))
    out: list[str] = []
    for p in prefixes:
        p = str(p).lower()
        if not p:
            continue
        lo = int(np.searchsorted(ids, p, side="left"))
        hi = int(np.searchsorted(ids, p + "\uffff", side="left"))
        if hi - lo == 1:
            out.append(str(ids[lo]))
    return list(dict.fromkeys(out))


def _selection(event: Any) -> Mapping[str, Any]:
    if not event:
        return {}
    sel = event.get("selection") if isinstance(event, Mapping) else getattr(event, "selection", None)
    return sel if isinstance(sel, Mapping) else {}


def cells_from_event(event: Any, param: str = "cell", field_name: str = "cell_id") -> list[int]:
    """Cell ids picked in a point-selection event (empty when nothing is picked)."""
    points = _selection(event).get(param)
    if not isinstance(points, (list, tuple)):
        return []
    out = []
    for p in points:
        if isinstance(p, Mapping) and p.get(field_name) is not None:
            try:
                out.append(int(p[field_name]))
            except (TypeError, ValueError):
                continue
    return list(dict.fromkeys(out))


def brushed_ids(event: Any, layout: pd.DataFrame, param: str = "brush", x: str = "gx", y: str = "gy") -> list[str]:
    """Ids of the ``layout`` rows (columns ``image_id``, ``x``, ``y``) whose position lies inside the brush.

    The brush event holds ranges in data units, ``{x: [x0, x1], y: [y0, y1]}``; a missing axis is unbounded.
    """
    ranges = _selection(event).get(param)
    if not isinstance(ranges, Mapping) or not ranges or layout.empty:
        return []
    mask = np.ones(len(layout), dtype=bool)
    for col in (x, y):
        r = ranges.get(col)
        if r is None:
            continue
        if not isinstance(r, (list, tuple)) or len(r) != 2:
            return []
        lo, hi = sorted(float(v) for v in r)
        vals = layout[col].to_numpy(dtype=np.float64)
        mask &= (vals >= lo) & (vals <= hi)
    return layout.loc[mask, "image_id"].astype(str).tolist()


def clicked_ids(event: Any, param: str = "pick", field_name: str = "image_id") -> list[str]:
    """Image ids picked in a point-selection event."""
    points = _selection(event).get(param)
    if not isinstance(points, (list, tuple)):
        return []
    return list(dict.fromkeys(str(p[field_name]) for p in points
                              if isinstance(p, Mapping) and p.get(field_name) is not None))


def picked_ids(event: Any, layout: pd.DataFrame) -> list[str]:
    """Images picked on the grid chart: the brushed ones, then the clicked ones (layout order, no duplicates)."""
    chosen = set(brushed_ids(event, layout)) | set(clicked_ids(event))
    if not chosen:
        return []
    return [i for i in layout["image_id"].astype(str) if i in chosen]


def _non_empty(sel: Mapping[str, Any]) -> bool:
    return any(bool(v) for v in sel.values())


def event_signature(event: Any) -> str:
    """A stable string of an event's selection, to tell a new event from one already handled."""
    return json.dumps(_selection(event), sort_keys=True, default=str)


def reconcile(event: Any, last_signature: str | None, current: list, convert) -> tuple[list, str]:
    """Apply a chart event to a selection -> ``(selection, signature)`` (store the signature for next time).

    - the same event as last time (any rerun not caused by the chart): ``current`` is kept;
    - a new non-empty selection: ``convert(event)`` replaces ``current``;
    - an empty selection right after a non-empty one (double-click clear): the selection is cleared;
    - an empty selection otherwise (a chart drawn afresh): ``current`` is kept, so a selection that came
      from a link or another page survives.
    """
    sig = event_signature(event)
    if sig == last_signature:
        return current, sig
    if _non_empty(_selection(event)):
        return convert(event), sig
    was_non_empty = last_signature is not None and bool(last_signature) and _non_empty(json.loads(last_signature))
    return ([] if was_non_empty else current), sig


def short_hash(text: str, n: int = 8) -> str:
    """First ``n`` hex characters of the SHA-1 of ``text`` (stable widget keys across processes)."""
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def keep_recent(store: dict, key, value, max_items: int) -> None:
    """``store[key] = value``, dropping the oldest entries beyond ``max_items`` (a session's recent results)."""
    store[key] = value
    while len(store) > max_items:
        store.pop(next(iter(store)))
