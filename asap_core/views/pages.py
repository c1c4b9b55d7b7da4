"""The explorer's pages, listed once: slug (what a link's ``page`` names), title and icon (the navigation),
the page's file and its URL path. The entry script builds the navigation from it, ``glue.keys.PAGE_FILES``
maps slugs to files and ``views.state`` accepts only these slugs in a link. No Streamlit here."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Page:
    """One page: ``slug`` (a link's ``page=``), ``title`` and ``icon`` (a Material icon name as Streamlit
    writes it), ``file`` (the script, relative to the repository root) and ``url_path`` (None: the default
    page, served at ``/``)."""

    slug: str
    title: str
    icon: str
    file: str
    url_path: str | None


def _page(slug: str, title: str, icon: str, file: str | None = None) -> Page:
    return Page(slug, title, f":material/{icon}:", f"app_pages/{file or slug}.py", slug)


#: in navigation order; the first is the default page (served at ``/``)
PAGES: tuple[Page, ...] = (
    Page("overview", "Overview", ":material/bubble_chart:", "app_pages/overview.py", None),
    _page("images", "Images", "grid_view"),
    _page("attention", "Attention", "visibility"),
    _page("dimensions", "Dimensions", "bar_chart"),
    _page("patterns", "Patterns", "bookmarks"),
    _page("generators", "Generators", "factory"),
    _page("robustness", "Robustness", "compress"),
    _page("single", "Single image", "upload", file="single_image"),
    _page("quiz", "Real or AI?", "quiz"),
)
DEFAULT_PAGE = PAGES[0].slug
BY_SLUG: dict[str, Page] = {p.slug: p for p in PAGES}
SLUGS: tuple[str, ...] = tuple(BY_SLUG)
