"""Cached access to bundles and to what the pages show (a visitor's on-demand work: ``glue.work``).

Results are cached per bundle version (path + ``bundle.json`` mtime: a rewritten bundle gets fresh
entries): ``st.cache_resource`` for shared objects (bundles, binned tables), ``st.cache_data`` for frames
and chart specs. The encoder comes from ``asap_core``'s one cached factory. Every computation is an
``asap_core`` function; this module only caches and shows what cannot be read.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from asap_core.analyses import attribution as attr
from asap_core.analyses import naming as nm
from asap_core.analyses.laundering import laundered_view
from asap_core.analyses.naming import WordScores
from asap_core.analyses.patterns import PatternStore, rank_patterns
from asap_core.errors import AsapError, BundleError
from asap_core.hosting import error_id, visitor_echo
from asap_core.method.bundle_models import bundle_distiller
from asap_core.method.layout import regrid
from asap_core.method.relevance_store import bundle_maps, missing_maps
from asap_core.model.hints import hint_for
from asap_core.storage.bundle import Bundle
from asap_core.storage.schema import N_DIMS
from asap_core.views import attention as va
from asap_core.views import dimensions as vd
from asap_core.views import generators as vgen
from asap_core.views import grid as vg
from asap_core.views import overview as ov
from asap_core.views import patterns as vp
from asap_core.views import quiz as vq
from asap_core.views import single as vsi

from . import budget
from .errors import LOG, hint_place, show_error
from .keys import K_MODEL_OVERRIDE


# ------------------------------------------------------------------------------------------ bundles
def stamp(path: str) -> int:
    """mtime (ns) of bundle.json: a rewritten bundle gets fresh cache entries."""
    try:
        return (Path(path).expanduser() / "bundle.json").stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_resource(max_entries=4, show_spinner="Opening bundle ...")
def load_bundle(path: str, stamp: int) -> Bundle:
    """The open bundle (tables loaded once, shared by all sessions; treat as read-only). Its thumbnail index
    is built in the background meanwhile (a second or more at a million images, mostly reading the id column
    spread over the thumbnail file), so the first cell opened does not wait for it. Any failure is a
    ``BundleError`` in words (``unopenable``): one bad bundle never breaks a page."""
    try:
        b = Bundle.open(path)
        _ = b.images, b.cells
    except AsapError:
        raise
    except Exception as exc:
        raise unopenable(Path(path).name, exc) from None
    threading.Thread(target=_index_thumbnails, args=(b,), name="asap-thumb-index", daemon=True).start()
    return b


def _index_thumbnails(b: Bundle) -> None:
    """Build ``b``'s thumbnail index; a problem is left for the page that needs a thumbnail to report."""
    try:
        _ = b.thumb_reader
    except Exception:
        pass


@st.cache_data(max_entries=256, ttl=300, show_spinner=False)
def bundle_problem(name: str, stamp: int) -> str | None:
    """Hosted mode: why the listed bundle ``name`` is unavailable (``HostedPolicy.bundle_problem``), or None;
    checked once per version of its ``bundle.json`` (and every 5 minutes), every row of its tables read once per
    version of its files (``deep``). Never raises: an unexpected failure is a sentence with an error id."""
    try:
        policy = budget.hosted_policy()
        return policy.bundle_problem(name, deep=True) if policy is not None else None
    except Exception as exc:
        return unopenable(name, exc).message


def unopenable(name: str, exc: BaseException) -> BundleError:
    """The plain ``BundleError`` of the bundle ``name`` that failed with ``exc``, logged under an error id."""
    eid = error_id()
    LOG.error("error id %s: bundle %r: %s", eid, name, exc, exc_info=(type(exc), exc, exc.__traceback__))
    return BundleError(f"Bundle '{visitor_echo(name)}' cannot be opened (error id {eid}).",
                       "pick another bundle; the explorer's operator can re-run its analysis.")


def ref(b: Bundle) -> tuple[str, int]:
    """Cache key of a bundle: (path, bundle.json mtime)."""
    return str(b.path), stamp(str(b.path))


