"""Streamlit glue shared by the entry script and the pages: session state, links, caches, sidebar.

Everything that computes lives in ``asap_core.views`` (plain functions, unit-tested); this module only
caches those results per bundle (path + bundle.json mtime) and moves selections between pages.

Session state (plain keys, so they survive page switches):
``bundle_path`` (str), ``grid`` (int), ``filters`` (``Filters``), ``sel_cells`` (list[int]),
``sel_images`` (list[str] full ids), ``method`` ("last-block" | "rollout").

Hosted mode (``ASAP_HOSTED=1``, see ``asap_core.hosting``): bundles only by name from the policy's root
(sidebar select box; the link's ``bundle`` is a name resolved through the policy), no folder or model path
boxes, model overrides only from the allow-list, and on-demand relevance charged to the session's budget.
The policy is one object per server (``st.cache_resource``).
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from asap_core.storage.bundle import Bundle
from asap_core.errors import AsapError
from asap_core.hosting import ALLOWLIST_ENV, BUDGET_ENV, MAX_UPLOAD_ENV, ROOT_ENV, HostedPolicy, hosted_mode
from asap_core.views import attention as va
from asap_core.views import dimensions as vd
from asap_core.views import grid as vg
from asap_core.views import overview as ov
from asap_core.views import state as vs

K_BUNDLE = "bundle_path"
K_GRID = "grid"
K_FILTERS = "filters"
K_CELLS = "sel_cells"
K_IMAGES = "sel_images"
K_METHOD = "method"
K_INIT = "_link_loaded"
K_PENDING_IMAGES = "_link_images"
K_PENDING_PAGE = "_link_page"
K_ERROR = "_bundle_error"
K_WANT_DEMO = "_want_demo"
K_DEMO_NOTE = "_demo_note"
K_LAST_REPORT = "_last_analysis"
K_MODEL_OVERRIDE = "model_override"
K_SESSION_ID = "_session_id"
K_COLOR_BY = "color_by"  # overview colouring: "label" | "predicted generator"
BUNDLE_ENV = "ASAP_BUNDLE"
METHODS = ("last-block", "rollout")

PAGE_FILES = {
    "overview": "app_pages/overview.py",
    "images": "app_pages/images.py",
    "attention": "app_pages/attention.py",
    "dimensions": "app_pages/dimensions.py",
    "patterns": "app_pages/patterns.py",
    "generators": "app_pages/generators.py",
    "robustness": "app_pages/robustness.py",
    "single": "app_pages/single_image.py",
}


# ------------------------------------------------------------------------------------------ hosted mode
_CHARGE_LOCK = threading.Lock()  # HostedPolicy.charge_relevance is a read-modify-write of a shared dict


@st.cache_resource(show_spinner=False)
def _policy_for(env: tuple[str | None, ...]) -> HostedPolicy:
    """One policy (and its per-session relevance counts) per server and configuration."""
    return HostedPolicy.from_env()


def hosted_policy() -> HostedPolicy | None:
    """The server's ``HostedPolicy`` in hosted mode, None otherwise; ``InputError`` when misconfigured."""
    if not hosted_mode():
        return None
    return _policy_for(tuple(os.environ.get(k) for k in (ROOT_ENV, ALLOWLIST_ENV, MAX_UPLOAD_ENV, BUDGET_ENV)))


def session_id() -> str:
    """This browser session's id (Streamlit's own, else a uuid kept in session state)."""
    ss = st.session_state
    if K_SESSION_ID not in ss:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        ss[K_SESSION_ID] = str(getattr(ctx, "session_id", "") or uuid.uuid4().hex)
    return ss[K_SESSION_ID]


def hosted_name(path: str | Path | None, policy: HostedPolicy) -> str | None:
    """The name (relative to the policy's root) of an open bundle path; None when outside the root."""
    if not path:
        return None
    try:
        return Path(path).resolve().relative_to(policy.bundle_root).as_posix()
    except ValueError:
        return None


