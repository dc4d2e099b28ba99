"""The review item's payload, typed: what mining stores with each queued row, and what the web app serves.

Why models and not a dict: the payload is written by ``mine`` (here, in the engines), stored as
JSON in the review database for days or weeks, and read back by the web app. One definition keeps
the writer and the reader agreeing on the keys; its defaults let payloads with fewer keys (gold
items queued by hand, older queues, tests) still serve; what is stored stays a plain JSON dict
(``ReviewPayload(...).model_dump()``), so the database and the jobs that read it do not change.

``ReviewItemPublic`` is what an annotator's client gets for an item and ``ReviewItemAdmin`` adds
the queue state only admins see. Pure: pydantic only, no web framework.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_serializer, field_validator, model_serializer

__all__ = ["PseudoLabel", "Verdict", "Neighbour", "TagLabel", "ReviewPayload", "ReviewItemPublic", "ReviewItemAdmin"]


class PseudoLabel(BaseModel):
    """The machine's proposal (``engines.active.pseudo.pseudo_label``): what the reviewer confirms or overrules."""

    decision: Literal["keep", "drop"]
    reasons: list[str] = Field(default_factory=list, description="the rules the row fails")
    caption_fix: str | None = Field(None, description="the caption with the image's text added")
    tags: list[str] = Field(default_factory=list)


class Verdict(BaseModel):
    """The AI verifier's independent second opinion (``engines.active.pseudo.verify``)."""

    verdict: Literal["keep", "drop", "unsure"]
    p_keep: float | None = None
    method: str = "none"
    why: str = ""


class Neighbour(BaseModel):
    """A look-alike shown with the item; its image is served because it is named here."""

    row_id: str
    pos: int | None = Field(None, description="row offset in the version mined")
    sim: float = 0.0
    caption: str = ""


class TagLabel(BaseModel):
    """A concept's display names from the concept graph (``graph.concepts``: ``label_en``, ``label_zh``)."""

    en: str = ""
    zh: str = ""


class ReviewPayload(BaseModel):
    """One queued row's review payload. Keys a stored payload lacks take these defaults; keys
    this model does not know (from another version) are ignored."""

    model_config = ConfigDict(extra="ignore")

    row_id: str | None = None
    pos: int | None = Field(None, description="row offset in the version mined: where its image is read")
    version: int | None = Field(None, description="dataset version mined; stamped by the job that queues the items")
    caption: str = Field("", description="the caption shown for editing")
    lang: str = "und"
    other_captions: list[str] = Field(default_factory=list)
    signals: dict[str, float] = Field(default_factory=dict, description="the row's display signals")
    ocr_text: str | None = None
    hard_reasons: list[str] = Field(default_factory=list, description="why mining chose the row")
    hardness: float | None = None
    pseudo: PseudoLabel | None = None
    verifier: Verdict | None = None
    neighbours: list[Neighbour] = Field(default_factory=list)
    concept: str | None = None
    quality_bin: int | None = None
    tag_labels: dict[str, TagLabel] = Field(
        default_factory=dict, description="concept id -> display names, for the tags and concept shown (added when queued)"
    )
    random_derived: dict[str, str] = Field(
        default_factory=dict,
        description="column -> why, for the signals and embeddings behind this item that came from randomly "
        "initialised weights (mined with allow_random_weights): noise, shown so nobody mistakes them for evidence",
    )

    @model_serializer(mode="wrap")
    def _no_empty_labels(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # payloads queued before names existed (and mining's own output) round-trip unchanged
        out = handler(self)
        for key in ("tag_labels", "random_derived"):
            if not out.get(key):
                out.pop(key, None)
        return out

    def tag_names(self, ids: list[str]) -> list[dict[str, str]]:
        """``{id, en, zh}`` per id, the id itself as the name when the payload has none (older
        queues, caption keywords, a graph without that node): every tag still shows."""
        out = []
        for i in ids:
            lab = self.tag_labels.get(i)
            out.append({"id": i, "en": (lab.en if lab else "") or i, "zh": lab.zh if lab else ""})
        return out

    @field_validator("caption", mode="before")
    @classmethod
    def _no_caption_is_empty(cls, v: Any) -> Any:
        # a null caption must not make the item unservable (a queue stuck on it)
        return "" if v is None else v


# what the public item takes from the payload (the rest comes from the item's queue row)
_FROM_PAYLOAD = ("caption", "other_captions", "signals", "ocr_text", "hard_reasons", "pseudo", "verifier", "neighbours", "concept")


class ReviewItemPublic(BaseModel):
    """What an annotator gets for an item: never who else holds or decided it, nor a gold answer."""

    id: int
    row_id: str
    lease_expires: float | None = None
    caption: str = ""
    other_captions: list[str] = Field(default_factory=list)
    signals: dict[str, float] = Field(default_factory=dict)
    ocr_text: str | None = None
    hard_reasons: list[str] = Field(default_factory=list)
    pseudo: PseudoLabel | None = None
    verifier: Verdict | None = None
    neighbours: list[Neighbour] = Field(default_factory=list)
    concept: str | None = None

    @field_serializer("pseudo", "verifier", mode="wrap")
    def _absent_as_empty(self, v: BaseModel | None, handler: SerializerFunctionWrapHandler) -> Any:
        # clients and the page read ``item.pseudo.decision``: an absent proposal is {}, not null
        return {} if v is None else handler(v)

    @classmethod
    def of(cls, item: dict[str, Any]) -> Self:
        """From a review database item (``ReviewDB.get_item`` and friends), its payload parsed.

        Validated once, as a ``ReviewPayload``; the item's own columns come typed from the
        database, so the public item is assembled without a second validation (this runs on
        every ``/api/next``)."""
        payload = ReviewPayload.model_validate(item["payload"])
        own = {k: item[k] for k in cls.model_fields if k not in _FROM_PAYLOAD}
        return cls.model_construct(**own, **{k: getattr(payload, k) for k in _FROM_PAYLOAD})


class ReviewItemAdmin(ReviewItemPublic):
    """An item as admins see it: plus its queue state."""

    status: Literal["open", "done"]
    gold: bool
    needed: int
    done_count: int
