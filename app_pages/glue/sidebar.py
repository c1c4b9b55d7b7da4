"""The sidebar every page draws (open bundle, metrics, model in use; open another bundle; analyse a folder)
and ``page_start``, the first call of every page."""
from __future__ import annotations

import time
from collections.abc import Callable

import streamlit as st

from asap_core.errors import AsapError
from asap_core.hosting import model_label
from asap_core.settings import settings
from asap_core.storage.bundle import Bundle
from asap_core.storage.schema import NO_RELEVANCE, RELEVANCE_METHODS
from asap_core.views.text import as_code, as_text
from asap_core.views.trust import metric_label

from . import budget, byo, data, guide, state
from .errors import show_error, show_unexpected, show_warning, visible
from .keys import (
    K_BUNDLE,
    K_ERROR,
    K_GRID,
    K_LAST_REPORT,
    K_MODEL_OVERRIDE,
    K_WANT_DEMO,
    W_AN_BTN,
    W_AN_DIR,
    W_AN_MODEL,
    W_AN_OUT,
    W_AN_REL,
    W_GRID,
    W_MODEL_BTN,
    W_MODEL_OVERRIDE,
    W_OPEN_BTN,
    W_OPEN_PATH,
)
from .notices import show_notices
from .widgets import progress_bar


def page_start() -> Bundle:
    """First call of every page: link state, the open bundle, the sidebar; ``st.stop()`` without a bundle.

    The sidebar is drawn by the pages rather than the entry script so that it is part of every run
    (AppTest reruns execute only the page script).
    """
    state.init_from_link()
    try:
        budget.hosted_policy()
    except AsapError as exc:  # ASAP_HOSTED=1 without a usable configuration: say so, serve nothing
        show_error(exc)
        st.stop()
    if st.session_state.get(K_WANT_DEMO):
        open_demo()
    byo.run_pending()  # an uploaded set queued by "Bring your own images"
    b = state.current_bundle()
    sidebar(b)
    if b is not None:
        guide.first_visit()
    if b is None:
        if settings().hosted:
            st.info("No bundle is open. Pick one of this explorer's bundles in the sidebar.")
        else:
            st.info("No bundle is open. Open one in the sidebar (a folder written by "
                    "`python -m asap_core analyze`), set `ASAP_BUNDLE`, or analyse an image folder there.")
        st.stop()
    show_notices(b)
    recoverable()
    return b


#: seconds between the empty timed fragment's reruns (``recoverable``): one near-free rerun per open page
RECOVERY_TICK_S = 600


@st.fragment(run_every=RECOVERY_TICK_S)
def recoverable() -> None:
    """An empty timed fragment that keeps an open page working when its server changes (a replica stops and
    the proxy sends the page to another). On a reconnect Streamlit's front end asks the new server for a full
    run only when the page holds a timed fragment; without one, a click inside a fragment (the overview's map,
    the grid's picks) would name a fragment the new session never ran and be dropped. Draws nothing."""


def open_demo() -> None:
    """Build (once, saying what and how long, a bar per step) and open the embedded demo bundle; errors go to
    the sidebar. A build cut short by a rerun (a click meanwhile) starts again on the next run."""
    from asap_core.pipeline.demo import DEMO_DATA, ensure_demo_bundle  # (no torch yet: the message shows first)

    with byo.staged_progress(guide.demo_intro(sum(1 for _ in DEMO_DATA.rglob("*.jpg"))), relevance=True) as progress:
        try:
            # its note (random CLIP) is not kept: every page shows the bundle's notices (glue.notices)
            path, _ = ensure_demo_bundle(progress=progress)
        except AsapError as exc:
            st.session_state[K_ERROR] = exc
            st.session_state.pop(K_WANT_DEMO, None)
            return
    st.session_state.pop(K_WANT_DEMO, None)
    st.session_state[K_BUNDLE] = str(path)


