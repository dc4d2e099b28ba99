"""Admin only: the admin page (queue progress, agreement, annotators, recent actions), the audit
log page (filters by user and action, pages), applying the decisions to the dataset, the stats
as JSON and the decisions export.

The apply action is handed to ``create_app`` by its caller (the CLI passes the review job's), so
the web app runs a job without importing one.
"""

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from annotator_ui.deps import NO_NUL, Admin, AdminSession, DbDep, SessionDep, check_form_csrf, page, require_admin
from annotator_ui.routes import HTML_PAGE
from curation.reviewdb import ReviewDB, User

__all__ = ["router"]

router = APIRouter()


def _admin_page(request: Request, db: ReviewDB, user: User, csrf: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    return page(request, "admin.html", status, user=user, csrf=csrf, stats=_stats(db), rows=db.audit_tail(30), **ctx)


@router.get("/admin", response_class=HTMLResponse, responses=HTML_PAGE)
def admin_page(request: Request, s: AdminSession, db: DbDep):
    return _admin_page(request, db, *s)


AUDIT_PAGE = 100
FilterText = Annotated[str, Query(max_length=64, pattern=NO_NUL)]


@router.get("/admin/audit", response_class=HTMLResponse, responses=HTML_PAGE)
def audit_page(
    request: Request,
    s: AdminSession,
    db: DbDep,
    user: FilterText = "",
    action: FilterText = "",
    page_no: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
):
    """The audit log, newest first, filtered by user name and action (empty: all), 100 a page."""
    rows, total = db.audit_page(user=user or None, action=action or None, limit=AUDIT_PAGE, offset=(page_no - 1) * AUDIT_PAGE)
    return page(
        request,
        "audit.html",
        user=s[0],
        csrf=s[1],
        rows=rows,
        total=total,
        page_no=page_no,
        has_next=page_no * AUDIT_PAGE < total,
        f_user=user,
        f_action=action,
        users=[u.name for u in db.users()],
        actions=db.audit_actions(),
    )


@router.post("/admin/apply", responses=HTML_PAGE)
def admin_apply(request: Request, s: SessionDep, csrf: Annotated[str, Form(min_length=1, max_length=128)], db: DbDep):
    """ "Apply decisions to the dataset": the same ``apply_reviews`` as ``curate review apply``
    (a new Lance version, refitted reward head and thresholds), run by an admin from the page.
    One apply at a time; a second click while one runs gets 409."""
    user = s[0]
    require_admin(user)
    check_form_csrf(csrf, s, "missing or wrong CSRF token; reload the page")
    state = request.app.state
    if not state.dataset:
        raise HTTPException(409, "this review database names no dataset to apply to")
    if state.apply is None:
        raise HTTPException(409, "this server was started without the apply action; run `curate review apply`")
    if not state.apply_lock.acquire(blocking=False):
        raise HTTPException(409, "an apply is already running")
    try:
        report = state.apply(state.dataset, user)
    except (FileNotFoundError, ValueError) as e:
        return _admin_page(request, db, user, csrf, 409, apply_error=str(e))
    finally:
        state.apply_lock.release()
    return _admin_page(request, db, user, csrf, applied=_apply_summary(report))


@router.get("/api/admin/stats")
def admin_stats(user: Admin, db: DbDep):
    return _stats(db)


@router.get(
    "/admin/export.jsonl",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "one decision per line"}},
)
def export(user: Admin, db: DbDep):
    db.log(user, "export")
    return StreamingResponse(
        _decision_lines(db), media_type="application/x-ndjson", headers={"content-disposition": 'attachment; filename="decisions.jsonl"'}
    )


def _decision_lines(db: ReviewDB, page_size: int = 5000):
    """Every decision as a JSON line (without the item payload), read a page at a time so an
    export of millions streams in constant memory."""
    last = 0
    while True:
        part = db.decisions(since_id=last, limit=page_size)
        if not part:
            return
        for d in part:
            d.pop("payload", None)
            yield json.dumps(d) + "\n"
        last = part[-1]["decision_id"]


def _stats(db: ReviewDB) -> dict[str, Any]:
    from engines.active.loop import cohen_kappa

    c = db.counters()
    pairs = db.double_annotated()
    return {
        "counters": c,
        "progress": (c["items_done"] / c["items_total"]) if c.get("items_total") else None,
        "kappa": cohen_kappa(pairs),
        "kappa_pairs": len(pairs),
        "annotators": db.per_user(),
    }


def _apply_summary(rep: dict[str, Any]) -> dict[str, Any]:
    """What the admin page shows after an apply: what changed, and how good the proposals were."""
    pa_, va = rep.get("pseudo_label_agreement") or {}, rep.get("verifier_agreement") or {}
    return {
        "version_before": rep.get("version_before"),
        "version_after": rep.get("version_after"),
        "decisions": rep.get("decisions", 0),
        "rows_reviewed": rep.get("rows_reviewed", 0),
        "labels": rep.get("labels", 0),
        "captions_edited": (rep.get("caption_fixes") or {}).get("captions_edited", 0),
        "graph_tags_rows": rep.get("graph_tags_rows", 0),
        "tags_not_in_graph": (rep.get("tags_not_in_graph") or {}).get("rows", 0),
        "thresholds": [
            {"column": t.get("column"), "op": t.get("op"), "old": t.get("old"), "new": t.get("new"), "note": t.get("note", "")}
            for t in rep.get("thresholds", [])
        ],
        "reward_head": rep.get("reward_head") or {},
        "pseudo_accuracy": pa_.get("accuracy"),
        "verifier_accuracy": va.get("accuracy"),
        "agreement_n": pa_.get("n"),
        "report": Path(rep["report_html"]).name if rep.get("report_html") else None,
    }
