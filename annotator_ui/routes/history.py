"""An annotator's own decisions: a paginated list (``/history``) and one decision, read-only
(``/history/{item_id}``).

Why read-only: a decision is changed by an undo (the latest one, for a short while, from the
review page), by re-opening it (any of one's decisions until ``curate review apply`` has merged
it into the dataset: ``POST /history/{item_id}/reopen`` puts the item back in front of its
annotator, who decides it again) or by a later review, never by editing history. Every query is keyed on the session's user, so an item id in the URL shows only that
user's own decision (another's is 404, as if it did not exist).
"""

import time
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from annotator_ui.deps import CsrfUser, DbDep, ItemId, SessionDep, SettingsDep, check_form_csrf, page
from annotator_ui.routes import HTML_PAGE, REDIRECT
from engines.active.payload import ReviewPayload

__all__ = ["router", "PAGE_SIZE"]

router = APIRouter()

PAGE_SIZE = 50


@router.get("/history", response_class=HTMLResponse, responses=HTML_PAGE)
def history_page(request: Request, s: SessionDep, db: DbDep, page_no: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1):
    user, csrf = s
    rows = db.own_decisions(user, limit=PAGE_SIZE + 1, offset=(page_no - 1) * PAGE_SIZE)
    return page(
        request,
        "history.html",
        user=user,
        csrf=csrf,
        rows=rows[:PAGE_SIZE],
        page_no=page_no,
        has_next=len(rows) > PAGE_SIZE,
        total=db.user_decision_count(user),
    )


@router.get("/history/{item_id}", response_class=HTMLResponse, responses=HTML_PAGE)
def history_item(request: Request, item_id: ItemId, s: SessionDep, db: DbDep, settings: SettingsDep):
    user, csrf = s
    mine = db.own_decisions(user, item_id=item_id, limit=1)
    if not mine:
        raise HTTPException(404, "no decision of yours on this item")
    latest = db.own_decisions(user, limit=1)[0]
    gold_seen = settings.gold_feedback and db.gold_feedback(user, item_id) is not None
    applied = mine[0]["decision_id"] <= db.applied_through()
    # an applied decision is in the dataset version: neither undo nor re-open may take it back
    can_undo = not gold_seen and not applied and latest["item_id"] == item_id and time.time() - latest["time"] <= settings.undo_s
    can_reopen = not gold_seen and not applied
    names = _tag_names(request, ReviewPayload.model_validate(db.get_item(item_id)["payload"]), mine[0]["tags"] or [])
    return page(
        request,
        "history_item.html",
        user=user,
        csrf=csrf,
        d=mine[0],
        tag_names=names,
        can_undo=can_undo,
        can_reopen=can_reopen,
        applied=applied,
    )


def _tag_names(request: Request, payload: ReviewPayload, ids: list[str]) -> list[dict[str, str]]:
    """``{id, en, zh}`` per stored tag: the payload's names (those of the proposed tags), else
    the server's (a concept the annotator picked from the graph), else the id itself."""
    known = request.app.state.tags.labels(i for i in ids if i not in payload.tag_labels)
    named = payload.tag_names(ids)
    return [{"id": n["id"], "en": known[n["id"]]["en"] or n["id"], "zh": known[n["id"]]["zh"]} if n["id"] in known else n for n in named]


@router.post("/history/{item_id}/reopen", responses=REDIRECT)
def history_reopen(
    item_id: ItemId,
    s: SessionDep,
    csrf: Annotated[str, Form(min_length=1, max_length=128)],
    db: DbDep,
    settings: SettingsDep,
):
    """The history page's re-open button: the decision is taken back and the item shown again."""
    check_form_csrf(csrf, s, "missing or wrong CSRF token; reload the page")
    db.reopen(s[0], item_id, lease_s=settings.lease_s, allow_gold=not settings.gold_feedback)
    return RedirectResponse(f"/?undone={item_id}", status_code=303)


@router.post("/api/items/{item_id}/reopen")
def api_reopen(item_id: ItemId, user: CsrfUser, db: DbDep, settings: SettingsDep):
    """Re-open your decision while no apply has merged it (409 after); the item is leased to you."""
    return db.reopen(user, item_id, lease_s=settings.lease_s, allow_gold=not settings.gold_feedback)
