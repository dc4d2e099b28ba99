"""The annotator web app: server-rendered pages, a small JSON API, images by row id.

Security model, in short (tests in tests/annotator_ui check each point):
- everything but ``/login``, ``/api/login``, ``/health`` and ``/static`` needs a session (401);
- sessions are HttpOnly, SameSite=Strict cookies; form posts carry the session's CSRF token,
  JSON posts the ``X-CSRF-Token`` header; the login form uses a double-submit cookie;
- annotators see only items leased to them (and those items' images), never admin routes;
- pages are Jinja2 with autoescaping and a strict Content-Security-Policy (scripts from this
  origin only, no inline script), so a caption with HTML or script in it is shown as text;
- bodies over ``max_body`` bytes get 413 before the app reads them; malformed input gets 4xx;
- images are addressed by row id and read from the Lance dataset at the mined version, never
  by a path from the request; their type is sniffed and unusual formats are re-encoded as PNG.

Layout: this module builds the app (state, middleware, error handlers, the routers and the
app's own two routes, ``/health`` and ``/openapi.json``); ``deps`` holds the settings and the
dependencies; ``routes/`` one router per area (auth, review, history, images, admin);
``filters`` the template filters (local times, audit details, invisible characters shown).
"""

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from annotator_ui import filters
from annotator_ui.deps import AppSettings, CurrentUser, page, wants_html
from annotator_ui.routes import PUBLIC, admin, auth, history, images, review
from annotator_ui.tags import TagIndex
from curation.reviewdb import BadInput, Conflict, NotFound, ReviewDB, ReviewError, Throttled, User
from curation.security import SESSION_COOKIE

__all__ = ["AppSettings", "create_app", "app_routes"]

HERE = Path(__file__).resolve().parent
log = logging.getLogger(__name__)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class ErrorOut(BaseModel):
    """Every error answer: ``detail`` is a message (or FastAPI's list of field errors on 422)."""

    detail: Any
    error: str | None = None


def _error(description: str, html: bool = False) -> dict[str, Any]:
    # explicit JSON content (not ``model=``), so HTML pages document their errors as the JSON they are
    content: dict[str, Any] = {"application/json": {"schema": ErrorOut.model_json_schema()}}
    if html:
        content["text/html"] = {"schema": {"type": "string"}}
    return {"description": description, "content": content}


# documented on every operation, so a client (or a fuzzer) meets no undocumented status
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("malformed request (e.g. a bad Content-Length)"),
    401: _error("no valid session (log in first; browsers asking for HTML get the login page)", html=True),
    403: _error("not allowed: wrong CSRF token, admin only, or not your lease", html=True),
    404: _error("no such item or image", html=True),
    409: _error(
        "a different decision from you already exists, an undo or re-open that is not allowed (not your latest, too old, "
        "already applied), or an apply already running",
        html=True,
    ),
    413: _error("request body too large"),
    415: _error("stored bytes are not a displayable image"),
    422: _error("invalid input (field errors, NUL characters, tags that are no concept of the concept graph)"),
    429: _error("too many failed logins for this account or address; retry after the Retry-After seconds", html=True),
    503: _error("database busy or unavailable; retry after the Retry-After seconds"),
}


# --- the app -------------------------------------------------------------------------------------------


