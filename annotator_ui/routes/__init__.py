"""The web app's routers, one module per area: ``auth`` (login, logout, who am I), ``review``
(the annotate page and the item API), ``images`` (image bytes by row id) and ``admin`` (the
admin page, apply, stats, export). ``annotator_ui.app.create_app`` includes them.

What several routers document alike lives here: this package imports none of its modules, so
they can import it without a cycle.
"""

from typing import Any

__all__ = ["HTML_PAGE", "REDIRECT", "PUBLIC"]

HTML_PAGE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "an HTML page"}
}
REDIRECT: dict[int | str, dict[str, Any]] = {303: {"description": "done; the browser follows the Location header"}, **HTML_PAGE}
PUBLIC: dict[str, Any] = {"security": []}  # operations that need no session (openapi_extra)
