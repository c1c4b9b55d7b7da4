"""The explanation checks as the pages get them: what analyze stored, or computed on demand for a few
images (charged to the visitor in map images, under a progress bar and a heavy-work slot: ``work.charged_work``)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from asap_core.analyses import explanation_checks as ec
from asap_core.analyses.explanation_checks import FaithfulnessReport, SanityReport
from asap_core.method.relevance_store import missing_maps
from asap_core.storage.bundle import Bundle
from asap_core.views.cost import checks_cost

from .data import load_bundle
from .work import Progress, charged_work

Reports = tuple[FaithfulnessReport, SanityReport]


@st.cache_resource(max_entries=8, show_spinner=False)
def stored_checks(path: str, stamp: int) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(faithfulness summary, sanity summary) that ``analyze --faithfulness N`` stored, or None (never computes)."""
    found = ec.analysis_checks(load_bundle(path, stamp))
    return None if found is None else (found[0].summary, found[1].summary)


def checks_for(b: Bundle, ids: list[str], method: str, targets: list[int]) -> Reports | None:
    """(FaithfulnessReport, SanityReport) of ``ids`` for ``targets``; what is missing is charged first
    (``views.cost.checks_cost``: the checks and the maps under test not stored yet), then computed under a
    progress bar (each report once: cached per image in the bundle's cache/). None, with the reason shown,
    when that cannot be done."""
    missing = ec.checks_missing(b, ids, method, targets=targets)
    n_faith, n_sanity = len(missing["faithfulness"]), len(missing["sanity"])
    if not (n_faith or n_sanity):
        return ec.faithfulness_report(b, ids, method, targets=targets), ec.sanity_report(b, ids, method)

    def work(encoder, progress: Progress) -> Reports:
        sanity = ec.sanity_report(b, ids, method, encoder=encoder, progress=progress)
        return ec.faithfulness_report(b, ids, method, encoder=encoder, targets=targets, progress=progress), sanity

    price = checks_cost(n_faith, len(targets), n_sanity, len(missing_maps(b, ids, method)))
    return charged_work(b, "The explanation checks", price, work,
                        f"Checking the maps of {len(ids)} image{'s' if len(ids) != 1 else ''}")


def cached_checks_for(b: Bundle, ids: list[str], method: str, targets: list[int]) -> Reports | None:
    """``checks_for`` only when nothing needs computing (no model, no charge); else None."""
    missing = ec.checks_missing(b, ids, method, targets=targets)
    return None if missing["faithfulness"] or missing["sanity"] else checks_for(b, ids, method, targets)
