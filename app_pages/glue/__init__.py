"""Streamlit glue shared by the entry script and the pages, one concern per module.

- ``state``: session-state keys, links (URL <-> selection), chart events, switching bundles.
- ``budget``: hosted mode's policy and the one place on-demand work is charged to a visitor.
- ``data``: cached access to bundles and to every computation the pages show (``asap_core.views``).
- ``errors``: the one way a page shows an error.
- ``sidebar``: the sidebar (open bundle, model, analyse a folder) and ``page_start``, every page's first call.
- ``widgets``: small widget groups more than one page uses.

Everything that computes lives in ``asap_core``; these modules cache results per bundle (path +
``bundle.json`` mtime), hold the session's selection and lay out shared widgets.
"""
