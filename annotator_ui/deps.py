"""The web app's settings and dependencies, in one module, read from ``request.app.state``.

Why here: every router needs the same few things (the database, the settings, who is asking),
and ``create_app`` puts them on ``app.state`` once per app; a dependency reads them back, so a
test can build several apps side by side and the routers hold no globals. The ``Annotated``
aliases (``DbDep``, ``SettingsDep``, ``SessionDep``, ``CurrentUser``, ``CsrfUser``, ``Admin``)
are what route signatures use.

The dependencies are ``async``: each is a field read or one primary-key lookup (tens of
microseconds), and on the event loop they save a thread-pool hop per dependency per request.
"""

from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment
from pydantic import BaseModel, ConfigDict, Field

from curation.reviewdb import LoginPolicy, ReviewDB, User
from curation.security import CSRF_HEADER, SESSION_COOKIE, tokens_equal

__all__ = [
    "AppSettings",
    "DbDep",
    "SettingsDep",
    "SessionDep",
    "CurrentUser",
    "CsrfUser",
    "Admin",
    "AdminSession",
    "ItemId",
    "RowId",
    "ROW_ID_PATTERN",
    "NO_NUL",
    "page",
    "wants_html",
    "check_form_csrf",
    "require_admin",
]

ROW_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
# text without NUL characters: PostgreSQL cannot store them, and the schema says so (clients and
# fuzzers see the rule in openapi.json instead of meeting a surprise 422)
NO_NUL = r"^[^\x00]*$"

ItemId = Annotated[int, Path(ge=1, le=2**62)]
RowId = Annotated[str, Path(pattern=ROW_ID_PATTERN, max_length=128)]


class AppSettings(BaseModel):
    """How one review server runs (``curate review serve`` fills it from its options)."""

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
    ray_address: str | None = Field(
        None, description="Ray cluster for the admin's apply action (default: RAY_ADDRESS or an embedded local one, started on first use)"
    )
    threads: int = Field(40, ge=1, le=256, description="worker threads for the request handlers (database work)")
    login_max_failures: int = Field(5, ge=1, description="failed logins per account name within login_window_s before a lockout")
    login_max_failures_addr: int = Field(20, ge=1, description="failed logins per client address within login_window_s before a lockout")
    login_window_s: float = Field(900.0, gt=0, description="window in which failed logins are counted")
    login_lockout_s: float = Field(30.0, gt=0, description="first lockout; each further one doubles")
    login_max_lockout_s: float = Field(3600.0, gt=0, description="longest lockout; a key quiet this long starts afresh")
    undo_s: float = Field(300.0, ge=0, description="seconds an annotator may undo their latest decision")
    graph: str | None = Field(
        None, description="concept graph folder (nodes.parquet) whose labels the tag field suggests, besides those in the queue"
    )
    invisible: Literal["strip", "reject"] = Field(
        "strip", description="captions with invisible characters (bidi controls, zero-width): strip them on save, or refuse (422)"
    )
    gold_feedback: bool = Field(
        False, description="after a decision on a gold (check) item, tell the annotator the expected answer (and allow no undo of it)"
    )
    title: str = "Review"

    def login_policy(self) -> LoginPolicy:
        return LoginPolicy(
            max_failures=self.login_max_failures,
            max_failures_addr=self.login_max_failures_addr,
            window_s=self.login_window_s,
            lockout_s=self.login_lockout_s,
            max_lockout_s=self.login_max_lockout_s,
        )


async def get_db(request: Request) -> ReviewDB:
    return request.app.state.db


async def get_settings(request: Request) -> AppSettings:
    return request.app.state.settings


DbDep = Annotated[ReviewDB, Depends(get_db)]
SettingsDep = Annotated[AppSettings, Depends(get_settings)]


async def get_session(request: Request, db: DbDep) -> tuple[User, str]:
    """(user, CSRF token) of the request's session cookie; 401 without one. Browsers asking for
    HTML get an ``x-login`` header (and, from the app's handler, the login page)."""
    s = db.session(request.cookies.get(SESSION_COOKIE))
    if s is None:
        wants_html = "text/html" in request.headers.get("accept", "")
        raise HTTPException(401, "log in first", headers={"x-login": "/login"} if wants_html else None)
    return s


SessionDep = Annotated[tuple[User, str], Depends(get_session)]


async def current_user(s: SessionDep) -> User:
    return s[0]


async def csrf_user(request: Request, s: SessionDep) -> User:
    """The user of a JSON post: its ``X-CSRF-Token`` header must be the session's token (a
    cross-site page can send the cookie, never the header)."""
    if not tokens_equal(request.headers.get(CSRF_HEADER), s[1]):
        raise HTTPException(403, "missing or wrong X-CSRF-Token header")
    return s[0]


def require_admin(user: User) -> None:
    """403 unless an admin. Also called inside form handlers, where it must come after the form's
    validation (422 first, as FastAPI orders a dependency before the body)."""
    if not user.is_admin:
        raise HTTPException(403, "admins only")


async def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    require_admin(user)
    return user


async def admin_session(s: SessionDep) -> tuple[User, str]:
    require_admin(s[0])
    return s


CurrentUser = Annotated[User, Depends(current_user)]
CsrfUser = Annotated[User, Depends(csrf_user)]
Admin = Annotated[User, Depends(admin_user)]
AdminSession = Annotated[tuple[User, str], Depends(admin_session)]


def check_form_csrf(sent: str, session: tuple[User, str], message: str = "missing or wrong CSRF token") -> None:
    """403 unless a form's ``csrf`` field is its session's token. A check in the handler, not a
    dependency, so that a form's field errors still answer 422 before it (as they always have)."""
    if not tokens_equal(sent, session[1]):
        raise HTTPException(403, message)


def wants_html(request: Request) -> bool:
    """A browser navigating (not a script): its errors get a page, not JSON."""
    return "text/html" in request.headers.get("accept", "")


def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    """A server-rendered page from the app's templates (autoescaped: captions are shown as text)."""
    env: Environment = request.app.state.templates
    html = env.get_template(name).render(title=request.app.state.settings.title, **ctx)
    return HTMLResponse(html, status_code=status)
