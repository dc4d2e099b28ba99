"""Everyday names WordNet lacks ("a yellow lab" is a dog; WordNet's only *lab* is the laboratory),
and the caption words that tell which sense a name has.

Why a file and not more WordNet: WordNet 3.0 names concepts the way dictionaries do. Captions
use short, informal names (lab, yorkie, pitbull, mic) that it either lacks or files under
another sense only. ``graph/data/colloquial.jsonl`` lists such names with the synset they mean
and *cues*: words that, anywhere in the same caption, mark that sense (one sense per
collocation: "yellow", "leash", "frisbee" for the dog). The tagger makes each name compete with
WordNet's own senses of the word in its sense choice (``graph.wsd``), with the cues as evidence,
so the caption decides: "scientists working in a lab" stays the laboratory. See the file's
header for its format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["COLLOQUIAL_FILE", "Colloquial", "load_colloquial", "colloquial_digest"]

COLLOQUIAL_FILE = Path(__file__).resolve().parent / "data" / "colloquial.jsonl"


@dataclass(frozen=True)
class Colloquial:
    """One line of the file: a name as captions write it, the sense it means, and its cues."""

    term: str
    sense: str
    label: str = ""
    before: tuple[str, ...] = ()  # words that mark the sense right before the term
    cues: tuple[str, ...] = ()  # words that mark it anywhere in the caption
    note: str = ""


def load_colloquial(path: str | Path | None = None) -> list[Colloquial]:
    """The file's entries (``#`` lines are its instructions). A malformed line is an error
    naming the file and line: a silently skipped entry would tag nothing and say nothing."""
    return list(_load(str(path or COLLOQUIAL_FILE)))


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[Colloquial, ...]:
    out = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
            term, sense = str(row["term"]).strip().lower(), str(row["sense"]).strip()
            before, cues = (tuple(str(c).strip().lower() for c in row.get(k) or () if str(c).strip()) for k in ("before", "cues"))
            unknown = set(row) - {"term", "sense", "label", "before", "cues", "note"}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}:{no}: not a colloquial entry ({type(e).__name__}: {e})") from None
        if unknown or not term or not sense.startswith("wn:") or any(" " in w for w in before):
            raise ValueError(
                f"{path}:{no}: needs a term and a wn: sense, one-word 'before' words, and no keys but label, before, cues, note"
            )
        out.append(Colloquial(term, sense, str(row.get("label", "")), before, cues, str(row.get("note", ""))))
    return tuple(out)


def colloquial_digest(path: str | Path | None = None) -> str:
    """A short digest of the file: tags depend on it, so the tagging stage's checkpoints do too."""
    return hashlib.sha1(Path(path or COLLOQUIAL_FILE).read_bytes()).hexdigest()[:12]