def sidebar(b: Bundle | None) -> None:
    """Open bundle (name, metrics, model in use), open another, analyse a folder with a progress bar."""
    ss = st.session_state
    with st.sidebar:
        st.markdown("**ASAP Explorer** · why images look fake")
        guide.guide_button()
        if b is not None:
            _drawn(_bundle_summary, b)
            _drawn(_model_line, b)
        elif ss.get(K_ERROR) is not None:
            show_error(ss[K_ERROR])
        else:
            st.info("No bundle open.")
        byo.upload_expander(b)
        if settings().hosted:
            _hosted_bundle_picker()
            return
        with st.expander("Open another bundle", expanded=b is None):
            path = st.text_input("Bundle folder", key=W_OPEN_PATH, placeholder="/path/to/bundle")
            if st.button("Open", key=W_OPEN_BTN) and path and state.open_bundle(path):
                st.rerun()
        with st.expander("Analyse an image folder"):
            _analyse_form(b)
        if ss.get(K_LAST_REPORT):
            with st.expander("Last analysis", expanded=False):
                st.code(ss[K_LAST_REPORT], language=None)


def _drawn(part: Callable[[Bundle], None], b: Bundle) -> None:
    """Draw ``part(b)`` of the sidebar; what fails there (a bundle malformed in a way its checks let through)
    is a message with an error id (``show_unexpected``, traceback in the server log), locally too: the
    sidebar is on every page, so it must never take a page down."""
    try:
        part(b)
    except AsapError as exc:
        show_error(exc)
    except Exception as exc:
        show_unexpected(exc)


def _bundle_summary(b: Bundle) -> None:
    """Name (and, locally, path), counts and validation metrics of the open bundle (marked meaningless when
    it was made with a random CLIP)."""
    st.markdown(f"**Bundle** {as_code(b.path.name)}")
    if not settings().hosted:  # a public explorer does not show server paths
        st.caption(as_text(b.path))
    counts = b.counts
    # the overview's slider first: the sidebar is drawn before the page applies it
    grid = int(st.session_state.get(W_GRID) or st.session_state.get(K_GRID) or b.grid)
    n_cells = len(b.cells) if grid == b.grid else len(data.gridded(*data.ref(b), grid)[1])
    st.caption(f"{len(b.images):,} images · {n_cells:,} cells ({grid}×{grid} grid) · {counts.real:,} real / "
               f"{counts.fake:,} fake")
    val = b.metrics.get("val") or b.metrics.get("all") or {}
    if val:
        acc, auc = (val.get(k) for k in ("accuracy", "roc_auc"))  # numbers or null (checked by validate)
        st.caption(f"validation: accuracy {float('nan') if acc is None else acc:.3f} · "
                   f"ROC-AUC {float('nan') if auc is None else auc:.3f}{metric_label(b)}")


def _model_line(b: Bundle) -> None:
    """The model in use and whether it can be loaded here; a way to name another copy when it cannot."""
    model_id = data.encoder_model(b)
    ok, msg, hint, _ = data.model_status(model_id)
    st.markdown(f"**Model** {as_code(model_label(model_id))}")
    if ok:
        st.caption(as_text(visible(msg)))
        return
    show_warning(msg, hint)
    st.caption("The bundle stays open; maps already cached still show.")
    _model_override_input(b)


def _model_override_input(b: Bundle) -> None:
    """Another copy of the bundle's model: a path box, or in hosted mode a pick from the allow-list."""
    policy = budget.hosted_policy()
    if policy is None:
        local = st.text_input("Local copy of this model", key=W_MODEL_OVERRIDE, placeholder="/path/to/clip-folder")
    elif policy.model_allowlist:
        local = st.selectbox("Model offered here", policy.model_allowlist, key=W_MODEL_OVERRIDE)
    else:
        st.caption("No other model is offered on this explorer.")
        return
    if st.button("Use this model", key=W_MODEL_BTN) and local and set_model_override(b, local):
        st.rerun()


def set_model_override(b: Bundle, model: str) -> bool:
    """Use ``model`` (a local copy of the bundle's CLIP) for ``b``; refused unless it is the same checkpoint
    (and, in hosted mode, unless it is on the allow-list)."""
    policy = budget.hosted_policy()
    if policy is not None:
        try:
            policy.check_model(model)
        except AsapError as exc:
            show_error(exc, st.sidebar)
            return False
    ok, msg, hint, key = data.model_status(model)
    if not ok:
        show_warning(msg, hint)
        return False
    want = b.encoder_info.cache_key
    if key != want:
        show_warning(f"{model_label(model)} is not the checkpoint this bundle was made with (cache key {key}, "
                     f"bundle {want}); its maps would not match the bundle's dimensions.")
        return False
    st.session_state.setdefault(K_MODEL_OVERRIDE, {})[str(b.path)] = model
    return True


