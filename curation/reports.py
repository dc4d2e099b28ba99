"""The HTML reports a person opens (profile, pipeline, dedup, export, review, graph), rendered from
jinja2 templates in ``curation/templates``.

Every report extends one base layout (``report_base.html``) that inlines one stylesheet
(``report.css``), so the reports look alike, a style fix lands in all of them at once, and each
report stays a single self-contained file that can be mailed or copied off a cluster. Callers build
plain data (dicts, lists, strings, numbers) and figures; the templates hold the markup.

Autoescaping is on: captions, ids, paths and error messages come from the data and may contain
markup (a hostile caption is ``<script>...``). Figures travel as ``data:`` URIs, whose base64
alphabet autoescaping leaves as it is, so no template needs ``|safe``.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache
from typing import Any

__all__ = ["render", "png_data_uri", "data_uri"]


@lru_cache(maxsize=1)
def _env():
    # One environment per process: jinja2 compiles and caches each template on first use, and the
    # loader finds the templates inside the installed package (package-data), not the cwd.
    from jinja2 import Environment, PackageLoader

    return Environment(loader=PackageLoader("curation", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)


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
