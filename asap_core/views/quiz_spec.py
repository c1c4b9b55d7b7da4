"""Which images a quiz asks about (:class:`QuizSpec`) and how a link carries it: one compact query value
(``quiz=all:10:42``, ``quiz=cell:13:10:42``, ``quiz=pattern:bright corner:10:42``, ``quiz=filter:fake.wrong:10:42``).

Apart from ``views.quiz`` (which turns a spec into images and explains the answers) so that ``views.state``
can check a link's quiz without importing the quiz view. No Streamlit here."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..storage.schema import LABELS
from . import overview as ov
from .params import MAX_LINK_CELLS, parse_int

SOURCES: dict[str, str] = {"all": "the whole bundle", "cell": "a cell", "pattern": "a saved pattern",
                           "filter": "a filter"}
MAX_QUIZ = 50
DEFAULT_N = 10
DEFAULT_SEED = 42
MAX_SEED = 2**31 - 1
MAX_VALUE = 200  # characters of a spec's value in a link (a pattern name, a filter with a generator)


@dataclass(frozen=True)
class QuizSpec:
    """Which images a quiz asks about: ``source`` in :data:`SOURCES`; ``value`` the cell id, pattern name or
    filter (``"<label>.<outcome>[.<generator>]"``, e.g. ``"fake.wrong"``), empty for ``"all"``; ``n`` images
    (1..:data:`MAX_QUIZ`) drawn with ``seed``. Hashable; :meth:`to_param` / :meth:`from_param` round-trip."""

    source: str = "all"
    value: str = ""
    n: int = DEFAULT_N
    seed: int = DEFAULT_SEED

    def to_param(self) -> str:
        """The link value: ``"all:10:42"`` or ``"cell:13:10:42"``."""
        head = self.source if self.source == "all" else f"{self.source}:{self.value}"
        return f"{head}:{int(self.n)}:{int(self.seed)}"

    @classmethod
    def from_param(cls, text: str | None) -> QuizSpec | None:
        """Inverse of :meth:`to_param`; None when ``text`` is not a valid spec (the value may hold ``:``)."""
        source, _, rest = str(text or "").strip().partition(":")
        parts = rest.split(":") if source == "all" else rest.rsplit(":", 2)
        if source not in SOURCES or len(parts) != (2 if source == "all" else 3) or len(parts[0]) > MAX_VALUE:
            return None
        value, (n_s, seed_s) = ("" if source == "all" else parts[0]), parts[-2:]
        n, seed = parse_int(n_s, 1, MAX_QUIZ), parse_int(seed_s, 0, MAX_SEED)
        if n is None or seed is None:
            return None
        if source == "cell":  # one spelling per cell ("013" -> "13"), so a spec's link is its only key
            cell = parse_int(value, 0, MAX_LINK_CELLS - 1)
            value = "" if cell is None else str(cell)
        if (source == "cell" and not value) or (source == "pattern" and not value.strip()) or \
                (source == "filter" and filters_from_value(value) is None):
            return None
        return cls(source, value, n, seed)

    def to_query(self) -> dict[str, str]:
        """``{"quiz": to_param()}``."""
        return {"quiz": self.to_param()}

    @classmethod
    def from_query(cls, params: Mapping) -> QuizSpec | None:
        """The spec in query params (``quiz``), or None."""
        value = params.get("quiz")
        if isinstance(value, (list, tuple)):
            value = value[-1] if value else None
        return cls.from_param(value)


def filters_from_value(value: str) -> ov.Filters | None:
    """``"<label>.<outcome>[.<generator>]"`` -> ``overview.Filters`` (label real/fake/all, outcome
    correct/wrong/all); None when malformed."""
    parts = str(value).split(".", 2)
    if len(parts) < 2 or parts[0] not in ("all", *LABELS) or parts[1] not in ov.OUTCOME_CHOICES:
        return None
    gens = (parts[2],) if len(parts) == 3 and parts[2] else ()
    return ov.Filters(label=parts[0], generators=gens, outcome=parts[1])


def filter_value(label: str = "all", outcome: str = "all", generator: str | None = None) -> str:
    """Inverse of :func:`filters_from_value`."""
    return f"{label}.{outcome}" + (f".{generator}" if generator else "")
