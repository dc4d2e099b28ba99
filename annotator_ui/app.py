"""The annotator web app: server-rendered pages, a small JSON API, images by row id.

Security model, in short (tests in tests/review check each point):
- everything but ``/login``, ``/api/login``, ``/health`` and ``/static`` needs a session (401);
- sessions are HttpOnly, SameSite=Strict cookies; form posts carry the session's CSRF token,
  JSON posts the ``X-CSRF-Token`` header; the login form uses a double-submit cookie;
- annotators see only items leased to them (and those items' images), never admin routes;
- pages are Jinja2 with autoescaping and a strict Content-Security-Policy (scripts from this
  origin only, no inline script), so a caption with HTML or script in it is shown as text;
- bodies over ``max_body`` bytes get 413 before the app reads them; malformed input gets 4xx;
- images are addressed by row id and read from the Lance dataset at the mined version, never
  by a path from the request; their type is sniffed and unusual formats are re-encoded as PNG.
"""



import io
import json
import re
import sqlite3
import threading
import time
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from fastapi import Depends, FastAPI, Form, HTTPException, Path as PathParam, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field

from curation.text import MAX_CAPTION_CHARS

from curation.reviewdb import BadInput, Conflict, NotFound, ReviewDB, ReviewError, User
from curation.security import CSRF_HEADER, LOGIN_CSRF_COOKIE, SESSION_COOKIE, new_token, tokens_equal

__all__ = ["AppSettings", "create_app"]

HERE = Path(__file__).resolve().parent
ROW_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
ROW_ID_PARAM = Annotated[str, PathParam(pattern=ROW_ID.pattern, max_length=128)]
ITEM_ID = Annotated[int, PathParam(ge=1, le=2**62)]
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SAFE_IMAGE = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png", b"GIF87a": "image/gif",
              b"GIF89a": "image/gif"}
REJECT_REASONS = ["low quality", "caption wrong", "watermark / text overlay", "duplicate", "NSFW", "other"]


class AppSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db_url: str = Field(description="review database: a SQLite path or postgresql:// URL")
    dataset: str | None = Field(None, description="Lance dataset the items come from (for images)")
    lease_s: float = Field(600.0, gt=0, description="seconds an item stays leased without activity")
    gold_rate: float = Field(0.05, ge=0, le=1, description="chance that the next item is a gold item")
    session_ttl_s: float = Field(12 * 3600, gt=0)
    # a form post carries the caption (up to MAX_CAPTION_CHARS, as ingest keeps them), percent-encoded:
    # up to 9 bytes per character of multi-byte text
    max_body: int = Field(1024 * 1024, ge=1024, description="larger request bodies get 413")
    cookie_secure: bool = Field(False, description="set the Secure flag (when served over HTTPS)")
    ray_address: str | None = Field(None, description="Ray cluster for the admin's apply action "
                                    "(default: RAY_ADDRESS or an embedded local one, started on first use)")
    threads: int = Field(40, ge=1, le=256, description="worker threads for the request handlers (database work)")
    title: str = "Review"


# text without NUL characters: PostgreSQL cannot store them, and the schema says so (clients and
# fuzzers see the rule in openapi.json instead of meeting a surprise 422)
NO_NUL = r"^[^\x00]*$"