@st.cache_resource(max_entries=8)
def gridded(path: str, stamp: int, grid: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, cells) on ``grid`` x ``grid`` cells (the bundle's own tables for its own grid)."""
    b = load_bundle(path, stamp)
    if grid == b.grid:
        return b.images, b.cells
    return regrid(b.images, grid)


#: thumbnails kept rendered at a shown width, per bundle (a few kB each): past this many the cache starts over
SMALL_THUMBS_MAX = 20_000


@st.cache_resource(max_entries=4)
def _small_thumbs(path: str, stamp: int) -> dict[tuple[str, int], str]:
    """(image id, width) -> JPEG ``data:`` URI at that width: shared by every session (strings never change)."""
    return {}


def thumbs(b: Bundle, ids: list[str], width: int) -> list[str]:
    """Thumbnails of ``ids`` as JPEG ``data:`` URIs at most ``width`` px wide (the width ``st.image`` shows them
    at), rendered once for all visitors: ``st.image`` sends them inside the page's message, without encoding,
    hashing or serving an image file per rerun; a grey placeholder where one is missing or is not a thumbnail
    (not an image, or over ``schema.THUMB_MAX_PIXELS`` from its header, so no browser or Streamlit decodes a
    bomb: ``views.grid.thumb_jpeg``)."""
    done = _small_thumbs(*ref(b))
    # read once: another session may start the shared cache over meanwhile
    got = {i: uri for i in ids if (uri := done.get((i, width))) is not None}
    missing = [i for i in dict.fromkeys(ids) if i not in got]
    if missing:
        if len(done) + len(missing) > SMALL_THUMBS_MAX:
            done.clear()
        for i, jpeg in zip(missing, b.thumbnails(missing)):
            got[i] = done[(i, width)] = vg.thumb_uri(jpeg, width, quality=90)
    return [got[i] for i in ids]


@st.cache_resource(max_entries=4)
def _id_index(path: str, stamp: int) -> pd.Index:
    """``images["image_id"]`` as an index (hashed once per bundle, shared by all sessions)."""
    return pd.Index(load_bundle(path, stamp).images["image_id"])


def image_rows(b: Bundle, ids: list[str]) -> pd.DataFrame:
    """The rows of ``b.images`` for ``ids`` (in that order; ids not in the bundle left out), found through a
    shared index: a page that shows a few images never re-indexes the whole table (a million rows) per rerun."""
    pos = _id_index(*ref(b)).get_indexer(pd.Index(list(ids)))
    return b.images.iloc[pos[pos >= 0]]


@st.cache_data(max_entries=8, show_spinner=False)
def generator_choices(path: str, stamp: int) -> list[str]:
    """``views.overview.generators`` of a bundle: the generator filter's choices, computed once per bundle."""
    return ov.generators(load_bundle(path, stamp).images)


# ------------------------------------------------------------------------------------------ overview, grid
@st.cache_data(max_entries=32, show_spinner=False)
def filtered_cells(path: str, stamp: int, grid: int, filters: ov.Filters) -> pd.DataFrame:
    """The cell table of the images passing ``filters`` (without filters: ``gridded``'s, not recomputed)."""
    images, cells = gridded(path, stamp, grid)
    return ov.filtered_cells(images, grid, filters) if filters.active() else cells


def overview_spec(path: str, stamp: int, grid: int, filters: ov.Filters, value: tuple[int, ...],
                  by_generator: bool = False, names: tuple[str, ...] = ()) -> dict:
    """Vega-Lite spec of the overview (coloured by label, or by predicted generator) with ``value`` selected;
    coloured by label, each cell's tooltip names the dimension that pushes it most (``names``: the bundle's).
    The chart is built once per grid, filters and colouring for every visitor (``_overview_base``); a click
    only sets the selection's starting value (``views.overview.with_selection``)."""
    return ov.with_selection(_overview_base(path, stamp, grid, filters, by_generator, names), value)


@st.cache_data(max_entries=32, show_spinner=False)
def _overview_base(path: str, stamp: int, grid: int, filters: ov.Filters, by_generator: bool,
                   names: tuple[str, ...]) -> dict:
    """The overview's spec with nothing selected (``with_selection`` sets the selection on a copy)."""
    images, _ = gridded(path, stamp, grid)
    gen = generator_data(path, stamp) if by_generator else None
    if gen is not None:
        return arrow_datasets(vgen.generator_overview_spec(images, gen[0], gen[1], grid, filters, []))
    cells = filtered_cells(path, stamp, grid, filters)
    slices = ov.pie_slices(cells)
    drivers = cell_drivers(path, stamp, grid, filters, names)
    if drivers is not None:
        slices = ov.with_drivers(slices, drivers)
    return arrow_datasets(ov.overview_chart(slices, grid, []).to_dict())


@st.cache_data(max_entries=32, show_spinner=False)
def cell_drivers(path: str, stamp: int, grid: int, filters: ov.Filters, names: tuple[str, ...]) -> pd.DataFrame | None:
    """``views.overview.cell_drivers`` of the images passing ``filters`` (once per grid, filters and names, not
    per click); None where the distiller cannot be read here."""
    w2 = head_weights_or_none(path, stamp)
    if w2 is None:
        return None
    images, _ = gridded(path, stamp, grid)
    return ov.cell_drivers(images.loc[ov.filter_mask(images, filters)] if filters.active() else images, w2, names)


@st.cache_data(max_entries=256, show_spinner=False)
def selection_facts(path: str, stamp: int, grid: int, filters: ov.Filters, selected: tuple[int, ...],
                    names: tuple[str, ...] = ()) -> ov.SelectionFacts:
    """``views.overview.selection_facts`` of the ``selected`` cells, once per grid, filters and selection for
    every visitor (the overview's panel and the image grid's picks ask on every rerun)."""
    images, _ = gridded(path, stamp, grid)
    return ov.selection_facts(images, filtered_cells(path, stamp, grid, filters), list(selected), filters,
                              head_weights_or_none(path, stamp), names)


@st.cache_data(max_entries=32, show_spinner=False)
def boundary_list(path: str, stamp: int, grid: int, filters: ov.Filters) -> list[tuple[int, str]]:
    """``views.overview.boundary_list`` of the filtered cells: the overview's "near the boundary" buttons."""
    return ov.boundary_list(filtered_cells(path, stamp, grid, filters), k=5)


@st.cache_data(max_entries=32, show_spinner="Arranging images ...")
def grid_for(path: str, stamp: int, grid: int, cells: tuple[int, ...], filters: ov.Filters,
             max_items: int = vg.MAX_GRID_IMAGES) -> tuple[pd.DataFrame, int, int, int]:
    """(layout with thumbnail URLs, n_rows, n_cols, n_members) of the images of ``cells`` passing ``filters``."""
    images, _ = gridded(path, stamp, grid)
    members = ov.selected_members(images, list(cells), filters)
    layout, n_rows, n_cols = vg.grid_layout(vg.subsample(members, max_items))
    b = load_bundle(path, stamp)
    px = vg.thumb_px(vg.tile_size(n_cols))
    return vg.with_thumbs(layout, b.thumbnails(layout["image_id"].tolist()), px), n_rows, n_cols, len(members)


def arrow_datasets(spec: dict) -> dict:
    """``spec`` with its named datasets as Arrow IPC bytes: what ``st.vega_lite_chart`` otherwise converts them to
    on every rerun (a list of dicts through pandas, most of an overview rerun's chart cost); done once, in the
    cached spec. Streamlit takes datasets that are bytes as they are (it does the same for ``st.altair_chart``);
    where this Streamlit cannot convert them, the spec is returned unchanged."""
    try:
        from streamlit.dataframe_util import convert_anything_to_arrow_bytes
    except ImportError:  # pragma: no cover - another Streamlit
        return spec
    if not isinstance(spec.get("datasets"), dict):
        return spec
    return {**spec, "datasets": {name: rows if isinstance(rows, bytes) else convert_anything_to_arrow_bytes(rows)
                                 for name, rows in spec["datasets"].items()}}


@st.cache_data(max_entries=32, show_spinner=False)
def grid_spec(path: str, stamp: int, grid: int, cells: tuple[int, ...], filters: ov.Filters) -> dict:
    """Vega-Lite spec of the image grid of ``grid_for`` (brush and pick selections), built once for every
    visitor of these cells: building it with Altair on each rerun was most of a grid rerun's server CPU."""
    layout, n_rows, n_cols, _ = grid_for(path, stamp, grid, cells, filters)
    return arrow_datasets(vg.grid_chart(layout, n_rows, n_cols, tile=vg.tile_size(n_cols)).to_dict())


# ------------------------------------------------------------------------------------------ the model
def encoder_model(b: Bundle) -> str:
    """The model to load for ``b``: a local copy the user named in the sidebar, else the bundle's own."""
    return st.session_state.get(K_MODEL_OVERRIDE, {}).get(str(b.path)) or b.encoder_info.model_id


def get_encoder(model_id: str) -> Any:
    """The CLIP encoder of ``model_id`` from ``asap_core``'s cached factory (``ModelLoadError`` if it cannot)."""
    # torch only when a model is needed: the app opens bundles view-only without it
    from asap_core.model.factory import load_encoder

    with st.spinner("Loading CLIP ..."):
        return load_encoder(model_id)


def get_text_encoder(model_id: str) -> Any:
    """CLIP's text tower of ``model_id`` from the factory (``ModelLoadError`` if it cannot)."""
    # torch only when a model is needed: the app opens bundles view-only without it
    from asap_core.model.factory import load_text_encoder

    return load_text_encoder(model_id)


@st.cache_data(max_entries=8, ttl=600, show_spinner=False)
def model_status(model_id: str) -> tuple[bool, str, str, str | None]:
    """(ok, message, hint, cache key) for a model id: can its weights be had here?"""
    try:  # imported here: without torch the import fails, and that is the answer
        from asap_core.model.encoder import inspect_checkpoint

        info = inspect_checkpoint(model_id)
    except AsapError as exc:
        return False, exc.message, hint_for(exc, hint_place()), None
    except ImportError as exc:
        return False, f"torch / transformers are not installed ({exc}).", "bundles still open view-only.", None
    return True, f"{info.model_id} (D = {info.embed_dim}, {info.patch_side}x{info.patch_side} patches)", "", \
        info.cache_key


# ------------------------------------------------------------------------------------------ relevance maps
def n_missing_maps(b: Bundle, ids: list[str], method: str) -> int:
    """How many of ``ids`` have no ``method`` map in the bundle's store yet."""
    return len(missing_maps(b, ids, method))


@st.cache_data(max_entries=64, show_spinner=False)
def stored_maps(path: str, stamp: int, ids: tuple[str, ...], method: str) -> np.ndarray:
    """Cached maps ``[n, 17, side, side]`` float16 of ``ids`` (all must be in the bundle's map store)."""
    return bundle_maps(load_bundle(path, stamp), list(ids), method)


@st.cache_data(max_entries=64, show_spinner=False)
def attention_tiles(path: str, stamp: int, ids: tuple[str, ...], method: str, alpha: float,
                    names: tuple[str, ...]) -> list[dict]:
    """``views.attention.attention_rows`` of ``ids`` (maps already stored: ``work.maps_for`` first) with each tile
    as JPEG bytes at ``TILE_PX``: 18 overlays per image made once for every visitor of the same images, not per
    rerun."""
    b = load_bundle(path, stamp)
    rows = va.attention_rows(image_rows(b, list(ids)), list(ids), stored_maps(path, stamp, ids, method),
                             head_weights(path, stamp), b.thumbnails(list(ids)), alpha=alpha, size=va.TILE_PX,
                             names=names)
    return va.encode_tiles(rows)


@st.cache_data(max_entries=64, show_spinner=False)
def contribution_spec(path: str, stamp: int, ids: tuple[str, ...], names: tuple[str, ...]) -> dict:
    """Vega-Lite spec of the picked images' bars z_i · w2_i (``views.attention.contribution_chart``)."""
    b = load_bundle(path, stamp)
    return arrow_datasets(va.contribution_chart(va.contribution_frame(image_rows(b, list(ids)), list(ids),
                                                                      head_weights(path, stamp), names)).to_dict())


# ------------------------------------------------------------------------------------------ per-view data
@st.cache_resource(max_entries=8)
def head_weights(path: str, stamp: int) -> np.ndarray:
    """w2 ``[16]``: the classifier weight of each dimension."""
    return va.head_weights(bundle_distiller(load_bundle(path, stamp)))


def head_weights_or_none(path: str, stamp: int) -> np.ndarray | None:
    """``head_weights``, or None where the distiller cannot be read here (no torch: bundles open view-only)."""
    try:
        return head_weights(path, stamp)
    except (ImportError, AsapError):
        return None


def dimension_names(b: Bundle) -> tuple[str, ...]:
    """The bundle's dimension names (read afresh: another session may have just named one); all "" when the
    names file cannot be read (the bundle still opens; the Dimensions page says why)."""
    try:
        return b.dimension_names
    except AsapError:
        return ("",) * N_DIMS


@st.cache_data(max_entries=8, show_spinner=False)
def dimension_data(path: str, stamp: int, names: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-dimension table, named with ``names``; histogram frame) of a bundle."""
    b = load_bundle(path, stamp)
    return vd.dimension_table(b.images, head_weights(path, stamp), names), vd.distribution_frame(b.images)


@st.cache_resource(max_entries=4, show_spinner=False)
def generator_data(path: str, stamp: int) -> tuple[pd.DataFrame, list[str]] | None:
    """(``attribution.generator_predictions``, generator names) of a bundle; None without a generator head.
    One row per image: shared by all sessions (read-only), as ``st.cache_data`` would copy it on every call
    (the overview page asks on each rerun)."""
    b = load_bundle(path, stamp)
    if not attr.has_generator_head(b):
        return None
    return attr.generator_predictions(b), attr.generator_names(b)


@st.cache_data(max_entries=16, show_spinner=False)
def confusion(path: str, stamp: int, held_out_only: bool, with_real: bool) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """``views.generators.confusion_tables`` of a bundle."""
    return vgen.confusion_tables(load_bundle(path, stamp), held_out_only, with_real)


@st.cache_data(max_entries=16, show_spinner=False)
def pattern_ranking(path: str, stamp: int, names: tuple[str, ...], keys: tuple[str, ...], method: str) -> pd.DataFrame:
    """``rank_patterns`` of the named patterns (all impacts cached; ``keys`` = their content keys)."""
    b = load_bundle(path, stamp)
    pats = [p for p in PatternStore(b).list() if p.name in set(names)]
    return rank_patterns(b, pats, None, vp.N_RANDOM, vp.SEED, method)


@st.cache_data(max_entries=32, show_spinner=False)
def laundered(path: str, stamp: int, image_id: str, q: int, s: float, method: str, model: str) -> dict:
    """``laundered_view`` of one image (PIL images and maps), computed once per setting (the visitor's charge:
    ``work.laundered_for``)."""
    # torch only when a model is needed: the app opens bundles view-only without it
    from asap_core.model.factory import load_encoder

    return laundered_view(load_bundle(path, stamp), image_id, q, s, encoder=load_encoder(model), method=method)


# ------------------------------------------------------------------------------------------ naming dimensions
@st.cache_data(max_entries=8, ttl=600, show_spinner=False)
def text_tower_problem(model_id: str) -> str | None:
    """Why the CLIP ``model_id`` cannot rank words (no text tower or tokenizer, not loadable here), or None."""
    try:  # imported here: without torch the import fails, and that is the answer
        from asap_core.model.encoder import inspect_checkpoint
        from asap_core.model.text import text_tower_problem as problem

        return problem(inspect_checkpoint(model_id).model_dir)
    except AsapError:
        return "the bundle's CLIP cannot be loaded here"
    except ImportError:
        return "torch / transformers are not installed"


@st.cache_data(max_entries=16, show_spinner=False)
def word_scores(path: str, stamp: int, words: tuple[str, ...], model_id: str) -> WordScores:
    """``analyses.naming.word_scores`` of ``words`` with the text tower of ``model_id`` (cached per vocabulary;
    the visitor's charge: ``work.word_scores_for``)."""
    return nm.word_scores(load_bundle(path, stamp), words, get_text_encoder(model_id))


def vocabulary_text() -> str:
    """The starting vocabulary, one word or phrase per line (``analyses.naming``)."""
    return nm.vocabulary_text()


def vocabulary_words(text: str) -> list[str] | None:
    """The words of an edited vocabulary; None, with what is wrong shown, when it cannot be used."""
    try:
        return nm.parse_vocabulary(text)
    except AsapError as exc:
        show_error(exc)
        return None


def dimension_crops(b: Bundle, ids: list[str], maps: np.ndarray, dim: int) -> list:
    """``analyses.naming.dimension_crops`` of ``ids``' thumbnails along their ``dim`` maps (``maps [n, 17, s, s]``)."""
    return nm.dimension_crops([va.decode_thumb(j) for j in b.thumbnails(ids)], maps, dim)


# ------------------------------------------------------------------------------------------ quiz
@st.cache_data(max_entries=64, show_spinner=False)
def quiz_picture(path: str, stamp: int, image_id: str, side: int):
    """``views.quiz.picture`` of one image (the analysed file, longest side ``side`` px), decoded once."""
    return vq.picture(load_bundle(path, stamp), image_id, side)


# ------------------------------------------------------------------------------------------ single image
@st.cache_data(max_entries=8, show_spinner=False)
def nearest_distance_limit(path: str, stamp: int) -> float:
    """``views.single.nearest_distance_limit`` of the bundle's z: how far its own images lie from each other."""
    return vsi.nearest_distance_limit(load_bundle(path, stamp).z)
