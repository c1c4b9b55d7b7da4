"""Plain (Streamlit-free) building blocks of the explorer app: one module per view.

- ``pages``: the explorer's pages, listed once (slug, title, icon, file, URL path).
- ``state``: what a link carries (query params <-> selection), chart events -> ids, recent results;
  ``params`` (how a link's values become numbers) and ``quiz_spec`` (a quiz in a link) below it.
- ``cost``: what a visitor's on-demand work costs, in the hosted budget's unit (the one pricing).
- ``overview``: filters, pie-glyph slices, the representation chart, the selected cells' images.
- ``grid``: a cell's images on an IsoMatch grid, thumbnails as data URIs, the grid chart.
- ``attention``: per-image contributions, dimension order, relevance overlays.
- ``dimensions``: per-dimension statistics, distributions, top images, mean maps.
- ``concept``: cards of the concept view (``analyses.concepts``).
- ``patterns``, ``generators``, ``robustness``, ``single``: the analysis pages' tables and charts.

Every view names dimensions with ``storage.labels.dimension_label`` ("dim 3 · smooth skin" once a user named
it; the names are ``Bundle.dimension_names``).

None of these import Streamlit: the pages in ``app_pages/`` only lay them out and hold the widgets.
"""
from __future__ import annotations
