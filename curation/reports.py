"""The HTML reports a person opens (profile, pipeline, dedup, export, review, graph), rendered from
jinja2 templates in ``curation/templates``.

Every report extends one base layout (``report_base.html``) that inlines one stylesheet
(``report.css``), so the reports look alike, a style fix lands in all of them at once, and each
report stays a single self-contained file that can be mailed or copied off a cluster. Callers build
plain data (dicts, lists, strings, numbers) and figures; the templates hold the markup.

Autoescaping is on: captions, ids, paths and error messages come from the data and may contain
markup (a hostile caption is ``<script>...``). Figures travel as ``data:`` URIs, whose base64
alphabet autoescaping leaves as it is, so no template needs ``|safe``.

Filters every template may use: ``num`` (a number for a person: thousands separators for integers
and large values, 3 significant digits otherwise, strings passed through as already formatted),
``json_value`` (a JSON-encoded counter shown the same way), ``anchor`` (a string made safe as an HTML id / ``#fragment``) and ``href`` (a link to a local file,
relative to the report's folder when the template gets ``report_dir``, so the page keeps working
when the folder is copied elsewhere).
"""

from __future__ import annotations

import base64
import io
import math
import numbers
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["render", "png_data_uri", "data_uri", "fmt_num", "json_value", "anchor", "href"]


def fmt_num(x: Any, digits: int = 3) -> str:
    """A number as a reader wants it: ``12,345`` for integers, ``0.123`` / ``12.3`` (``digits``
    significant digits) for floats, ``12,346`` for floats of ``10**digits`` and more, ``-`` for None.
    A string is returned unchanged (the caller formatted it already)."""
    if x is None:
        return "-"
    if isinstance(x, (str, bool)):
        return str(x)
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    if isinstance(x, numbers.Real):
        x = float(x)
        if not math.isfinite(x):
            return str(x)
        if x == 0:
            return "0"
        s = f"{x:.{digits}g}"
        if abs(x) >= 10**digits or ("e" in s and abs(x) >= 1):  # 999.7 -> "1e+03": write 1,000
            return f"{x:,.0f}"
        return s
    return str(x)


def json_value(text: Any) -> str:
    """A JSON value (a counter as ``json.dumps`` wrote it) for a reader: numbers through
    ``fmt_num``, objects as ``key value · key value``, lists comma-separated; other text as is."""
    import json

    def show(v: Any) -> str:
        if isinstance(v, dict):
            return " · ".join(f"{k} {show(x)}" for k, x in v.items()) or "-"
        if isinstance(v, list):
            return ", ".join(show(x) for x in v) or "-"
        return fmt_num(v)

    if not isinstance(text, str):
        return show(text)
    try:
        return show(json.loads(text))
    except ValueError:
        return text


def anchor(name: Any) -> str:
    """``name`` as an id a ``#fragment`` can point at: letters, digits, ``_`` and ``-`` only."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", str(name)) or "-"


def href(path: Any, report_dir: Any = None) -> str:
    """A link to the local file ``path``: relative to ``report_dir`` (the folder the report is
    written to) when it is given, else a ``file://`` URI (the one case that is not portable).
    URLs (``http(s)://``, ``s3://``...) and already-relative paths are returned as they are."""
    p = str(path)
    if "://" in p or not os.path.isabs(p):
        return p
    if report_dir:
        return quote(Path(os.path.relpath(p, str(report_dir))).as_posix())
    return Path(p).as_uri()


@lru_cache(maxsize=1)
def _env():
    # One environment per process: jinja2 compiles and caches each template on first use, and the
    # loader finds the templates inside the installed package (package-data), not the cwd.
    from jinja2 import Environment, PackageLoader

    env = Environment(loader=PackageLoader("curation", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=fmt_num, json_value=json_value, anchor=anchor, href=href)
    return env


def render(template_name: str, **context: Any) -> str:
    """Render ``curation/templates/<template_name>`` with ``context``.

    ``generated`` (a string), when given, is shown in the footer as the time the report was made.
    A missing optional key renders empty (jinja2's default), as the reports' optional sections expect.
    """
    context.setdefault("generated", None)
    return _env().get_template(template_name).render(**context)


def data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,...`` for bytes an image encoder produced: embedded so the report is one file."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_data_uri(fig, *, dpi: int = 90, tight: bool = True) -> str:
    """A matplotlib figure as a PNG ``data:`` URI for an ``<img src>``; the figure is closed.

    Closing here, not in every caller, is the point: pyplot keeps every open figure alive, and a
    report with a histogram per signal otherwise leaks dozens of them per run (and warns at 20).
    """
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
    return data_uri(buf.getvalue(), "image/png")
