"""A visitor's on-demand work, all through one helper: ``charged_work`` checks the input, loads the model,
charges the visitor, waits for a work slot, runs the work under a progress bar and reports what went wrong.

The order is the point: what is wrong with the input and a model that cannot load are said before anything
is charged, so a visitor never pays for work that cannot run; only then is the price (``views.cost``, in the
budget's unit) charged (``budget.charge``, hosted mode only), and only then does the work wait for one of
the server's slots (``budget.heavy_work``). ``charged_work`` is the app's only caller of ``budget.charge``
(a test checks it); uploads of whole image sets are charged in images and bytes by ``byo`` instead
(``budget.charge_upload``).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from asap_core.analyses.concepts import ConceptResult, compute_concepts
from asap_core.analyses.laundering import launder
from asap_core.analyses.naming import WordScores, words_cached
from asap_core.analyses.single_image import SingleImageResult, analyse_upload, check_upload
from asap_core.errors import AsapError
from asap_core.inputs.imageio import sha1_hex
from asap_core.method.relevance_store import bundle_maps, missing_maps
from asap_core.model.hints import hint_for
from asap_core.storage.bundle import Bundle
from asap_core.views import cost
from asap_core.views import robustness as vr
from asap_core.views import state as vs
from asap_core.views.text import as_text

from . import budget, data
from .errors import hint_place, show_error
from .keys import K_ROB_PAID, K_SINGLE_PAID, K_SINGLE_RESULTS
from .widgets import progress_bar

T = TypeVar("T")
Progress = Callable[[int, int], None]
MAX_KEPT_UPLOADS = 4  # results of recent uploads kept in a session


def _no_progress(done: int, total: int) -> None:
    """Progress of work shown under a spinner: nothing to update."""


# ------------------------------------------------------------------------------------------ the helper
def charged_work(b: Bundle, needed_for: str, price: int | Callable[[Any], int], work: Callable[[Any, Progress], T],
                 text: str, *, load: Callable[[], Any] | None = None, check: Callable[[], object] | None = None,
                 paid: tuple[set, Hashable] | None = None, spinner: bool = False,
                 read_only_hint: str = "") -> T | None:
    """Run ``work(model, progress)`` for the visitor: check -> load -> charge -> wait for a slot -> run -> report.

    ``check()`` raises the ``AsapError`` the work would (bad input); ``load()`` gives the model (default: the
    bundle's CLIP, or the visitor's local copy of it), its failure said as "``needed_for`` need the bundle's
    CLIP: ...". ``price`` (map images, from ``views.cost``; or ``price(model)``) is charged once per
    ``paid = (set of what this session paid for, this work's key)``, or every time without ``paid``. The work
    runs in a slot under a progress bar saying ``text`` (``spinner``: a spinner, for work without steps).
    Returns the work's result; None, with the reason and its fix shown, when any step fails."""
    seen, key = paid if paid is not None else (set(), None)
    if (key is None or key not in seen) and check is not None and not _passes(check):
        return None
    loaded, model = _loaded(b, needed_for, load)
    if not loaded:
        return None
    if key is None or key not in seen:
        if not budget.charge(price(model) if callable(price) else int(price)):
            return None
        if key is not None:
            seen.add(key)
    return _run_reported(work, model, text, spinner, read_only_hint)


def _passes(check: Callable[[], object]) -> bool:
    """Run ``check()``; False, with its error shown, when it refuses the input."""
    try:
        check()
    except AsapError as exc:
        show_error(exc)
        return False
    return True


def _loaded(b: Bundle, needed_for: str, load: Callable[[], Any] | None) -> tuple[bool, Any]:
    """``(True, model)``, or ``(False, None)`` after showing why the model cannot be loaded and the fix."""
    try:
        return True, (load() if load is not None else data.get_encoder(data.encoder_model(b)))
    except AsapError as exc:
        show_error(AsapError(f"{needed_for} need the bundle's CLIP: {exc.message}", hint_for(exc, hint_place())))
        return False, None


def _run_reported(work: Callable[[Any, Progress], T], model: Any, text: str, spinner: bool,
                  read_only_hint: str) -> T | None:
    """``work(model, progress)`` in a work slot under a progress bar (or spinner); None, with the message and
    fix shown, when it raises an ``AsapError`` or cannot write into the bundle's cache (read-only folder)."""
    try:
        with budget.heavy_work():
            if spinner:
                with st.spinner(f"{text} ..."):
                    return work(model, _no_progress)
            with progress_bar(f"{text} ...", lambda d, t: f"{text}: {d:,}/{t:,}") as progress:
                return work(model, progress)
    except AsapError as exc:
        show_error(exc)
    except OSError as exc:  # e.g. a read-only bundle folder: results cannot be stored in its cache/
        show_error(AsapError(f"The results cannot be stored in the bundle's cache folder ({exc.strerror or exc}).",
                             "make the bundle's cache/ writable for the app"
                             + (f", or {read_only_hint}" if read_only_hint else "") + "."))
    return None


# ------------------------------------------------------------------------------------------ relevance maps
def maps_for(b: Bundle, ids: list[str], method: str) -> np.ndarray | None:
    """Maps ``[n, 17, side, side]`` float16 of ``ids``: those not stored yet are charged to the visitor and
    computed (progress bar), then all are read from the store. None, with the error and its fix shown, when
    that cannot be done."""
    missing = missing_maps(b, ids, method)
    if missing:
        done = charged_work(b, "Relevance maps", cost.maps_cost(len(missing)),
                            lambda enc, progress: bundle_maps(b, missing, method, encoder=enc, progress=progress),
                            f"Computing {method} maps for {len(missing)} images",
                            read_only_hint="precompute the maps (`analyze --relevance last-block`)")
        if done is None:
            return None
        data.stored_maps.clear()
    return data.stored_maps(*data.ref(b), tuple(ids), method)


def concepts_for(b: Bundle, ids: list[str], k: int, method: str) -> ConceptResult | None:
    """``analyses.concepts.compute_concepts`` of ``ids`` (their maps first, through ``maps_for``); without a
    model here only concepts cached in the bundle show. None with the reason shown."""
    if maps_for(b, ids, method) is None:  # concepts cut images along their relevance maps
        return None
    return charged_work(b, "Concepts", 0,
                        lambda enc, progress: compute_concepts(b, ids, k=k, method=method, encoder=enc,
                                                               progress=progress),
                        "Encoding segments", load=lambda: _encoder_or_none(b))


def _encoder_or_none(b: Bundle) -> Any:
    """The bundle's CLIP when it loads here, else None (the analysis then reads only what is cached)."""
    try:
        return data.get_encoder(data.encoder_model(b))
    except AsapError:
        return None


# ------------------------------------------------------------------------------------------ laundering
def _launderable(b: Bundle, ids: list[str], settings: list[vr.Setting]) -> None:
    """Raise what laundering ``ids`` at ``settings`` would refuse, before the visitor pays: an id not in the
    bundle, a setting out of range, a first image that cannot be read or re-encoded."""
    ids = b.check_ids(ids)
    if ids:
        image = b.decode(ids[0], "its laundering")
        for q, s in settings:
            launder(image, q, s)


def laundering_run(b: Bundle, ids: list[str], settings: list[vr.Setting], with_maps: bool,
                   method: str) -> pd.DataFrame | None:
    """``views.robustness.run_settings`` for the page (maps of the laundered images charged to the visitor),
    under a progress bar; None with the reason shown when it cannot run."""
    n_missing = len(missing_maps(b, ids, method)) if with_maps else 0
    return charged_work(b, "Laundering runs", cost.laundering_cost(len(ids), len(settings), n_missing, with_maps),
                        lambda enc, progress: vr.run_settings(b, ids, settings, enc, with_maps, method,
                                                              progress=progress),
                        f"Laundering {len(ids)} images x {len(settings)} settings",
                        check=lambda: _launderable(b, ids, settings))


def laundered_for(b: Bundle, image_id: str, q: int, s: float, method: str) -> dict | None:
    """One image before / after laundering with maps (``data.laundered``), charged once per image and setting
    in this session; None with the reason shown."""
    paid = st.session_state.setdefault(K_ROB_PAID, set())
    return charged_work(b, "Laundering", cost.laundered_view_cost(len(missing_maps(b, [image_id], method))),
                        lambda enc, _: data.laundered(*data.ref(b), image_id, q, s, method, data.encoder_model(b)),
                        "Computing the laundered image's maps", check=lambda: _launderable(b, [image_id], [(q, s)]),
                        paid=(paid, (str(b.path), image_id, q, s, method)), spinner=True)


# ------------------------------------------------------------------------------------------ one upload
def upload_result(b: Bundle, name: str, blob: bytes, k: int, method: str) -> SingleImageResult | None:
    """``analyses.single_image.analyse_upload`` of one upload: the cheap checks first (type, bytes, pixels from
    the header: nothing decoded before the charge), charged once per upload, method and model in this
    session; the last few results kept in the session. None with the reason shown."""
    ss = st.session_state
    model, digest = data.encoder_model(b), sha1_hex(blob)
    kept: dict = ss.setdefault(K_SINGLE_RESULTS, {})
    key = (str(b.path), digest, int(k), method, model)
    if key in kept:
        return kept[key]
    policy = budget.hosted_policy()
    res = charged_work(b, "Uploads", cost.UPLOAD_VIEW_COST,
                       lambda enc, _: analyse_upload(b, name, blob, encoder=enc, k_neighbours=int(k), method=method,
                                                     policy=policy),
                       f"Embedding {as_text(name)} and computing its {method} maps",
                       check=lambda: check_upload(name, blob, policy),
                       paid=(ss.setdefault(K_SINGLE_PAID, set()), (str(b.path), digest, method, model)), spinner=True)
    if res is not None:
        vs.keep_recent(kept, key, res, MAX_KEPT_UPLOADS)
    return res


# ------------------------------------------------------------------------------------------ naming dimensions
def word_scores_for(b: Bundle, words: list[str]) -> WordScores | None:
    """``analyses.naming.word_scores`` of ``words`` with the bundle's CLIP text tower (or its override's),
    charged unless the ranking is cached (``views.cost.words_cost``); None with the reason shown."""
    model = data.encoder_model(b)
    return charged_work(b, "Ranking words",
                        lambda text: 0 if words_cached(b, words, text) else cost.words_cost(len(words)),
                        lambda _, __: data.word_scores(*data.ref(b), tuple(words), model),
                        f"Ranking {len(words)} words", load=lambda: data.get_text_encoder(model), spinner=True)
