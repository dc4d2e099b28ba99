"""Image bytes by row id, for the rows a user may see.

Images are addressed by row id (validated) and read from the Lance dataset at the version the
item was mined from, never by a path from the request. A user sees the images of items leased to
them, of those items' look-alikes and of the items they decided (their history); an admin: any
queued item's. The bytes' type is sniffed:
known formats pass, anything else is re-encoded as PNG or refused, so a browser can only ever
treat the answer as an image.

A pair item's two images (``curate pairs review``) come from ``/pair-image/{pair_id}/{side}``
under the same rule, read from the pair table the payload names (never a path from the request).
"""

import io
import json
import re
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response

from annotator_ui.deps import ROW_ID_PATTERN, CurrentUser, DbDep, RowId
from annotator_ui.pairs import SIDES
from curation.reviewdb import PAIR_PREFIX, ReviewDB, User, pair_id_of
from engines.active.payload import ReviewPayload

__all__ = ["router", "dataset_versions"]

router = APIRouter()

ROW_ID = re.compile(ROW_ID_PATTERN)
SAFE_IMAGE = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png", b"GIF87a": "image/gif", b"GIF89a": "image/gif"}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def dataset_versions(dataset: str | None) -> Callable[[int | None], Any]:
    """``open(version)`` of the app's dataset, the last few versions kept open: opening a Lance
    version reads its manifest, and consecutive images come from the same version."""

    @lru_cache(maxsize=8)
    def open_version(version: int | None):
        import lance

        if not dataset:
            raise HTTPException(404, "this review database names no dataset")
        return lance.dataset(dataset, version=version)

    return open_version


def _row_locator(db: ReviewDB, user: User, row_id: str) -> tuple[int | None, int | None]:
    """(version, position) of a row this user may see: an item leased to them or decided by
    them (or any item for an admin), or a look-alike shown with a leased item."""
    with db.tx(write=False) as t:
        if user.is_admin:
            r = t.one("SELECT payload FROM items WHERE row_id = ?", (row_id,))
            if r:
                p = ReviewPayload.model_validate_json(r[0])
                return p.version, p.pos
        rows = t.all("SELECT payload FROM items WHERE lease_user = ? AND lease_expires > ?", (user.id, time.time()))
        # the items they decided (their history page's thumbnails): one indexed lookup by row id
        rows += t.all(
            "SELECT i.payload FROM items i JOIN decisions d ON d.item_id = i.id WHERE i.row_id = ? AND d.user_id = ?", (row_id, user.id)
        )
    for (raw,) in rows:
        p = ReviewPayload.model_validate_json(raw)
        if p.row_id == row_id:
            return p.version, p.pos
        for nb in p.neighbours:
            if nb.row_id == row_id:
                return p.version, nb.pos
    raise HTTPException(403 if not user.is_admin else 404, "no such image among your items")


def _read_image(open_version: Callable[[int | None], Any], row_id: str, version: int | None, pos: int | None) -> bytes | None:
    """The row's image bytes: by position at the mined version (one take), else, when the
    dataset was compacted or re-versioned since, by id in the latest version."""
    data = None
    if pos is not None:
        try:
            t = open_version(version).take([int(pos)], columns=["id", "image"])
            if t.num_rows and t.column("id")[0].as_py() == row_id:
                data = t.column("image")[0].as_py()
        except (ValueError, OSError, IndexError):
            data = None
    if data is None:  # the filter is safe: the row id matched ROW_ID (letters, digits and _.:-)
        t = open_version(None).to_table(columns=["image"], filter=f"id = '{row_id}'")
        data = t.column("image")[0].as_py() if t.num_rows else None
    return data


