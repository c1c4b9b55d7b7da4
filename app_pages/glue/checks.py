"""The explanation checks as the pages get them: what analyze stored, or computed on demand for a few
images (charged to the visitor in map images, under a progress bar and a heavy-work slot)."""
from __future__ import annotations

import streamlit as st

from asap_core.analyses import explanation_checks as ec
from asap_core.method.relevance_store import missing_maps
from asap_core.storage.bundle import Bundle
from asap_core.views import checks as vc

from .data import charged_encoder, load_bundle, run_shown


@st.cache_resource(max_entries=8, show_spinner=False)
def stored_checks(path: str, stamp: int):
    """(faithfulness summary, sanity summary) that ``analyze --faithfulness N`` stored, or None (never computes)."""
    found = ec.analysis_checks(load_bundle(path, stamp))
    return None if found is None else (found[0].summary, found[1].summary)


def checks_for(b: Bundle, ids: list[str], method: str, targets: list[int]):
    """(FaithfulnessReport, SanityReport) of ``ids`` for ``targets``; what is missing is charged first, then
    computed under a progress bar (each report once: cached per image in the bundle's cache/). None, with
    the reason shown, when that cannot be done."""
    missing = ec.checks_missing(b, ids, method, targets=targets)
    n_faith, n_sanity = len(missing["faithfulness"]), len(missing["sanity"])
    encoder = None
    if n_faith or n_sanity:
        n_maps = len(missing_maps(b, ids, method))  # the maps under test, where not cached yet
        encoder = charged_encoder(b, "The explanation checks",
                                  vc.check_charge(n_faith, len(targets), n_sanity) + n_maps)
        if encoder is None:
            return None
    sanity = run_shown(ec.sanity_report, b, ids, method, encoder=encoder,
                       progress_text=f"Sanity check for {n_sanity} images") if n_sanity \
        else ec.sanity_report(b, ids, method)
    if sanity is None:
        return None
    faith = run_shown(ec.faithfulness_report, b, ids, method, encoder=encoder, targets=targets,
                      progress_text=f"Deletion and insertion curves for {n_faith} images") if n_faith \
        else ec.faithfulness_report(b, ids, method, targets=targets)
    return None if faith is None else (faith, sanity)


def cached_checks_for(b: Bundle, ids: list[str], method: str, targets: list[int]):
    """``checks_for`` only when nothing needs computing (no model, no charge); else None."""
    missing = ec.checks_missing(b, ids, method, targets=targets)
    return None if missing["faithfulness"] or missing["sanity"] else checks_for(b, ids, method, targets)