class DecisionIn(BaseModel):
    """A decision posted as JSON (what the page's form posts carry, as an API)."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["keep", "drop"]
    flag: bool = False
    caption: str | None = Field(None, max_length=MAX_CAPTION_CHARS, pattern=NO_NUL)
    tags: list[Annotated[str, Field(max_length=64, pattern=NO_NUL)]] = Field(default_factory=list, max_length=64)
    reasons: list[Annotated[str, Field(max_length=200, pattern=NO_NUL)]] = Field(default_factory=list, max_length=20)


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
    403: _error("not allowed: wrong CSRF token, admin only, or not your lease"),
    404: _error("no such item or image"),
    409: _error("a different decision from you already exists"),
    413: _error("request body too large"),
    415: _error("stored bytes are not a displayable image"),
    422: _error("invalid input (field errors, NUL characters)"),
    503: _error("database busy or unavailable; retry after the Retry-After seconds"),
}
HTML_PAGE = {200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "an HTML page"}}
REDIRECT = {303: {"description": "done; the browser follows the Location header"}, **HTML_PAGE}
PUBLIC = {"security": []}  # operations that need no session


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    password: str = Field(min_length=1, max_length=1024)


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

        t0 = time.perf_counter()

        async def send_secure(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                         (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                         (b"cross-origin-opener-policy", b"same-origin"),
                         (b"server-timing", b"app;dur=%.2f" % ((time.perf_counter() - t0) * 1000))]
                if b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers + [h for h in extra if h[0] not in names]}
            await send(message)

        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return await _plain(send_secure, 400, "bad Content-Length")
            if too_big:
                return await _plain(send_secure, 413, f"request body over {self.max_body} bytes")
            return await self.app(scope, receive, send_secure)
        # no length (chunked): read and count before the app sees anything
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await _plain(send_secure, 413, f"request body over {self.max_body} bytes")
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        done = False

        async def replay():
            nonlocal done
            if not done:
                done = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send_secure)


async def _plain(send, status: int, text: str) -> None:
    body = json.dumps({"detail": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# --- the app -------------------------------------------------------------------------------------------


def create_app(settings: AppSettings, db: ReviewDB | None = None, *,
               apply: Callable[[str, User], dict[str, Any]] | None = None) -> FastAPI:
    """The FastAPI app for one review database (and the dataset its images come from).

    ``apply`` is the admin page's "apply decisions" action, handed in by the caller (the CLI
    passes ``pipelines.review.review_apply_action``): the web app never imports a job."""
    db = db or ReviewDB(settings.db_url)
    db.start_background_checkpoints()  # WAL checkpoints off the request path (SQLite)
    dataset = settings.dataset or db.get_meta("dataset")
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Handlers are short database work behind SQLite's single writer lock and the GIL. Fewer
        # threads move the wait for that lock into the event loop: with 4 instead of 40 the lock
        # wait during a burst fell from 77 to 2 ms at p99, but end to end the latency was the same
        # (bench/review.py, 1M items; docs/benchmarks.md), so the default stays Starlette's 40. A
        # knob for deployments that want it: a PostgreSQL pool size, or a CPU-starved host.
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        yield

    app = FastAPI(title="curate review", docs_url=None, redoc_url=None, openapi_url=None, responses=ERRORS,
                  lifespan=lifespan)
    app.state.db, app.state.settings = db, settings
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(title=settings.title, **ctx)
        return HTMLResponse(html, status_code=status)

    def set_session(resp: Response, token: str) -> None:
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=settings.cookie_secure,
                        max_age=int(settings.session_ttl_s), path="/")

    # --- auth dependencies ----------------------------------------------------------------------
    # async: a session lookup is one primary-key read (tens of microseconds); running it on the
    # event loop saves a thread-pool hop per dependency on every request
    async def session(request: Request) -> tuple[User, str]:
        s = db.session(request.cookies.get(SESSION_COOKIE))
        if s is None:
            wants_html = "text/html" in request.headers.get("accept", "")
            raise HTTPException(401, "log in first", headers={"x-login": "/login"} if wants_html else None)
        return s

    async def user_dep(s: Annotated[tuple[User, str], Depends(session)]) -> User:
        return s[0]

    async def json_csrf(request: Request, s: Annotated[tuple[User, str], Depends(session)]) -> User:
        if not tokens_equal(request.headers.get(CSRF_HEADER), s[1]):
            raise HTTPException(403, "missing or wrong X-CSRF-Token header")
        return s[0]

    async def admin_dep(user: Annotated[User, Depends(user_dep)]) -> User:
        if not user.is_admin:
            raise HTTPException(403, "admins only")
        return user

    CurrentUser = Annotated[User, Depends(user_dep)]
    CsrfUser = Annotated[User, Depends(json_csrf)]
    Admin = Annotated[User, Depends(admin_dep)]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:
            # Starlette's Allow names only the first route with this path; /login has two (GET, POST)
            methods: set[str] = set()
            for route in app.router.routes:
                if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
                    methods |= route.methods
            return JSONResponse({"detail": exc.detail}, status_code=405,
                                headers={"allow": ", ".join(sorted(methods))})
        if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
            return page("login.html", 401, error="Please log in.", csrf=None, login_csrf=None)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(ReviewError)
    async def review_error(request: Request, exc: ReviewError):
        code = (404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict)
                else 422 if isinstance(exc, BadInput) else 403)
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=code)

    async def db_busy(request: Request, exc: Exception):
        return JSONResponse({"detail": "database busy, retry"}, status_code=503, headers={"retry-after": "1"})

    # a locked SQLite file, or a PostgreSQL server that is restarting, deadlocked or out of
    # connections: the request can be retried, so 503 with Retry-After, never a 500
    app.add_exception_handler(sqlite3.OperationalError, db_busy)
    if db.dialect.name != "sqlite":
        import psycopg

        app.add_exception_handler(psycopg.OperationalError, db_busy)

    # --- public -----------------------------------------------------------------------------------
    @app.get("/health", openapi_extra=PUBLIC)
    def health():
        return {"ok": True}

    @app.get("/login", response_class=HTMLResponse, responses=HTML_PAGE, openapi_extra=PUBLIC)
    def login_page(request: Request):
        token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_token()
        resp = page("login.html", login_csrf=token, error=None, csrf=None)
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=settings.cookie_secure,
                        max_age=3600, path="/login")
        return resp

    @app.post("/login", responses=REDIRECT, openapi_extra=PUBLIC)
    def login_form(request: Request, username: Annotated[str, Form(min_length=1, max_length=64)],
                   password: Annotated[str, Form(min_length=1, max_length=1024)],
                   csrf: Annotated[str, Form(min_length=1, max_length=128)]):
        if not tokens_equal(csrf, request.cookies.get(LOGIN_CSRF_COOKIE)):
            raise HTTPException(403, "login form expired; reload the page")
        user = db.authenticate(username, password)
        if user is None:
            return page("login.html", 401, login_csrf=csrf, error="Wrong user name or password.", csrf=None)
        token, _ = db.create_session(user, settings.session_ttl_s)
        resp = RedirectResponse("/", status_code=303)
        set_session(resp, token)
        return resp

    @app.post("/api/login", openapi_extra=PUBLIC)
    def login_json(body: LoginIn):
        user = db.authenticate(body.username, body.password)
        if user is None:
            raise HTTPException(401, "wrong user name or password")
        token, csrf = db.create_session(user, settings.session_ttl_s)
        resp = JSONResponse({"user": user.name, "role": user.role, "csrf": csrf})
        set_session(resp, token)
        return resp

    # --- annotator pages ---------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, responses=HTML_PAGE)
    def annotate_page(s: Annotated[tuple[User, str], Depends(session)]):
        user, csrf = s
        item = db.next_item(user, lease_s=settings.lease_s, gold_rate=settings.gold_rate)
        return page("annotate.html", user=user, csrf=csrf, item=_public_item(item) if item else None,
                    counters=db.counters(), mine=db.user_decision_count(user), reject_reasons=REJECT_REASONS,
                    max_caption=MAX_CAPTION_CHARS)

    @app.post("/annotate/{item_id}", responses=REDIRECT)
    def annotate_post(item_id: ITEM_ID, s: Annotated[tuple[User, str], Depends(session)],
                      action: Annotated[Literal["accept", "reject", "flag", "skip"], Form()],
                      csrf: Annotated[str, Form(min_length=1, max_length=128)],
                      caption: Annotated[str | None, Form(max_length=MAX_CAPTION_CHARS)] = None,
                      tags: Annotated[str, Form(max_length=4000)] = "",
                      reasons: Annotated[list[str] | None, Form()] = None):
        user, want = s
        if not tokens_equal(csrf, want):
            raise HTTPException(403, "missing or wrong CSRF token; reload the page")
        if action == "skip":
            db.skip(user, item_id)
            return RedirectResponse("/", status_code=303)
        item = db.get_item(item_id)
        original = item["payload"].get("caption")
        cap = caption.replace("\r\n", "\n") if caption is not None else None
        cap = None if cap is None or cap.strip() == "" or cap == original else cap
        tag_list = [t.strip() for t in tags.split(",") if t.strip()][:64]
        body = DecisionIn(decision="keep" if action == "accept" else "drop", flag=action == "flag", caption=cap,
                          tags=[t[:64] for t in tag_list], reasons=[r[:200] for r in (reasons or [])][:20])
        db.submit(user, item_id, body.decision, flag=body.flag, caption=body.caption, tags=body.tags,
                  reasons=body.reasons)
        return RedirectResponse("/", status_code=303)

    @app.post("/logout", responses=REDIRECT)
    def logout(request: Request, s: Annotated[tuple[User, str], Depends(session)],
               csrf: Annotated[str, Form(min_length=1, max_length=128)]):
        if not tokens_equal(csrf, s[1]):
            raise HTTPException(403, "missing or wrong CSRF token")
        db.release_user(s[0])
        db.end_session(request.cookies.get(SESSION_COOKIE, ""), s[0])
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # --- JSON API ----------------------------------------------------------------------------------
    @app.get("/api/me")
    def me(user: CurrentUser):
        return {"user": user.name, "role": user.role}

    # the two hot calls answer JSONResponse directly: their dicts are plain JSON already (from the
    # database), and FastAPI's recursive jsonable_encoder over the item payload costs more CPU than
    # the lease query itself
    @app.get("/api/next")
    def api_next(user: CurrentUser):
        item = db.next_item(user, lease_s=settings.lease_s, gold_rate=settings.gold_rate)
        return JSONResponse({"item": _public_item(item) if item else None})

    @app.get("/api/items/{item_id}")
    def api_item(item_id: ITEM_ID, user: CurrentUser):
        item = db.get_item(item_id) if user.is_admin else db.leased_item(user, item_id)
        return {"item": _public_item(item, admin=user.is_admin)}

    @app.post("/api/items/{item_id}/decision")
    def api_decide(item_id: ITEM_ID, body: DecisionIn, user: CsrfUser):
        return JSONResponse(db.submit(user, item_id, body.decision, flag=body.flag, caption=body.caption,
                                      tags=body.tags, reasons=body.reasons))

    @app.post("/api/items/{item_id}/skip")
    def api_skip(item_id: ITEM_ID, user: CsrfUser):
        db.skip(user, item_id)
        return {"item_id": item_id, "skipped": True}

    # --- images ------------------------------------------------------------------------------------
    @lru_cache(maxsize=8)
    def open_version(version: int | None):
        import lance

        if not dataset:
            raise HTTPException(404, "this review database names no dataset")
        return lance.dataset(dataset, version=version)

    def _row_locator(user: User, row_id: str) -> tuple[int | None, int | None]:
        """(version, position) of a row this user may see: an item leased to them (or any item for
        an admin), or a look-alike shown with such an item."""
        with db.tx(write=False) as t:
            if user.is_admin:
                r = t.one("SELECT payload FROM items WHERE row_id = ?", (row_id,))
                if r:
                    p = json.loads(r[0])
                    return p.get("version"), p.get("pos")
            rows = t.all("SELECT payload FROM items WHERE lease_user = ? AND lease_expires > ?", (user.id, time.time()))
        for (raw,) in rows:
            p = json.loads(raw)
            if p.get("row_id") == row_id:
                return p.get("version"), p.get("pos")
            for nb in p.get("neighbours", []):
                if nb.get("row_id") == row_id:
                    return p.get("version"), nb.get("pos")
        raise HTTPException(403 if not user.is_admin else 404, "no such image among your items")

    @app.get("/image/{row_id}", response_class=Response,
             responses={200: {"content": {t: {} for t in ("image/jpeg", "image/png", "image/gif", "image/webp")},
                              "description": "the image bytes"}})
    def image(row_id: ROW_ID_PARAM, user: CurrentUser):
        if not ROW_ID.match(row_id):
            raise HTTPException(422, "row ids are letters, digits and _.:-")
        version, pos = _row_locator(user, row_id)
        data = None
        if pos is not None:
            try:
                t = open_version(version).take([int(pos)], columns=["id", "image"])
                if t.num_rows and t.column("id")[0].as_py() == row_id:
                    data = t.column("image")[0].as_py()
            except (ValueError, OSError, IndexError):
                data = None
        if data is None:  # compacted or re-versioned: look the row up by id (validated above)
            t = open_version(None).to_table(columns=["image"], filter=f"id = '{row_id}'")
            data = t.column("image")[0].as_py() if t.num_rows else None
        if not data:
            raise HTTPException(404, "no image bytes stored for this row")
        body, ctype = _safe_image(data)
        return Response(body, media_type=ctype, headers={"cache-control": "private, max-age=600"})

    # --- admin -------------------------------------------------------------------------------------
    @app.get("/admin", response_class=HTMLResponse, responses=HTML_PAGE)
    def admin_page(s: Annotated[tuple[User, str], Depends(session)]):
        user, csrf = s
        if not user.is_admin:
            raise HTTPException(403, "admins only")
        return page("admin.html", user=user, csrf=csrf, stats=_stats(db), audit=db.audit_tail(30))

    apply_lock = threading.Lock()

    @app.post("/admin/apply", responses=HTML_PAGE)
    def admin_apply(s: Annotated[tuple[User, str], Depends(session)],
                    csrf: Annotated[str, Form(min_length=1, max_length=128)]):
        """"Apply decisions to the dataset": the same ``apply_reviews`` as ``curate review apply``
        (a new Lance version, refitted reward head and thresholds), run by an admin from the page.
        One apply at a time; a second click while one runs gets 409."""
        user, want = s
        if not user.is_admin:
            raise HTTPException(403, "admins only")
        if not tokens_equal(csrf, want):
            raise HTTPException(403, "missing or wrong CSRF token; reload the page")
        if not dataset:
            raise HTTPException(409, "this review database names no dataset to apply to")
        if apply is None:
            raise HTTPException(409, "this server was started without the apply action; run `curate review apply`")
        if not apply_lock.acquire(blocking=False):
            raise HTTPException(409, "an apply is already running")
        try:
            report = apply(dataset, user)
        except (FileNotFoundError, ValueError) as e:
            return page("admin.html", 409, user=user, csrf=csrf, stats=_stats(db), audit=db.audit_tail(30),
                        apply_error=str(e))
        finally:
            apply_lock.release()
        return page("admin.html", user=user, csrf=csrf, stats=_stats(db), audit=db.audit_tail(30),
                    applied=_apply_summary(report))

    @app.get("/api/admin/stats")
    def admin_stats(user: Admin):
        return _stats(db)

    @app.get("/admin/export.jsonl", response_class=StreamingResponse,
             responses={200: {"content": {"application/x-ndjson": {}}, "description": "one decision per line"}})
    def export(user: Admin):
        db.log(user, "export")

        def lines():
            last = 0
            while True:
                part = db.decisions(since_id=last, limit=5000)
                if not part:
                    return
                for d in part:
                    d.pop("payload", None)
                    yield json.dumps(d) + "\n"
                last = part[-1]["decision_id"]

        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"content-disposition": 'attachment; filename="decisions.jsonl"'})

    def openapi_schema() -> dict[str, Any]:
        """FastAPI's schema plus how to authenticate: the session cookie on every operation but
        the public ones, and the CSRF header that JSON posts also need."""
        if app.openapi_schema is None:
            schema = app.openapi()
            comps = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            comps["session"] = {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                                "description": "from POST /api/login or the login form"}
            schema["security"] = [{"session": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_json(user: CurrentUser):
        """The API description, for logged-in users (everything but login and health needs a session)."""
        return JSONResponse(openapi_schema())

    app.add_middleware(_Limits, max_body=settings.max_body)
    return app


def _apply_summary(rep: dict[str, Any]) -> dict[str, Any]:
    """What the admin page shows after an apply: what changed, and how good the proposals were."""
    pa_, va = rep.get("pseudo_label_agreement") or {}, rep.get("verifier_agreement") or {}
    return {"version_before": rep.get("version_before"), "version_after": rep.get("version_after"),
            "decisions": rep.get("decisions", 0), "rows_reviewed": rep.get("rows_reviewed", 0),
            "labels": rep.get("labels", 0), "captions_edited": (rep.get("caption_fixes") or {}).get("captions_edited", 0),
            "graph_tags_rows": rep.get("graph_tags_rows", 0),
            "thresholds": [{"column": t.get("column"), "op": t.get("op"), "old": t.get("old"), "new": t.get("new"),
                            "note": t.get("note", "")} for t in rep.get("thresholds", [])],
            "reward_head": rep.get("reward_head") or {},
            "pseudo_accuracy": pa_.get("accuracy"), "verifier_accuracy": va.get("accuracy"), "agreement_n": pa_.get("n"),
            "report": Path(rep["report_html"]).name if rep.get("report_html") else None}


def _public_item(item: dict[str, Any], admin: bool = False) -> dict[str, Any]:
    """What the annotator gets: never who else holds or decided the item, nor a gold answer."""
    p = item["payload"]
    out = {"id": item["id"], "row_id": item["row_id"], "lease_expires": item["lease_expires"],
           "caption": p.get("caption", ""), "other_captions": p.get("other_captions", []),
           "signals": p.get("signals", {}), "ocr_text": p.get("ocr_text"), "hard_reasons": p.get("hard_reasons", []),
           "pseudo": p.get("pseudo", {}), "verifier": p.get("verifier", {}), "neighbours": p.get("neighbours", []),
           "concept": p.get("concept")}
    if admin:
        out.update({"status": item["status"], "gold": item["gold"], "needed": item["needed"],
                    "done_count": item["done_count"]})
    return out


def _stats(db: ReviewDB) -> dict[str, Any]:
    from engines.active.loop import cohen_kappa

    c = db.counters()
    pairs = db.double_annotated()
    return {"counters": c, "progress": (c["items_done"] / c["items_total"]) if c.get("items_total") else None,
            "kappa": cohen_kappa(pairs), "kappa_pairs": len(pairs), "annotators": db.per_user()}


def _safe_image(data: bytes) -> tuple[bytes, str]:
    """Bytes and a content type a browser can only treat as an image: known magic numbers pass,
    WEBP by its RIFF header, anything else is decoded and re-encoded as PNG (or refused)."""
    for magic, ctype in SAFE_IMAGE.items():
        if data.startswith(magic):
            return data, ctype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, "image/webp"
    from PIL import Image

    try:
        Image.MAX_IMAGE_PIXELS = 100_000_000
        with Image.open(io.BytesIO(data)) as im:
            im.thumbnail((2048, 2048))
            out = io.BytesIO()
            im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB").save(out, "PNG")
            return out.getvalue(), "image/png"
    except Exception:
        raise HTTPException(415, "stored bytes are not an image a browser can show") from None
