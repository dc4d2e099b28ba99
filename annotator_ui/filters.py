"""Template filters: times as local ISO text, audit details as key: value pairs, and invisible
characters made visible.

Why filters and not pre-formatted strings: the templates stay autoescaped end to end; the one
filter that returns markup (``reveal``) escapes every piece of text it is given itself.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

__all__ = ["INVISIBLE_NAMES", "isotime", "detail_pairs", "reveal", "invisible_count", "register"]

# what ``curation.text.strip_invisible`` removes on save, by the short names Unicode gives them:
# shown in their place, so a bidi override or zero-width space cannot change what a caption looks
# like unseen (tests/annotator_ui check this covers the same characters as the server strips)
INVISIBLE_NAMES = {
    "\u202a": "LRE",
    "\u202b": "RLE",
    "\u202c": "PDF",
    "\u202d": "LRO",
    "\u202e": "RLO",
    "\u2066": "LRI",
    "\u2067": "RLI",
    "\u2068": "FSI",
    "\u2069": "PDI",
    "\u200b": "ZWSP",
    "\u2060": "WJ",
    "\ufeff": "BOM",
}
_INVISIBLE = re.compile("[" + "".join(INVISIBLE_NAMES) + "]")


def isotime(ts: Any) -> str:
    """Epoch seconds as the server's local time in ISO 8601 with its UTC offset (unambiguous)."""
    try:
        return datetime.fromtimestamp(float(ts)).astimezone().isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def detail_pairs(detail: Any) -> list[tuple[str, str]]:
    """An audit row's JSON detail as (key, value) text pairs; text that is not a JSON object is
    one ("", text) pair. The template escapes both."""
    if not detail:
        return []
    try:
        obj = json.loads(detail) if isinstance(detail, str) else detail
    except ValueError:
        return [("", str(detail))]
    if not isinstance(obj, dict):
        return [("", json.dumps(obj, ensure_ascii=False))]
    return [(str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) for k, v in obj.items()]


def invisible_count(text: Any) -> int:
    return sum(1 for ch in str(text or "") if ch in INVISIBLE_NAMES)


def reveal(text: Any) -> Markup:
    """The text escaped, each invisible character replaced by a visible marker (``⟨RLO⟩``)."""
    safe = str(escape(str(text or "")))  # escaping leaves these characters alone

    def marker(m: re.Match) -> str:
        return f'<span class="invis" title="U+{ord(m.group()):04X}">\u27e8{INVISIBLE_NAMES[m.group()]}\u27e9</span>'

    return Markup(_INVISIBLE.sub(marker, safe))


def register(env) -> None:
    env.filters.update(isotime=isotime, detail_pairs=detail_pairs, reveal=reveal, invisible_count=invisible_count)