def create_app(settings: AppSettings, db: ReviewDB | None = None, *, apply: Callable[[str, User], dict[str, Any]] | None = None) -> FastAPI:
    """The FastAPI app for one review database (and the dataset its images come from).

    ``apply`` is the admin page's "apply decisions" action, handed in by the caller (the CLI
    passes ``pipelines.review.review_apply_action``): the web app never imports a job."""
    db = db or ReviewDB(settings.db_url)
    db.start_background_checkpoints()  # WAL checkpoints off the request path (SQLite)
    app = FastAPI(title="curate review", docs_url=None, redoc_url=None, openapi_url=None, responses=ERRORS, lifespan=_lifespan)
    # what the dependencies (annotator_ui.deps) and routers read, one set per app
    app.state.settings, app.state.db, app.state.apply = settings, db, apply
    app.state.dataset = settings.dataset or db.get_meta("dataset")
    app.state.open_version = images.dataset_versions(app.state.dataset)
    app.state.apply_lock = threading.Lock()  # one apply at a time; a second click gets 409
    app.state.tags = TagIndex(db, settings.graph)  # the tag field's suggestions
    app.state.templates = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]))
    filters.register(app.state.templates)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for router in (meta, auth.router, review.router, history.router, images.router, admin.router):
        app.include_router(router)
    _add_error_handlers(app, db)
    app.add_middleware(_Limits, max_body=settings.max_body)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    # Handlers are short database work behind SQLite's single writer lock and the GIL. Fewer
    # threads move the wait for that lock into the event loop: with 4 instead of 40 the lock
    # wait during a burst fell from 77 to 2 ms at p99, but end to end the latency was the same
    # (bench/review.py, 1M items; docs/benchmarks.md), so the default stays Starlette's 40. A
    # knob for deployments that want it: a PostgreSQL pool size, or a CPU-starved host.
    import anyio.to_thread

    anyio.to_thread.current_default_thread_limiter().total_tokens = app.state.settings.threads
    yield


# --- the app's own routes: health probe and the API description ---------------------------------------

meta = APIRouter()


@meta.get("/health", openapi_extra=PUBLIC)
def health():
    return {"ok": True}


@meta.get("/openapi.json", include_in_schema=False)
def openapi_json(request: Request, user: CurrentUser):
    """The API description, for logged-in users (everything but login and health needs a session)."""
    return JSONResponse(_openapi_schema(request.app))


def _openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus how to authenticate: the session cookie on every operation but
    the public ones, and the CSRF header that JSON posts also need."""
    if app.openapi_schema is None:
        schema = app.openapi()
        comps = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        comps["session"] = {
            "type": "apiKey",
            "in": "cookie",
            "name": SESSION_COOKIE,
            "description": "from POST /api/login or the login form",
        }
        schema["security"] = [{"session": []}]
        app.openapi_schema = schema
    return app.openapi_schema


def app_routes(app: FastAPI) -> list[Any]:
    """Every route of the app, one per path operation (and the static mount), the included
    routers' too. Since FastAPI 0.137 ``app.routes`` holds an included router as one node, and
    ``fastapi.routing.iter_route_contexts`` flattens those; before, ``include_router`` copied the
    routes into ``app.routes``. Each entry has ``path``, ``methods``, ``endpoint``, ``matches``."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI < 0.137.2
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


# --- error handlers ------------------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI, db: ReviewDB) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _internal_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ReviewError, _review_error)
    # a locked SQLite file, or a PostgreSQL server that is restarting, deadlocked or out of
    # connections: the request can be retried, so 503 with Retry-After, never a 500
    app.add_exception_handler(sqlite3.OperationalError, _db_busy)
    if db.dialect.name != "sqlite":
        import psycopg

        app.add_exception_handler(psycopg.OperationalError, _db_busy)


