"""The one list of pages (``views.pages``): every page's file exists, slugs and URL paths are unique, and the
navigation, the glue's page files and the pages a link may name all come from it."""
from __future__ import annotations

from pathlib import Path

from app_pages.glue import keys as K
from asap_core.views import pages as vp
from asap_core.views import state as vs

REPO = Path(__file__).resolve().parents[2]


def test_every_page_is_listed_once_with_its_file():
    assert [p.slug for p in vp.PAGES] == list(vp.SLUGS) == list(vp.BY_SLUG)
    assert all((REPO / p.file).is_file() for p in vp.PAGES)
    assert sorted(p.file for p in vp.PAGES) == sorted(f"app_pages/{f.name}" for f in (REPO / "app_pages").glob("*.py")
                                                      if f.name != "__init__.py")
    paths = [p.url_path for p in vp.PAGES]
    assert paths.count(None) == 1 and vp.BY_SLUG[vp.DEFAULT_PAGE].url_path is None  # the default page serves /
    assert len({p for p in paths if p}) == len(paths) - 1


def test_links_and_glue_read_the_same_list():
    assert {p.slug: p.file for p in vp.PAGES} == K.PAGE_FILES
    for slug in vp.SLUGS:
        assert vs.parse_query({"page": slug}).page == slug and vs.to_query(vs.LinkState(page=slug)) == {"page": slug}
    assert vs.parse_query({"page": "admin"}).page is None