def _hosted_bundle_picker() -> None:
    """Hosted mode: a select box of the bundles under the policy's root (no folder paths)."""
    policy = budget.hosted_policy()
    if policy is None:
        return
    names = policy.list_bundles()
    current = budget.hosted_name(st.session_state.get(K_BUNDLE), policy)
    if not names:
        st.warning("This explorer serves no bundles yet.")
        return
    problems = {n: data.bundle_problem(n, data.stamp(str(policy.bundle_root / n))) for n in names}
    choice = st.selectbox("Bundle", names, index=names.index(current) if current in names else None,
                          placeholder="pick a bundle",
                          format_func=lambda n: f"{n} (unavailable)" if problems[n] else n)
    if choice and problems[choice]:
        show_warning(f"Bundle '{choice}' is unavailable: {problems[choice]}",
                     "pick another bundle; the explorer's operator can re-run its analysis.")
    elif choice and choice != current:
        path = state.resolve_hosted(choice, policy)
        if path is None:
            show_error(st.session_state.pop(K_ERROR))
        elif state.open_bundle(path):
            st.rerun()


#: the other way to analyse images, named where the folder route cannot run
ZIP_ROUTE = ("or put the images in a zip and use \"Bring your own images\" above: it analyses them with the open "
             "bundle's model.")


def _analyse_form(b: Bundle | None = None) -> None:
    """Folder, output, model and relevance method of a new analysis; runs it on "Analyse". The model starts
    at the open bundle's, as "Bring your own images" uses it: offline both routes analyse with the same model."""
    # torch only when a model is needed: the app opens bundles view-only without it
    from asap_core.model.encoder import resolve_model_id

    data_dir = st.text_input("Image folder", key=W_AN_DIR, placeholder="/path/to/images (real/, fake/ ...)")
    out = st.text_input("Write bundle to", key=W_AN_OUT,
                        placeholder=f"{data_dir.rstrip('/')}-bundle" if data_dir else "/path/to/new-bundle")
    model = st.text_input("Model (HF id or local folder)", key=W_AN_MODEL,
                          value=data.encoder_model(b) if b is not None else resolve_model_id())
    relevance = st.selectbox("Precompute relevance", [NO_RELEVANCE, *RELEVANCE_METHODS], key=W_AN_REL)
    ok, msg, hint, _ = data.model_status(model) if model else (False, "no model given", "", None)
    if not ok:  # said once, here (the button waits for a usable model), with the other route named
        show_warning(msg, (f"{hint.rstrip('.')}; " if hint else "") + ZIP_ROUTE)
    if st.button("Analyse", key=W_AN_BTN, disabled=not ok):
        if not data_dir:
            st.warning("Name the image folder first.")
        else:
            run_analysis(data_dir, out or f"{data_dir.rstrip('/')}-bundle", model, relevance)


def run_analysis(data_dir: str, out: str, model: str, relevance: str) -> None:
    """Run ``analyze`` with a live progress bar per stage, then open the new bundle."""
    # torch only when a model is needed: the app opens bundles view-only without it
    from asap_core.pipeline.analyze import AnalyzeOptions, analyze

    t0 = time.perf_counter()
    stage_now = {"name": ""}
    with progress_bar("Starting analysis ...", lambda d, t: f"{stage_now['name']}: {d:,}/{t:,}") as progress:
        def on_stage(stage: str, done: int, total: int) -> None:
            stage_now["name"] = stage
            progress(done, total)

        try:
            # decode threads: spawned worker processes would re-run this app's script (Streamlit's __main__)
            report = analyze(data_dir, out, AnalyzeOptions(model=model, relevance=relevance, decoder="thread"),
                             progress=on_stage)
        except AsapError as exc:
            show_error(exc)
            return
    if state.open_bundle(str(report.bundle)):
        # the bundle's notices show at the top of every page (show_notices), worded for the app
        st.session_state[K_LAST_REPORT] = (report.summary()
                                           + f"\nIn the app: {time.perf_counter() - t0:.1f} s")
        st.rerun()
