"""Text from files, uploads, bundles, names or a visitor, made safe to put into Streamlit Markdown.

Streamlit renders Markdown (CommonMark + GFM, math, emoji shortcodes, its own ``:color[...]`` and
``:material/...:`` directives) in ``st.markdown``, captions, alerts, headers, image captions, widget labels,
option labels of radios and segmented controls, ``help=`` tooltips, expander and button labels. A file named
``![i](http://host/x.png)`` would make every visitor's browser fetch from ``host``; ``[x](https://host)``
would become a link. :func:`as_text` backslash-escapes every ASCII punctuation character (CommonMark's escape
rule, which also stops GFM autolinks, ``$`` math and directives), turns line breaks into spaces and breaks
emoji shortcodes with an invisible word joiner, so the text shows as it is written. Our own Markdown stays in
the fixed strings around it: ``f"**{as_text(name)}** · ..."``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

#: every ASCII punctuation character: CommonMark lets each be backslash-escaped
_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")
#: what remark-emoji (and Streamlit's test for it) takes as a shortcode, e.g. ``:smile:``
_SHORTCODE = re.compile(r":[\w+-][\w+-]*:")
_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c]+")
WORD_JOINER = "\u2060"


def as_text(value: object) -> str:
    """``value`` (any object; ``str()`` of it) as Markdown that renders to exactly its characters: no link,
    image, HTML, emphasis, math, directive or emoji; line breaks become spaces."""
    s = _BREAKS.sub(" ", str(value))
    if _SHORTCODE.search(s):
        s = s.replace(":", ":" + WORD_JOINER)  # remark-emoji reads text after escapes are resolved
    return _PUNCT.sub(r"\\\1", s)


def as_code(value: object) -> str:
    """``value`` as an inline code span (Markdown shows its characters literally): fenced by more backticks
    than its longest run of them, padded when it starts or ends with one; line breaks become spaces."""
    s = _BREAKS.sub(" ", str(value))
    fence = "`" * (max((len(r) for r in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or (s.startswith(" ") and s.endswith(" ") and s.strip()) else ""
    return f"{fence}{pad}{s}{pad}{fence}" if s else as_text(s)


def as_texts(values: Iterable[object]) -> list[str]:
    """:func:`as_text` of each value (image captions, option labels)."""
    return [as_text(v) for v in values]


__all__ = ["as_code", "as_text", "as_texts", "WORD_JOINER"]