def resolve_hosted(name: str, policy: HostedPolicy) -> str | None:
    """The folder of the visitor-given bundle ``name``; None with the refusal kept for the sidebar."""
    try:
        path = policy.resolve_bundle(name)
    except AsapError as exc:
        st.session_state[K_ERROR] = exc
        return None
    return str(path)


def charge_relevance(n_images: int) -> bool:
    """Charge ``n_images`` of on-demand relevance to this session (hosted mode only); False, with the
    message shown, when that would pass the session's budget."""
    policy = hosted_policy()
    if policy is None or n_images <= 0:
        return True
    try:
        with _CHARGE_LOCK:
            policy.charge_relevance(session_id(), int(n_images))
    except AsapError as exc:
        show_error(exc)
        return False
    return True


def show_error(exc: AsapError, where=st) -> None:
    where.error(exc.message)
    if exc.hint:
        where.caption(f"Fix: {exc.hint}")


# ------------------------------------------------------------------------------------------ bundle
def _stamp(path: str) -> int:
    """mtime (ns) of bundle.json: a rewritten bundle gets fresh cache entries."""
    try:
        return (Path(path).expanduser() / "bundle.json").stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_resource(max_entries=4, show_spinner="Opening bundle ...")
def load_bundle(path: str, stamp: int) -> Bundle:
    """The open bundle (tables loaded once, shared by all sessions; treat as read-only)."""
    b = Bundle.open(path)
    _ = b.images, b.cells
    return b


def demo_module():
    """``asap_core.pipeline.demo`` if it exists (the embedded demo data set), else None."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("asap_core.pipeline.demo") is None:
        return None
    return importlib.import_module("asap_core.pipeline.demo")


def open_demo() -> None:
    """Build (once, with a progress bar) and open the embedded demo bundle; errors go to the sidebar."""
    demo = demo_module()
    if demo is None or not hasattr(demo, "ensure_demo_bundle"):
        return
    bar = st.progress(0.0, text="Preparing the demo bundle (only the first time) ...")
    try:
        path, note = demo.ensure_demo_bundle(
            progress=lambda stage, d, t: bar.progress(min(d / max(t, 1), 1.0), text=f"demo · {stage}: {d}/{t}"))
    except AsapError as exc:
        st.session_state[K_ERROR] = exc
        return
    finally:
        bar.empty()
    st.session_state[K_BUNDLE] = str(path)
    st.session_state[K_DEMO_NOTE] = note


def init_from_link() -> None:
    """Once per session: take bundle, grid, cells, images and page from the URL, else ``$ASAP_BUNDLE``,
    else the demo. Values already in session state (e.g. injected by a test) are kept unless the link
    names its own."""
    ss = st.session_state
    if ss.get(K_INIT):
        return
    ss[K_INIT] = True
    link = vs.parse_query(st.query_params.to_dict())
    try:
        policy = hosted_policy()
    except AsapError as exc:
        ss[K_ERROR], ss[K_BUNDLE], policy = exc, None, None
    if hosted_mode():  # bundles by name under the policy's root only; no demo, no paths
        if policy is not None and (link.bundle or not ss.get(K_BUNDLE)):
            names = policy.list_bundles()
            default = os.environ.get(BUNDLE_ENV)
            name = link.bundle or (default if default in names else (names[0] if names else None))
            ss[K_BUNDLE] = resolve_hosted(name, policy) if name else None
    elif link.bundle:
        ss[K_BUNDLE] = link.bundle
    elif not ss.get(K_BUNDLE):
        ss[K_BUNDLE] = os.environ.get(BUNDLE_ENV) or None
        ss[K_WANT_DEMO] = not ss[K_BUNDLE]
    if link.grid:
        ss[K_GRID] = link.grid
    if link.cells:
        ss[K_CELLS] = link.cells
    if link.images:
        ss[K_PENDING_IMAGES] = link.images
    if link.page:
        ss[K_PENDING_PAGE] = link.page
    ss.setdefault(K_CELLS, [])
    ss.setdefault(K_IMAGES, [])
    ss.setdefault(K_METHOD, METHODS[0])
    ss.setdefault(K_FILTERS, ov.Filters())


def current_bundle() -> Bundle | None:
    """The bundle named in session state, opened through the resource cache; None (error kept) if it fails."""
    ss = st.session_state
    path = ss.get(K_BUNDLE)
    if not path:
        return None
    try:
        b = load_bundle(str(path), _stamp(str(path)))
    except AsapError as exc:
        ss[K_ERROR] = exc
        return None
    ss.pop(K_ERROR, None)
    if K_GRID not in ss or not ss[K_GRID]:
        ss[K_GRID] = bundle_grid(b)
    pending = ss.pop(K_PENDING_IMAGES, None)
    if pending:
        ss[K_IMAGES] = vs.resolve_ids(pending, b.images["image_id"].tolist())
    return b


def bundle_grid(b: Bundle) -> int:
    """The grid the bundle's cells were made with (bundle.json options), else inferred from the cells."""
    g = (b.meta.get("options") or {}).get("grid")
    if g:
        return int(g)
    cells = b.cells
    return int(max(cells["col"].max(), cells["row"].max()) + 1) if len(cells) else 24


