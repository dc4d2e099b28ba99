"""Reviewing: the annotate page and its form, and the same as a JSON API (next item, one item,
decision, undo, skip).

An annotator sees only items leased to them (``ReviewDB`` checks the lease on every write), and
an item as ``ReviewItemPublic``: never who else holds or decided it, nor a gold answer. The
stored payload is parsed with ``ReviewPayload``, so an item queued with fewer keys still serves.
"""

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from annotator_ui.deps import (
    NO_NUL,
    AppSettings,
    CsrfUser,
    CurrentUser,
    DbDep,
    ItemId,
    SessionDep,
    SettingsDep,
    check_form_csrf,
    page,
    wants_html,
)
from annotator_ui.filters import INVISIBLE_NAMES
from annotator_ui.pairs import pair_view
from annotator_ui.routes import HTML_PAGE, REDIRECT
from curation.reviewdb import BadInput, Conflict, NotFound, NotLeased, ReviewDB, ReviewError, User
from curation.text import MAX_CAPTION_CHARS
from engines.active.payload import ReviewItemAdmin, ReviewItemPublic, ReviewPayload

__all__ = ["router", "DecisionIn", "REJECT_REASONS", "UnknownTags", "checked_tags"]

router = APIRouter()

REJECT_REASONS = ["low quality", "caption wrong", "watermark / text overlay", "duplicate", "NSFW", "other"]


