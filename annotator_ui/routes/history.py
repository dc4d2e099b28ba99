"""An annotator's own decisions: a paginated list (``/history``) and one decision, read-only
(``/history/{item_id}``).

Why read-only: a decision is changed by an undo (the latest one, for a short while, from the
review page) or by a later review, never by editing history; the page offers the undo when it
applies. Every query is keyed on the session's user, so an item id in the URL shows only that
user's own decision (another's is 404, as if it did not exist).
"""

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from annotator_ui.deps import DbDep, ItemId, SessionDep, SettingsDep, page
from annotator_ui.routes import HTML_PAGE

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
    can_undo = latest["item_id"] == item_id and time.time() - latest["time"] <= settings.undo_s
    return page(request, "history_item.html", user=user, csrf=csrf, d=mine[0], can_undo=can_undo)