def open_bundle(path: str) -> bool:
    """Switch the session to another bundle (selection cleared); False with an error shown if it fails."""
    path = str(Path(path).expanduser())
    try:
        new = load_bundle(path, _stamp(path))
    except AsapError as exc:
        st.sidebar.error(exc.message)
        if exc.hint:
            st.sidebar.caption(f"Fix: {exc.hint}")
        return False
    ss = st.session_state
    ss[K_BUNDLE] = path
    ss[K_GRID] = bundle_grid(new)
    for k in (K_ERROR, K_DEMO_NOTE, "w_grid", "w_label", "w_outcome", "w_gens"):
        ss.pop(k, None)
    ss[K_CELLS], ss[K_IMAGES], ss[K_FILTERS] = [], [], ov.Filters()
    return True


def page_start() -> Bundle:
    """First call of every page: link state, the open bundle, the sidebar; ``st.stop()`` without a bundle.

    The sidebar is drawn by the pages rather than the entry script so that it is part of every run
    (AppTest reruns execute only the page script).
    """
    init_from_link()
    try:
        hosted_policy()
    except AsapError as exc:  # ASAP_HOSTED=1 without a usable configuration: say so, serve nothing
        show_error(exc)
        st.stop()
    if st.session_state.pop(K_WANT_DEMO, False):
        open_demo()
    b = current_bundle()
    sidebar(b)
    return require_bundle(b)


def require_bundle(b: Bundle | None = None) -> Bundle:
    """The open bundle, or a note and ``st.stop()`` when none is open."""
    b = b if b is not None else current_bundle()
    if b is None:
        if hosted_mode():
            st.info("No bundle is open. Pick one of this explorer's bundles in the sidebar.")
        else:
            st.info("No bundle is open. Open one in the sidebar (a folder written by "
                    "`python -m asap_core analyze`), set `ASAP_BUNDLE`, or analyse an image folder there.")
        st.stop()
    return b


def ref(b: Bundle) -> tuple[str, int]:
    """Cache key of a bundle: (path, bundle.json mtime)."""
    return str(b.path), _stamp(str(b.path))


# ------------------------------------------------------------------------------------------ links
def write_link(page: str | None) -> None:
    """Mirror the selection into the URL so a copied link reopens the same view."""
    ss = st.session_state
    b_path = ss.get(K_BUNDLE)
    grid = ss.get(K_GRID)
    default_grid = None
    link_bundle = b_path
    if hosted_mode():  # links name the bundle relative to the root (paths would be refused)
        try:
            policy = hosted_policy()
        except AsapError:
            policy = None
        link_bundle = hosted_name(b_path, policy) if policy is not None else None
    if b_path:
        try:
            default_grid = bundle_grid(load_bundle(str(b_path), _stamp(str(b_path))))
        except AsapError:
            default_grid = None
    link = vs.LinkState(bundle=link_bundle, grid=grid if grid and grid != default_grid else None,
                        cells=list(ss.get(K_CELLS, [])), images=list(ss.get(K_IMAGES, [])), page=page)
    q = vs.to_query(link)
    if st.query_params.to_dict() != q:
        st.query_params.from_dict(q)


