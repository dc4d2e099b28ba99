"""Editing pairs in the review queue (``curate pairs review``): what the page and the API show of a
pair item, read from its payload.

Why a model of its own: ``engines.active.payload.ReviewPayload`` describes a dataset row and
ignores the keys it does not know, so a pair item's ``pair`` block would be dropped on the way to
the client. ``PairView`` is that block as the client gets it: ids, kind, both instructions, the
language being edited and the images' URLs; never the pair table's path on the server (images are
served by ``/pair-image/{pair_id}/{side}``, which reads the path from the database).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from curation.reviewdb import pair_id_of

__all__ = ["PairView", "pair_view", "SIDES"]

SIDES = ("source", "target")


class PairView(BaseModel):
    """A pair item as an annotator's client sees it."""

    pair_id: str
    kind: str | None = None
    source_id: str | None = None
    target_id: str | None = None
    instruction_en: str | None = None
    instruction_zh: str | None = None
    edit_lang: Literal["en", "zh"] = "en"
    width: int | None = None
    height: int | None = None
    style: str | None = None
    source_url: str = ""
    target_url: str = ""


def pair_view(item: dict[str, Any]) -> dict[str, Any] | None:
    """The item's ``PairView`` as a dict when it is a pair item (``row_id`` ``pair:<id>`` and a
    ``pair`` block in its payload), else None: a hard case, or a malformed pair payload, which
    then shows as an ordinary item rather than failing the page."""
    pid = pair_id_of(item.get("row_id") or "")
    block = (item.get("payload") or {}).get("pair")
    if pid is None or not isinstance(block, dict):
        return None
    try:
        view = PairView.model_validate({**block, "pair_id": pid})
    except ValidationError:
        return None
    view.source_url, view.target_url = (f"/pair-image/{pid}/{side}" for side in SIDES)
    return view.model_dump()
