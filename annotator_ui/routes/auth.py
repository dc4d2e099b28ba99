"""Logging in and out: the login page and form, the JSON login, logout, and who am I.

The login form carries a double-submit cookie (a cross-site page can post the form, but cannot
set the cookie); the session cookie is HttpOnly and SameSite=Strict, so a script on the page
cannot read it and a cross-site request does not carry it.
"""

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from annotator_ui.deps import NO_NUL, AppSettings, CurrentUser, DbDep, SessionDep, SettingsDep, check_form_csrf, page
from annotator_ui.routes import HTML_PAGE, PUBLIC, REDIRECT
from curation.reviewdb import ReviewDB, Throttled, User
from curation.security import LOGIN_CSRF_COOKIE, SESSION_COOKIE, new_token, tokens_equal

__all__ = ["router", "LoginIn", "login_form_page"]

router = APIRouter()


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    password: str = Field(min_length=1, max_length=1024)


def set_session(resp: Response, token: str, settings: AppSettings) -> None:
    resp.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=settings.cookie_secure,
        max_age=int(settings.session_ttl_s),
        path="/",
    )


def authenticate(request: Request, db: ReviewDB, settings: AppSettings, username: str, password: str) -> User | None:
    """``ReviewDB.authenticate``, throttled per account name and per client address (the peer
    of the connection: behind a reverse proxy run uvicorn with ``--proxy-headers`` and
    ``--forwarded-allow-ips`` so that this is the real client). Raises ``Throttled``."""
    addr = request.client.host if request.client else None
    return db.authenticate(username, password, addr=addr, policy=settings.login_policy())


@router.get("/login", response_class=HTMLResponse, responses=HTML_PAGE, openapi_extra=PUBLIC)
def login_page(request: Request, settings: SettingsDep):
    return login_form_page(request, settings)


def login_form_page(request: Request, settings: AppSettings, status: int = 200, error: str | None = None) -> HTMLResponse:
    """The login form with its double-submit cookie. Also what a browser gets, with 401, for any
    page it asks for without a session (``app._http_error``): the form at once, not a page
    with a link to it. The token is kept while the cookie lives, so two open tabs both work."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_token()
    resp = page(request, "login.html", status, login_csrf=token, error=error, csrf=None, elsewhere=request.url.path != "/login")
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=settings.cookie_secure, max_age=3600, path="/login")
    return resp


@router.post("/login", responses=REDIRECT, openapi_extra=PUBLIC)
def login_form(
    request: Request,
    username: Annotated[str, Form(min_length=1, max_length=64)],
    password: Annotated[str, Form(min_length=1, max_length=1024)],
    csrf: Annotated[str, Form(min_length=1, max_length=128)],
    db: DbDep,
    settings: SettingsDep,
):
    if not tokens_equal(csrf, request.cookies.get(LOGIN_CSRF_COOKIE)):
        raise HTTPException(403, "login form expired; reload the page")
    try:
        user = authenticate(request, db, settings, username, password)
    except Throttled as e:
        msg = f"Too many failed logins. Try again in {e.retry_after} seconds."
        resp = page(request, "login.html", 429, login_csrf=csrf, error=msg, csrf=None)
        resp.headers["retry-after"] = str(e.retry_after)
        return resp
    if user is None:
        return page(request, "login.html", 401, login_csrf=csrf, error="Wrong user name or password.", csrf=None)
    token, _ = db.create_session(user, settings.session_ttl_s)
    resp = RedirectResponse("/", status_code=303)
    set_session(resp, token, settings)
    return resp


@router.post("/api/login", openapi_extra=PUBLIC)
def login_json(request: Request, body: LoginIn, db: DbDep, settings: SettingsDep):
    # the CSRF token comes back in the body: a script sends it as X-CSRF-Token on every post
    try:
        user = authenticate(request, db, settings, body.username, body.password)
    except Throttled as e:
        raise HTTPException(429, "too many failed logins; try again later", headers={"retry-after": str(e.retry_after)}) from None
    if user is None:
        raise HTTPException(401, "wrong user name or password")
    token, csrf = db.create_session(user, settings.session_ttl_s)
    resp = JSONResponse({"user": user.name, "role": user.role, "csrf": csrf})
    set_session(resp, token, settings)
    return resp


@router.post("/logout", responses=REDIRECT)
def logout(request: Request, s: SessionDep, csrf: Annotated[str, Form(min_length=1, max_length=128)], db: DbDep):
    # the user's leases go back to the queue at once, not when they expire
    check_form_csrf(csrf, s)
    db.release_user(s[0])
    db.end_session(request.cookies.get(SESSION_COOKIE, ""), s[0])
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@router.get("/api/me")
def me(user: CurrentUser):
    return {"user": user.name, "role": user.role}