def consume_event(chart_key: str, event: Any, current: list, convert) -> list:
    """Apply a chart event to a selection (see ``views.state.reconcile``); remembers what was handled."""
    sig_key = f"_sig_{chart_key}"
    new, sig = vs.reconcile(event, st.session_state.get(sig_key), current, convert)
    st.session_state[sig_key] = sig
    return new


def fresh_chart(chart_key: str) -> bool:
    """True when the chart ``chart_key`` has no event state yet (first draw on this page visit)."""
    fresh = chart_key not in st.session_state
    if fresh:
        st.session_state.pop(f"_sig_{chart_key}", None)
    return fresh


# ------------------------------------------------------------------------------------------ caches
@st.cache_resource(max_entries=8)
def gridded(path: str, stamp: int, grid: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, cells) on ``grid`` x ``grid`` cells (the bundle's own tables for its own grid)."""
    from asap_core.method.layout import regrid

    b = load_bundle(path, stamp)
    if grid == bundle_grid(b):
        return b.images, b.cells
    return regrid(b.images, grid)


@st.cache_data(max_entries=32, show_spinner=False)
def overview_spec(path: str, stamp: int, grid: int, filters: ov.Filters, value: tuple[int, ...]) -> dict:
    """Vega-Lite spec of the overview for one bundle, grid, filter set and initial selection."""
    images, _ = gridded(path, stamp, grid)
    cells = ov.filtered_cells(images, grid, filters)
    return ov.overview_chart(ov.pie_slices(cells), grid, list(value)).to_dict()


@st.cache_data(max_entries=32, show_spinner=False)
def filtered_cells(path: str, stamp: int, grid: int, filters: ov.Filters) -> pd.DataFrame:
    images, _ = gridded(path, stamp, grid)
    return ov.filtered_cells(images, grid, filters)


@st.cache_data(max_entries=32, show_spinner="Arranging images ...")
def grid_for(path: str, stamp: int, grid: int, cells: tuple[int, ...], filters: ov.Filters,
             max_items: int = vg.MAX_GRID_IMAGES) -> tuple[pd.DataFrame, int, int, int]:
    """(layout with thumbnail URLs, n_rows, n_cols, n_members) of the images of ``cells`` passing ``filters``."""
    images, _ = gridded(path, stamp, grid)
    members = vg.cell_members(images, list(cells))
    if filters.active():
        members = members[ov.filter_mask(members, filters)]
    shown = vg.subsample(members, max_items)
    layout, n_rows, n_cols = vg.grid_layout(shown)
    b = load_bundle(path, stamp)
    px = vg.thumb_px(vg.tile_size(n_cols))
    return vg.with_thumbs(layout, b.thumbnails(layout["image_id"].tolist()), px), n_rows, n_cols, len(members)


@st.cache_resource(max_entries=2, show_spinner="Loading CLIP ...")
def get_encoder(model_id: str):
    """The CLIP encoder (eager attention, for relevance), loaded once per model."""
    from asap_core.model.encoder import ClipEncoder

    return ClipEncoder.from_pretrained(model_id, attn_implementation="eager")


def encoder_for(model_id: str, needed_for: str):
    """The cached encoder of ``model_id``, or None after showing why it cannot be loaded and the fix.

    ``needed_for`` starts the message: "Relevance maps" -> "Relevance maps need the bundle's CLIP: ...".
    """
    try:
        return get_encoder(model_id)
    except AsapError as exc:
        show_error(AsapError(f"{needed_for} need the bundle's CLIP: {exc.message}", exc.hint))
        return None


@st.cache_data(max_entries=8, ttl=600, show_spinner=False)
def model_status(model_id: str) -> tuple[bool, str, str]:
    """(ok, message, hint) for a model id: can its weights be had here?"""
    try:
        from asap_core.model.encoder import inspect_checkpoint

        info = inspect_checkpoint(model_id)
    except AsapError as exc:
        return False, exc.message, exc.hint
    except ImportError as exc:
        return False, f"torch / transformers are not installed ({exc}).", "bundles still open view-only."
    return True, f"{info.model_id} (D = {info.embed_dim}, {info.patch_side}x{info.patch_side} patches)", ""


@st.cache_data(max_entries=8, ttl=600, show_spinner=False)
def checkpoint_key(model_id: str) -> str | None:
    """Cache key (weights + preprocessing) of a checkpoint, None when it cannot be read."""
    try:
        from asap_core.model.encoder import inspect_checkpoint

        return inspect_checkpoint(model_id).cache_key
    except (AsapError, ImportError):
        return None


def encoder_model(b: Bundle) -> str:
    """The model to load for ``b``: a local copy the user named in the sidebar, else the bundle's own."""
    return st.session_state.get(K_MODEL_OVERRIDE, {}).get(str(b.path)) or b.meta["encoder"]["model_id"]


def set_model_override(b: Bundle, model: str) -> bool:
    """Use ``model`` (a local copy of the bundle's CLIP) for ``b``; refused unless it is the same checkpoint
    (and, in hosted mode, unless it is on the allow-list)."""
    policy = hosted_policy()
    if policy is not None:
        try:
            policy.check_model(model)
        except AsapError as exc:
            show_error(exc, st.sidebar)
            return False
    key = checkpoint_key(model)
    want = b.meta["encoder"].get("cache_key")
    if key is None:
        ok, msg, hint = model_status(model)
        st.warning(msg)
        if hint:
            st.caption(f"Fix: {hint}")
        return False
    if want and key != want:
        st.warning(f"{model} is not the checkpoint this bundle was made with (cache key {key}, bundle {want}); "
                   "its maps would not match the bundle's dimensions.")
        return False
    st.session_state.setdefault(K_MODEL_OVERRIDE, {})[str(b.path)] = model
    return True


@st.cache_data(max_entries=64, show_spinner=False)
def stored_maps(path: str, stamp: int, ids: tuple[str, ...], method: str) -> np.ndarray:
    """Cached maps ``[n, 17, side, side]`` float16 of ``ids`` (all must be in the bundle's map store)."""
    from asap_core.method.relevance_store import bundle_maps

    return bundle_maps(load_bundle(path, stamp), list(ids), method)


def maps_for(b: Bundle, ids: list[str], method: str) -> np.ndarray | None:
    """Maps of ``ids``: computed (with a progress bar) for those not cached yet, then read from the store.

    None, with the error and its fix shown, when the encoder cannot be loaded.
    """
    missing = va.missing_maps(b, ids, method)
    if missing:
        if not charge_relevance(len(missing)):
            return None
        encoder = encoder_for(encoder_model(b), "Relevance maps")
        if encoder is None:
            return None
        from asap_core.method.relevance_store import bundle_maps

        bar = st.progress(0.0, text=f"Computing {method} maps for {len(missing)} images ...")
        try:
            bundle_maps(b, missing, method, encoder=encoder,
                        progress=lambda d, t: bar.progress(min(d / max(t, 1), 1.0),
                                                           text=f"Computing {method} maps: {d}/{t} images"))
        except AsapError as exc:
            bar.empty()
            show_error(exc)
            return None
        except OSError as exc:  # e.g. a read-only bundle folder: the maps cannot be stored in its cache/
            bar.empty()
            st.error(f"The maps cannot be stored in the bundle's cache folder ({exc.strerror or exc}).")
            st.caption("Fix: make the bundle's cache/ writable for the app, or precompute the maps "
                       "(`analyze --relevance last-block`).")
            return None
        bar.empty()
        stored_maps.clear()
    return stored_maps(*ref(b), tuple(ids), method)


@st.cache_data(max_entries=8, show_spinner=False)
def dimension_data(path: str, stamp: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-dimension table, histogram frame) of a bundle."""
    b = load_bundle(path, stamp)
    w2 = va.head_weights(b.distiller)
    return vd.dimension_table(b.images, w2), vd.distribution_frame(b.images)


@st.cache_resource(max_entries=8)
def head_weights(path: str, stamp: int) -> np.ndarray:
    return va.head_weights(load_bundle(path, stamp).distiller)


def thumbs(b: Bundle, ids: list[str]) -> list[bytes]:
    """Thumbnail JPEG bytes for ``ids`` (a grey placeholder where one is missing)."""
    out = []
    for j in b.thumbnails(ids):
        out.append(j if j is not None else _grey())
    return out


@st.cache_data
def _grey() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 200, 200)).save(buf, format="JPEG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ patterns, generators
def save_pattern_form(b: Bundle, make, key: str, base_name: str, label: str = "Save as pattern",
                      choices: list | None = None, format_choice=str) -> None:
    """An expander with name + note (+ a pick among ``choices``) that saves ``make(name, note[, choice])``
    (a ``Pattern``) in the bundle's ``PatternStore``; errors (name taken, read-only bundle) with their fix."""
    from asap_core.analyses.patterns import PatternStore
    from asap_core.views.patterns import unique_name

    if hosted_policy() is not None:  # visitors would write into the served bundle that every visitor sees
        st.caption("Saving patterns is off on this hosted explorer; run ASAP Explorer locally to save your own.")
        return
    store = PatternStore(b)
    with st.expander(label, icon=":material/bookmark_add:"):
        choice = st.selectbox("Which", choices, format_func=format_choice, key=f"{key}_choice") if choices else None
        name = st.text_input("Pattern name", value=unique_name(base_name, store.names()), key=f"{key}_name")
        note = st.text_input("Note", key=f"{key}_note", placeholder="what the regions show")
        if st.button("Save pattern", key=f"{key}_save", icon=":material/bookmark_add:"):
            try:
                store.add(make(name, note) if choices is None else make(name, note, choice))
            except AsapError as exc:
                show_error(exc)
                return
            st.success(f"Saved pattern '{name.strip()}'.")
            st.page_link(PAGE_FILES["patterns"], label="Open the pattern view", icon=":material/bookmarks:")


@st.cache_data(max_entries=8, show_spinner=False)
def generator_data(path: str, stamp: int) -> tuple[pd.DataFrame, list[str]] | None:
    """(``attribution.generator_predictions``, generator names) of a bundle; None without a generator head."""
    from asap_core.analyses import attribution as attr

    b = load_bundle(path, stamp)
    if not attr.has_generator_head(b):
        return None
    return attr.generator_predictions(b), attr.generator_names(b)


# ------------------------------------------------------------------------------------------ sidebar
def sidebar(b: Bundle | None) -> None:
    """Open bundle (path, metrics, model in use), open another, analyse a folder with a progress bar."""
    ss = st.session_state
    with st.sidebar:
        st.markdown("**ASAP Explorer** · why images look fake")
        err = ss.get(K_ERROR)
        if b is not None:
            counts = b.meta.get("counts", {})
            st.markdown(f"**Bundle** `{b.path.name}`")
            if not hosted_mode():  # a public explorer does not show server paths
                st.caption(str(b.path))
            note = ss.get(K_DEMO_NOTE)
            if note and str(b.path) == str(ss.get(K_BUNDLE)):
                st.info(note)
            val = (b.metrics or {}).get("val") or (b.metrics or {}).get("all") or {}
            line = f"{len(b.images):,} images · {len(b.cells):,} cells"
            if counts:
                line += f" · {counts.get('real', 0):,} real / {counts.get('fake', 0):,} fake"
            st.caption(line)
            if val:
                st.caption(f"validation: accuracy {val.get('accuracy', float('nan')):.3f} · "
                           f"ROC-AUC {val.get('roc_auc', float('nan')):.3f}")
            model_id = encoder_model(b)
            ok, msg, hint = model_status(model_id)
            st.markdown(f"**Model** `{Path(model_id).name if '/' in model_id and Path(model_id).exists() else model_id}`")
            if ok:
                st.caption(msg)
            else:
                st.warning(msg)
                if hint:
                    st.caption(f"Fix: {hint}")
                st.caption("The bundle stays open; maps already cached still show.")
                _model_override_input(b)
        elif err is not None:
            st.error(err.message)
            if err.hint:
                st.caption(f"Fix: {err.hint}")
        else:
            st.info("No bundle open.")

        if hosted_mode():
            _hosted_bundle_picker()
            return
        with st.expander("Open another bundle", expanded=b is None):
            path = st.text_input("Bundle folder", key="w_open_path", placeholder="/path/to/bundle")
            if st.button("Open", key="w_open_btn"):
                if path and open_bundle(path):
                    st.rerun()

        with st.expander("Analyse an image folder"):
            _analyse_form()
        report = ss.get(K_LAST_REPORT)
        if report:
            with st.expander("Last analysis", expanded=False):
                st.code(report, language=None)


def _model_override_input(b: Bundle) -> None:
    """Another copy of the bundle's model: a path box, or in hosted mode a pick from the allow-list."""
    policy = hosted_policy()
    if policy is None:
        local = st.text_input("Local copy of this model", key="w_model_override", placeholder="/path/to/clip-folder")
    elif policy.model_allowlist:
        local = st.selectbox("Model offered here", policy.model_allowlist, key="w_model_override")
    else:
        st.caption("No other model is offered on this explorer.")
        return
    if st.button("Use this model", key="w_model_btn") and local:
        if set_model_override(b, local):
            st.rerun()


def _hosted_bundle_picker() -> None:
    """Hosted mode: a select box of the bundles under the policy's root (no folder paths)."""
    policy = hosted_policy()
    if policy is None:
        return
    names = policy.list_bundles()
    current = hosted_name(st.session_state.get(K_BUNDLE), policy)
    if not names:
        st.warning("This explorer serves no bundles yet.")
        return
    choice = st.selectbox("Bundle", names, index=names.index(current) if current in names else None,
                          placeholder="pick a bundle")
    if choice and choice != current:
        path = resolve_hosted(choice, policy)
        if path is None:
            show_error(st.session_state.pop(K_ERROR))
        elif open_bundle(path):
            st.rerun()


def _analyse_form() -> None:
    from asap_core.model.encoder import resolve_model_id

    data_dir = st.text_input("Image folder", key="w_an_dir", placeholder="/path/to/images (real/, fake/ ...)")
    out = st.text_input("Write bundle to", key="w_an_out",
                        placeholder=f"{data_dir.rstrip('/')}-bundle" if data_dir else "/path/to/new-bundle")
    model = st.text_input("Model (HF id or local folder)", value=resolve_model_id(), key="w_an_model")
    relevance = st.selectbox("Precompute relevance", ["none", "last-block", "rollout"], key="w_an_rel")
    ok, msg, hint = model_status(model) if model else (False, "no model given", "")
    if not ok:
        st.warning(msg)
        if hint:
            st.caption(f"Fix: {hint}")
    if st.button("Analyse", key="w_an_btn"):
        if not data_dir:
            st.warning("Name the image folder first.")
        else:
            run_analysis(data_dir, out or f"{data_dir.rstrip('/')}-bundle", model, relevance)


def run_analysis(data_dir: str, out: str, model: str, relevance: str) -> None:
    """Run ``analyze`` with a live progress bar per stage, then open the new bundle."""
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze

    bar = st.progress(0.0, text="Starting analysis ...")
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{stage}: {done:,}/{total:,}")

    try:
        # decode threads: spawned worker processes would re-run this app's script (Streamlit's __main__)
        opts = AnalyzeOptions(model=model, relevance=relevance, decoder="thread")
        report = analyze(data_dir, out, opts, progress=progress)
    except AsapError as exc:
        bar.empty()
        st.error(exc.message)
        if exc.hint:
            st.caption(f"Fix: {exc.hint}")
        return
    bar.progress(1.0, text=f"Done in {time.perf_counter() - t0:.1f} s")
    if open_bundle(str(report.bundle)):
        st.session_state[K_LAST_REPORT] = report.summary()
        st.rerun()
