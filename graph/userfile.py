"""User concept files (CSV or JSONL) merged into a concept graph.

One concept per row/line, fields:

====================  =================================================================
``concept``           English label (required), e.g. ``hot pot`` or a Wikipedia title
``parent``            parent: an id (``wn:02084071``), a label/term of a graph node, or a
                      concept of the same file; several separated by ``|`` (a JSON list in
                      JSONL). Empty: a new root, or no new parent for an existing concept.
``aliases``           synonyms, ``|``-separated (a JSON list in JSONL); they tag the concept
``zh``                Chinese label (also a tagging term)
``weight``            up/down-weight for resampling (default 1.0), e.g. 3 for a trending concept
``id``                optional explicit id; default ``user:<concept>``
====================  =================================================================

A concept whose label or id already names a graph node is merged into that node (aliases and
Chinese label added, weight replaced), so "dog,weight=3" up-weights WordNet's dog. Unknown
parents and cycles are errors that name the row and the cycle; nothing is half-merged.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from curation.errors import UserError
from graph.concepts import ConceptGraph, UnknownParentError

__all__ = ["UserConcept", "UserFileError", "read_user_concepts", "merge_user_concepts"]


class UserFileError(UserError, ValueError):
    """A user concept file with bad rows; the message lists each one with its line."""


def _split(v):
    if v is None:
        return []
    if isinstance(v, str):
        return [x.strip() for x in v.split("|") if x.strip()]
    if isinstance(v, list):
        return [str(x).strip() for x in v if str(x).strip()]
    raise ValueError("must be a string with | separators or a list of strings")


class UserConcept(BaseModel):
    model_config = ConfigDict(extra="forbid")

    concept: str = Field(min_length=1, max_length=200)
    parent: list[str] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    zh: str = ""
    weight: float = Field(1.0, ge=0, le=1000)
    id: str | None = None

    @field_validator("parent", "aliases", mode="before")
    @classmethod
    def _lists(cls, v):
        return _split(v)

    @field_validator("concept", "zh", mode="before")
    @classmethod
    def _strip(cls, v):
        return (v or "").strip() if isinstance(v, str) or v is None else v

    @field_validator("weight", mode="before")
    @classmethod
    def _weight(cls, v):
        return 1.0 if v in (None, "") else v


def read_user_concepts(path: str | Path) -> list[tuple[int, UserConcept]]:
    """(line number, concept) for every row; all bad rows reported together."""
    p = Path(path)
    if not p.exists():
        raise UserFileError(f"user concept file not found: {p}")
    rows: list[tuple[int, dict]] = []
    problems: list[str] = []
    text = p.read_text(encoding="utf-8-sig")
    if p.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"  line {i}: not JSON ({e.msg})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"  line {i}: expected a JSON object")
                continue
            rows.append((i, obj))
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "concept" not in [f.strip() for f in reader.fieldnames]:
            raise UserFileError(f"{p}: the CSV needs a header with a 'concept' column (optional: parent, aliases, zh, weight, id)")
        for i, rec in enumerate(reader, 2):
            rows.append((i, {k.strip(): v for k, v in rec.items() if k is not None and (v or "").strip() != ""}))
    out = []
    for i, rec in rows:
        try:
            out.append((i, UserConcept.model_validate(rec)))
        except ValidationError as e:
            for err in e.errors():
                field = ".".join(str(x) for x in err["loc"]) or "row"
                msg = (
                    "unknown field (allowed: concept, parent, aliases, zh, weight, id)" if err["type"] == "extra_forbidden" else err["msg"]
                )
                problems.append(f"  line {i}: {field}: {msg}")
    if problems:
        raise UserFileError(f"{p}: bad rows:\n" + "\n".join(problems))
    return out


def merge_user_concepts(graph: ConceptGraph, path: str | Path, *, source: str = "user") -> dict[str, int]:
    """Merge a user file into ``graph`` (in place, all or nothing). Returns counts."""
    rows = read_user_concepts(path)
    work = ConceptGraph(graph.g.copy())
    ids: dict[str, str] = {}  # file label / id (lower) -> node id
    added = merged = 0
    for _, c in rows:
        existing = [c.id] if c.id and c.id in work else ([] if c.id else work.resolve(c.concept))
        nid = existing[0] if existing else (c.id or f"{source}:{c.concept.lower().replace(' ', '-')}")
        merged += bool(existing)
        added += not existing
        work.add_concept(
            nid,
            c.concept if not existing else work.label(nid),
            label_zh=c.zh,
            aliases=c.aliases,
            terms=[c.concept, *c.aliases, c.zh],
            source=source,
            weight=c.weight,
        )
        ids[c.concept.lower()] = nid
        ids[nid.lower()] = nid
    missing: list[tuple[str, str, str]] = []
    edges = 0
    for line, c in rows:
        child = ids[c.concept.lower()]
        for ref in c.parent:
            parent = ids.get(ref.lower()) or next(iter(work.resolve(ref)), None)
            if parent is None:
                missing.append((f"{Path(path).name}:{line}", c.concept, ref))
                continue
            work.add_edge(parent, child)
            edges += 1
    if missing:
        raise UnknownParentError(missing)
    work.finalize()  # raises GraphCycleError naming the cycle
    graph.g = work.g
    graph._term_index = None
    return {"rows": len(rows), "added": added, "merged": merged, "edges": edges}
