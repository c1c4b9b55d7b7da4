"""Streamlit glue shared by the entry script and the pages, one concern per module.

- ``keys``: every session-state key, widget key and page file, named once (pages and tests use the names).
- ``state``: links (URL <-> selection), chart events, switching bundles.
- ``budget``: hosted mode's policy, the visitor's budgets (``charge``, ``charge_upload``) and the work slots.
- ``work``: a visitor's on-demand work, all through ``charged_work`` (check -> load -> charge -> slot -> run
  -> report; priced by ``asap_core.views.cost``): maps, concepts, laundering, uploads, word rankings.
- ``data``: cached access to bundles and to every computation the pages show (``asap_core.views``).
- ``checks``, ``patterns``, ``quiz``, ``byo``: the explanation checks, saved patterns, the quiz's glue and
  "bring your own images", for the pages that show them.
- ``errors``: the one way a page shows an error.
- ``sidebar``: the sidebar (open bundle, model, analyse a folder) and ``page_start``, every page's first call.
- ``widgets``: small widget groups more than one page uses.

Everything that computes lives in ``asap_core``; these modules cache results per bundle (path +
``bundle.json`` mtime), hold the session's selection and lay out shared widgets.
"""