class DecisionIn(BaseModel):
    """A decision posted as JSON (what the page's form posts carry, as an API)."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["keep", "drop"]
    flag: bool = False
    caption: str | None = Field(None, max_length=MAX_CAPTION_CHARS, pattern=NO_NUL)
    tags: list[Annotated[str, Field(max_length=64, pattern=NO_NUL)]] = Field(default_factory=list, max_length=64)
    reasons: list[Annotated[str, Field(max_length=200, pattern=NO_NUL)]] = Field(default_factory=list, max_length=20)


ItemQuery = Annotated[int | None, Query(ge=1, le=2**62)]


@router.get("/", response_class=HTMLResponse, responses=HTML_PAGE)
def annotate_page(request: Request, s: SessionDep, db: DbDep, settings: SettingsDep, saved: ItemQuery = None, undone: ItemQuery = None):
    """The review page. ``saved`` / ``undone``: the item a decision was just saved for (or taken
    back from), from the redirect after the post: the page confirms it in an aria-live region
    (only the annotator's own decisions are looked up, so another id shows nothing)."""
    user, csrf = s
    item = db.next_item(user, lease_s=settings.lease_s, gold_rate=settings.gold_rate)
    payload = ReviewPayload.model_validate(item["payload"]) if item else None
    return page(
        request,
        "annotate.html",
        user=user,
        csrf=csrf,
        item=_public(item) if item else None,
        tag_names=_tag_names(payload),
        counters=db.counters(),
        mine=db.user_decision_count(user),
        reject_reasons=REJECT_REASONS,
        max_caption=MAX_CAPTION_CHARS,
        saved=_own(db, user, saved),
        gold=_gold_feedback(db, user, saved, settings),
        undone=undone if undone and not _own(db, user, undone) else None,
        undo=_undoable(db, user, settings),
        invisible=settings.invisible,
    )


def _public(item: dict[str, Any], model: type[ReviewItemPublic] = ReviewItemPublic) -> dict[str, Any]:
    """The item as its client sees it; a pair item (``curate pairs review``) adds ``pair``: both
    instructions, the language being edited and its two images' URLs (``annotator_ui.pairs``)."""
    out = model.of(item).model_dump()
    pair = pair_view(item)
    if pair is not None:
        out["pair"] = pair
    return out


def _tag_names(payload: ReviewPayload | None) -> dict[str, Any]:
    """Display names of the proposed tags and the concept (ids stay in the tooltip and the form)."""
    if payload is None:
        return {"tags": [], "concept": None}
    tags = payload.pseudo.tags if payload.pseudo else []
    concept = payload.tag_names([payload.concept])[0] if payload.concept else None
    return {"tags": payload.tag_names(tags), "concept": concept}


def _own(db: ReviewDB, user: User, item_id: int | None) -> dict[str, Any] | None:
    return next(iter(db.own_decisions(user, item_id=item_id, limit=1)), None) if item_id else None


def _gold_feedback(db: ReviewDB, user: User, item_id: int | None, settings: AppSettings) -> str | None:
    """The expected answer of a check (gold) item just decided, when the admin turned feedback
    on; None otherwise (off by default: a known test changes how people decide)."""
    return db.gold_feedback(user, item_id) if item_id and settings.gold_feedback else None


def _undoable(db: ReviewDB, user: User, settings: AppSettings) -> dict[str, Any] | None:
    """The annotator's latest decision while it may still be undone (the page's undo button);
    never a check item whose answer was shown, nor one an apply has merged (``ReviewDB.undo``
    refuses both, so the page must not offer them)."""
    last = next(iter(db.own_decisions(user, limit=1)), None)
    if not last or time.time() - last["time"] > settings.undo_s or last["decision_id"] <= db.applied_through():
        return None
    return None if _gold_feedback(db, user, last["item_id"], settings) else last


def _form_decision(action: str, caption: str | None, original: str, tags: str, reasons: list[str] | None) -> DecisionIn:
    """The form's fields as the API's decision: an unchanged or blank caption is no edit, and
    over-long tags and reasons are cut to the API's limits rather than refused."""
    cap = caption.replace("\r\n", "\n") if caption is not None else None
    cap = None if cap is None or cap.strip() == "" or cap == original else cap
    tag_list = [t.strip() for t in tags.split(",") if t.strip()][:64]
    try:
        return DecisionIn(
            decision="keep" if action == "accept" else "drop",
            flag=action == "flag",
            caption=cap,
            tags=[t[:64] for t in tag_list],
            reasons=[r[:200] for r in (reasons or [])][:20],
        )
    except ValidationError as e:  # built here, not by FastAPI: uncaught, it was a 500
        raise FormRejected(_form_errors(e)) from None


def _form_errors(e: ValidationError) -> str:
    """The fields a form post cannot be stored with, in words (after the cuts above, only NUL
    characters are left to refuse: PostgreSQL cannot store them)."""
    fields = sorted({str(err["loc"][0]) for err in e.errors()})
    verb = "contains" if len(fields) == 1 else "contain"
    return f"the {' and '.join(fields)} {verb} a NUL character (U+0000), which cannot be stored; remove it and save again"


@router.post("/annotate/{item_id}", responses=REDIRECT)
def annotate_post(
    request: Request,
    item_id: ItemId,
    s: SessionDep,
    action: Annotated[Literal["accept", "reject", "flag", "skip"], Form()],
    csrf: Annotated[str, Form(min_length=1, max_length=128)],
    db: DbDep,
    settings: SettingsDep,
    caption: Annotated[str | None, Form(max_length=MAX_CAPTION_CHARS)] = None,
    tags: Annotated[str, Form(max_length=4000)] = "",
    reasons: Annotated[list[str] | None, Form()] = None,
):
    user = s[0]
    try:
        check_form_csrf(csrf, s, "missing or wrong CSRF token; reload the page")
        if action == "skip":
            db.skip(user, item_id)
            return RedirectResponse("/", status_code=303)
        original = ReviewPayload.model_validate(db.get_item(item_id)["payload"]).caption
        body = _form_decision(action, caption, original, tags, reasons)
        check_invisible(body.caption, settings)
        stored = checked_tags(request, db, item_id, body.tags)
        db.submit(user, item_id, body.decision, flag=body.flag, caption=body.caption, tags=stored, reasons=body.reasons)
    except (ReviewError, HTTPException) as e:
        if not wants_html(request) or (isinstance(e, BadInput) and not isinstance(e, FormRejected)):
            raise
        return _refused_page(request, s, item_id, e, caption, tags)
    return RedirectResponse(f"/?saved={item_id}", status_code=303)


@router.post("/annotate/{item_id}/undo", responses=REDIRECT)
def annotate_undo(
    request: Request,
    item_id: ItemId,
    s: SessionDep,
    csrf: Annotated[str, Form(min_length=1, max_length=128)],
    db: DbDep,
    settings: SettingsDep,
):
    """The page's undo button (``b``): the latest decision taken back, the item shown again."""
    check_form_csrf(csrf, s, "missing or wrong CSRF token; reload the page")
    db.undo(s[0], item_id, within_s=settings.undo_s, lease_s=settings.lease_s, allow_gold=not settings.gold_feedback)
    return RedirectResponse(f"/?undone={item_id}", status_code=303)


class FormRejected(BadInput):
    """Text in a form post that cannot be saved (422): a browser gets it as a page that keeps
    the caption as typed, as for the other refusals, instead of losing the edit."""


class InvisibleRejected(FormRejected):
    """A caption with invisible characters, refused (``AppSettings.invisible == "reject"``)."""


class UnknownTags(FormRejected):
    """Tags that are no concept of the server's graph (422): each named, with close concepts to
    pick (``problems``, also in the JSON answer as ``tags``). A browser's form post gets a page
    that keeps the caption and the tags as typed."""

    def __init__(self, problems: list[dict[str, Any]]):
        self.problems = problems
        super().__init__(_tags_message(problems))

    @property
    def extra(self) -> dict[str, Any]:
        return {"tags": self.problems}


def _tags_message(problems: list[dict[str, Any]]) -> str:
    def names(concepts: list[dict[str, str]]) -> str:
        return ", ".join(f"{c['en'] or c['zh'] or c['id']} ({c['id']})" for c in concepts)

    parts = []
    for p in problems:
        if p["reason"] == "ambiguous":
            parts.append(f"the tag {p['tag']!r} names several concepts: {names(p['concepts'])}; give one by its id")
        elif p["concepts"]:
            parts.append(f"unknown tag {p['tag']!r}: not a concept of the concept graph; close concepts: {names(p['concepts'])}")
        else:
            parts.append(f"unknown tag {p['tag']!r}: not a concept of the concept graph")
    return "; ".join(parts) + " (a tag is a concept id or a concept's English or Chinese name; type a name in the tags field to pick one)"


def checked_tags(request: Request, db: ReviewDB, item_id: int, tags: list[str]) -> list[str]:
    """A decision's tags as concept ids (``TagIndex.resolve``: ids, or exact English or Chinese
    names), or ``UnknownTags``. The item's own proposed tags are accepted as they are (what the
    form is filled with), so the item is read only when a tag is not a concept. Without a
    concept graph the tags are stored as given: the server cannot tell a concept from a typo."""
    if not tags:
        return []
    index = request.app.state.tags
    out = index.resolve(tags)
    if out.problems:
        payload = ReviewPayload.model_validate(db.get_item(item_id)["payload"])
        out = index.resolve(tags, payload.pseudo.tags if payload.pseudo else ())
        if out.problems:
            raise UnknownTags(out.problems)
    return list(out)


def check_invisible(caption: str | None, settings: AppSettings) -> None:
    """422 naming each invisible character when the server rejects them (by default they are
    stripped on save, in ``ReviewDB.submit``): the annotator then sees what to remove."""
    if caption is None or settings.invisible != "reject":
        return
    found = sorted({ch for ch in caption if ch in INVISIBLE_NAMES})
    if found:
        names = ", ".join(f"U+{ord(ch):04X} ({INVISIBLE_NAMES[ch]})" for ch in found)
        raise InvisibleRejected(f"the caption has invisible characters: {names}; remove them and save again")


# why a form post was refused, in words for the annotator (the JSON API keeps its terse details)
_REFUSED = {
    NotLeased: (
        "Your lease on this item ran out",
        "This decision was not saved: the item was no longer leased to you (it may be with someone else now).",
    ),
    NotFound: ("No such item", "This decision was not saved: the item is not in the queue."),
    Conflict: ("Already decided", "This decision was not saved: you already decided this item differently."),
    InvisibleRejected: ("Invisible characters in the caption", None),
    UnknownTags: ("Unknown tags", None),
    FormRejected: ("Text that cannot be saved", None),
}


_STATUS = {NotFound: 404, Conflict: 409, FormRejected: 422}


def _refused_page(request: Request, s: tuple, item_id: int, e: Exception, caption: str | None, tags: str | None = None) -> HTMLResponse:
    """A readable page for a refused form post, with the caption (and, for refused tags, the
    tags) as typed: a page of JSON lost the annotator's edit and told them nothing they could act on."""
    heading, message = _REFUSED.get(
        type(e),
        ("This page expired", "This decision was not saved: the page's form is out of date (did you log in again in another tab?)."),
    )
    message = message or f"This decision was not saved: {e}."
    status = getattr(e, "status_code", None) or next((code for cls, code in _STATUS.items() if isinstance(e, cls)), 403)
    kept_tags = tags if isinstance(e, UnknownTags) else None
    return page(
        request,
        "error.html",
        status,
        user=s[0],
        csrf=s[1],
        heading=heading,
        message=message,
        caption=caption,
        item_id=item_id,
        tags=kept_tags,
    )


# the two hot calls answer JSONResponse directly: their dicts are plain JSON already, and FastAPI's
# recursive jsonable_encoder over the item payload costs more CPU than the lease query itself
@router.get("/api/next")
def api_next(user: CurrentUser, db: DbDep, settings: SettingsDep):
    item = db.next_item(user, lease_s=settings.lease_s, gold_rate=settings.gold_rate)
    return JSONResponse({"item": _public(item) if item else None})


@router.get("/api/items/{item_id}")
def api_item(item_id: ItemId, user: CurrentUser, db: DbDep):
    # admins see any item and its queue state; annotators only their own lease
    item = db.get_item(item_id) if user.is_admin else db.leased_item(user, item_id)
    return {"item": _public(item, ReviewItemAdmin if user.is_admin else ReviewItemPublic)}


@router.post("/api/items/{item_id}/decision")
def api_decide(request: Request, item_id: ItemId, body: DecisionIn, user: CsrfUser, db: DbDep, settings: SettingsDep):
    """Record a decision. With ``gold_feedback`` on, a check item's answer carries
    ``expected`` (the known answer) and ``correct``; otherwise nothing says gold.

    ``tags``: concept ids, or concepts' exact English or Chinese names (any case), stored as ids;
    a tag that is no concept of the server's graph is a 422 naming it, with close concepts in
    ``tags`` (``[{"tag", "reason": "unknown"|"ambiguous", "concepts": [{"id", "en", "zh"}]}]``).
    The item's own proposed tags are accepted as they are. A server without a concept graph
    stores tags as given (it cannot tell a concept from a typo)."""
    check_invisible(body.caption, settings)
    tags = checked_tags(request, db, item_id, body.tags)
    out = db.submit(user, item_id, body.decision, flag=body.flag, caption=body.caption, tags=tags, reasons=body.reasons)
    expected = _gold_feedback(db, user, item_id, settings)
    if expected:
        out.update(expected=expected, correct=expected == body.decision)
    return JSONResponse(out)


@router.post("/api/items/{item_id}/undo")
def api_undo(item_id: ItemId, user: CsrfUser, db: DbDep, settings: SettingsDep):
    """Take back your latest decision (within ``undo_s``); the item is leased to you again."""
    return db.undo(user, item_id, within_s=settings.undo_s, lease_s=settings.lease_s, allow_gold=not settings.gold_feedback)


@router.post("/api/items/{item_id}/skip")
def api_skip(item_id: ItemId, user: CsrfUser, db: DbDep):
    db.skip(user, item_id)
    return {"item_id": item_id, "skipped": True}


class TagOut(BaseModel):
    id: str = Field(description="concept id, what the tags field stores")
    en: str = Field(description="English label ('' when the graph has none)")
    zh: str = Field(description="Chinese label ('' when the graph has none)")


class TagsOut(BaseModel):
    tags: list[TagOut]


@router.get("/api/tags", response_model=TagsOut)
def api_tags(
    request: Request,
    user: CurrentUser,
    q: Annotated[str, Query(min_length=1, max_length=64, pattern=NO_NUL, description="what the label or id starts with")],
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
):
    """Concepts whose English or Chinese label (or a word of it, or the id) starts with ``q``,
    for the tag field's suggestions: names to read, ids to store."""
    return {"tags": request.app.state.tags.search(q, limit)}