async def _http_error(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 405:
        # Starlette's Allow names only the first route with this path; /login has two (GET, POST)
        methods: set[str] = set()
        for route in app_routes(request.app):
            if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
                methods |= route.methods
        return JSONResponse({"detail": exc.detail}, status_code=405, headers={"allow": ", ".join(sorted(methods))})
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        # FastAPI's answer to a JSON body its parser gave up on (nesting 100,000 deep): malformed
        # JSON, a 422 like any other (docs/review.md), not a bare 400
        return JSONResponse({"detail": "the body is not JSON this server reads (malformed, or nested too deep)"}, status_code=422)
    if exc.status_code == 401 and wants_html(request):
        # the login form itself (401 kept for scripts and the API description), not a link to it
        return auth.login_form_page(request, request.app.state.settings, 401, error="Please log in.")
    if exc.status_code in _PAGE_HEADINGS and wants_html(request):
        return _error_page(request, exc.status_code, str(exc.detail), _HTTP_HEADINGS.get(exc.status_code))
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _invalid_request(request: Request, exc: RequestValidationError):
    """422 that names each bad field without echoing what was sent: FastAPI's default puts the
    input in the body (a mistyped password would come back), and a lone surrogate in it
    ("\\ud800", valid JSON text) cannot be encoded as UTF-8: the default handler answered 500.
    ASCII JSON escapes whatever a field name (``loc``) holds."""
    errors = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
    body = json.dumps({"detail": errors}, ensure_ascii=True, default=str)
    return Response(body, status_code=422, media_type="application/json")


async def _internal_error(request: Request, exc: Exception):
    """A bug answers JSON with the security headers (Starlette's fallback is plain text outside
    the middleware that adds them); the traceback goes to the server log only."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    headers = {k.decode(): v.decode() for k, v in security_headers()}
    return JSONResponse({"detail": "internal error"}, status_code=500, headers=headers)


async def _review_error(request: Request, exc: ReviewError):
    # the database layer's refusals, as the statuses ERRORS documents
    if isinstance(exc, Throttled):
        return JSONResponse({"detail": str(exc), "error": "Throttled"}, status_code=429, headers={"retry-after": str(exc.retry_after)})
    code = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 422 if isinstance(exc, BadInput) else 403
    if code in _PAGE_HEADINGS and wants_html(request):
        return _error_page(request, code, str(exc))
    # a refusal may carry what a script needs to fix it (unknown tags: the close concepts)
    return JSONResponse({"detail": str(exc), "error": type(exc).__name__, **getattr(exc, "extra", {})}, status_code=code)


_PAGE_HEADINGS = {403: "Not allowed", 404: "Not found", 409: "Already decided"}
# a route's own 409s are not about a decision (the admin page's apply: one already running, no
# dataset, no apply action), so "Already decided" would mislead there
_HTTP_HEADINGS = {409: "Not possible now"}


def _error_page(request: Request, status: int, message: str, heading: str | None = None) -> Response:
    """A browser gets a readable page (with a way back) instead of a page of JSON."""
    heading = heading or _PAGE_HEADINGS[status]
    return page(request, "error.html", status, heading=heading, message=message, caption=None, item_id=None)


async def _db_busy(request: Request, exc: Exception):
    return JSONResponse({"detail": "database busy, retry"}, status_code=503, headers={"retry-after": "1"})


# --- ASGI middleware: body limit and security headers ---------------------------------------------------


class _Limits:
    """413 for bodies over ``max_body`` (by header, or counted when chunked) and security headers
    on every response. Plain ASGI, so nothing downstream ever buffers an oversized body.

    Every response also carries ``Server-Timing: app;dur=<ms>`` (the time from the request
    reaching the app to its response headers): a slow request in a browser's network panel or in
    ``bench/review.py`` then tells the server's share from the network's and the client's."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = _secure(send, time.perf_counter())
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is None:
            return await self._buffered(scope, receive, send)
        try:
            too_big = int(length) > self.max_body
        except ValueError:
            return await _plain(send, 400, "bad Content-Length")
        if too_big:
            return await _plain(send, 413, f"request body over {self.max_body} bytes")
        return await self.app(scope, receive, send)

    async def _buffered(self, scope, receive, send):
        """No length (chunked): read and count the body before the app sees any of it."""
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await _plain(send, 413, f"request body over {self.max_body} bytes")
            if not msg.get("more_body"):
                break
        return await self.app(scope, _replay(b"".join(chunks), receive), send)


def security_headers() -> list[tuple[bytes, bytes]]:
    """The headers every response carries (set by ``_secure``, and by the 500 handler, which
    answers outside it)."""
    return [
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]


def _secure(send, t0: float):
    """``send`` that adds the security headers (unless the app set them) and Server-Timing."""

    async def send_secure(message):
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            names = {k.lower() for k, _ in headers}
            extra = [*security_headers(), (b"server-timing", b"app;dur=%.2f" % ((time.perf_counter() - t0) * 1000))]
            if b"cache-control" not in names:
                extra.append((b"cache-control", b"no-store"))
            message = {**message, "headers": headers + [h for h in extra if h[0] not in names]}
        await send(message)

    return send_secure


def _replay(body: bytes, receive):
    """``receive`` that gives the buffered body once, then whatever the client sends next (a disconnect)."""
    done = False

    async def replay():
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _plain(send, status: int, text: str) -> None:
    body = json.dumps({"detail": text}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