@router.get(
    "/image/{row_id}", response_class=Response, responses={200: {"content": {t: {} for t in IMAGE_TYPES}, "description": "the image bytes"}}
)
def image(request: Request, row_id: RowId, user: CurrentUser, db: DbDep):
    if not ROW_ID.match(row_id):
        raise HTTPException(422, "row ids are letters, digits and _.:-")
    version, pos = _row_locator(db, user, row_id)
    data = _read_image(request.app.state.open_version, row_id, version, pos)
    if not data:
        raise HTTPException(404, "no image bytes stored for this row")
    body, ctype = _safe_image(data)
    return Response(body, media_type=ctype, headers={"cache-control": "private, max-age=600"})


@lru_cache(maxsize=8)
def _pair_table(uri: str, version: int | None):
    """A pair table at a version, the last few kept open (a pair's two images come one after the other)."""
    import lance

    from curation.store import storage_options_from_env

    return lance.dataset(uri, version=version, storage_options=storage_options_from_env(uri) or None)


def _pair_block(db: ReviewDB, user: User, pair_id: str) -> dict[str, Any]:
    """The ``pair`` block of a pair item this user may see: leased to them or decided by them (any
    queued pair for an admin): the images rule of dataset rows. Anything else is 404: to this
    user, a pair that is not theirs does not exist."""
    row_id = PAIR_PREFIX + pair_id
    with db.tx(write=False) as t:
        r = t.one("SELECT payload FROM items WHERE row_id = ?", (row_id,)) if user.is_admin else None
        r = r or t.one(
            "SELECT payload FROM items WHERE row_id = ? AND lease_user = ? AND lease_expires > ?", (row_id, user.id, time.time())
        )
        r = r or t.one(
            "SELECT i.payload FROM items i JOIN decisions d ON d.item_id = i.id WHERE i.row_id = ? AND d.user_id = ?", (row_id, user.id)
        )
    block = json.loads(r[0]).get("pair") if r else None
    if not isinstance(block, dict) or not isinstance(block.get("table"), str):
        raise HTTPException(404, "no such pair among your items")
    return block


def _read_pair_image(open_version: Callable[[int | None], Any], block: dict[str, Any], pair_id: str, side: str) -> bytes | None:
    """The bytes of one side of a pair: from the pair table at the version queued (else its latest
    version: compacted or re-versioned since), else from the dataset row the side was made from
    (``source_id``; a mined pair's ``target_id``). Unreadable tables or rows are None (404)."""
    col = "src_image" if side == "source" else "tgt_image"
    flt = f"pair_id = '{pair_id}'"  # safe: pair ids match PAIR_ID (letters, digits and _.-)
    for version in (block.get("table_version"), None):
        try:
            t = _pair_table(block["table"], version if isinstance(version, int) else None).to_table(columns=[col], filter=flt)
        except (ValueError, OSError, TypeError):
            continue
        if t.num_rows and t.column(col)[0].is_valid:
            return t.column(col)[0].as_py()
        if t.num_rows:
            break
    row_id = block.get("source_id" if side == "source" else "target_id")
    if not isinstance(row_id, str) or not ROW_ID.match(row_id):
        return None
    try:
        return _read_image(open_version, row_id, None, None)
    except (ValueError, OSError, HTTPException):
        return None


@router.get(
    "/pair-image/{pair_id}/{side}",
    response_class=Response,
    responses={200: {"content": {t: {} for t in IMAGE_TYPES}, "description": "the image bytes"}},
)
def pair_image(request: Request, pair_id: str, side: str, user: CurrentUser, db: DbDep):
    """One image of a pair item (``side``: ``source`` or ``target``), under the rule of row
    images. A malformed or unknown pair id, or another side, is 404 (never 422 or 500: the URL
    names nothing that exists)."""
    if side not in SIDES or pair_id_of(PAIR_PREFIX + pair_id) is None:
        raise HTTPException(404, "no such pair image")
    block = _pair_block(db, user, pair_id)
    data = _read_pair_image(request.app.state.open_version, block, pair_id, side)
    if not data:
        raise HTTPException(404, "no image bytes stored for this pair")
    body, ctype = _safe_image(data)
    return Response(body, media_type=ctype, headers={"cache-control": "private, max-age=600"})


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
