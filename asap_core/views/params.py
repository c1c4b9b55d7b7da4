"""Numbers a visitor sends in a link: the one way query values become ints, and the bounds they must keep.

``views.state`` (the link) and ``views.quiz_spec`` (a quiz inside a link) both read their numbers here, so
neither needs the other."""
from __future__ import annotations

import re
from typing import Any

MAX_GRID = 200  # cells per side a link may ask for
MAX_LINK_CELLS = MAX_GRID * MAX_GRID  # cell ids read from one link: every cell of the largest grid
MAX_LINK_INT = 10**9  # the largest number any query value may carry
_DIGITS = re.compile(r"[0-9]+")


def parse_int(text: Any, lo: int = 0, hi: int = MAX_LINK_INT) -> int | None:
    """A visitor-sent value as an int in ``[lo, hi]``, else None: only ASCII digits (``str.isdigit`` also
    takes "²" and other Unicode digits, which ``int`` refuses), at most as many as ``hi`` has, no sign, no
    spaces. The one way query values become numbers."""
    if not isinstance(text, str) or not 0 < len(text) <= len(str(hi)) or not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if lo <= value <= hi else None
