"""The review database's answers to the audit of the review UI (/work/audit/review.md, #5 and #8),
on a real SQLite file and a real PostgreSQL server (``db_url`` is parametrized)."""

from __future__ import annotations

import pytest

from curation.reviewdb import Conflict, ReviewDB, redact_url
from tests.helpers import make_items


def _users(db):
    return {u.name: u for u in db.users()}


def test_undo_of_a_decision_an_apply_has_merged_is_refused_like_reopen(review_db):
    """Audit #5: undo took back a decision `review apply` had already merged (re-open refused it),
    so the dataset version held a decision the review database no longer had."""
    alice = _users(review_db)["alice"]
    review_db.enqueue(make_items(2), "b1")
    item = review_db.next_item(alice)
    review_db.submit(alice, item["id"], "keep")
    review_db.mark_applied(None, max(d["decision_id"] for d in review_db.decisions()))  # what apply records
    for take_back in (review_db.undo, review_db.reopen):
        with pytest.raises(Conflict, match="already applied"):
            take_back(alice, item["id"])
    assert [d["item_id"] for d in review_db.decisions()] == [item["id"]] and review_db.counters()["decisions"] == 1
    # a decision made after the apply is not in the dataset: undo still takes it back
    nxt = review_db.next_item(alice)
    review_db.submit(alice, nxt["id"], "drop")
    assert review_db.undo(alice, nxt["id"])["undone"] == "drop"


def test_without_create_a_missing_database_is_an_error_and_nothing_is_made(db_url, tmp_path):
    """Audit #8: a mistyped ``--db`` made a new, empty database (and its folders), and accounts
    and annotators then used it. ``create=False`` opens only a database `mine` made."""
    if db_url.startswith("postgresql://"):
        url = db_url.replace("postgresql://postgres@", "postgresql://postgres:s3cret@")  # trust auth ignores it
        with pytest.raises(FileNotFoundError, match="no review database at .*run `curate review mine` first") as e:
            ReviewDB(url, create=False)  # the database exists on the server, but was never mined
        assert "s3cret" not in str(e.value) and "postgres:***@" in str(e.value)
    else:
        missing = tmp_path / "typo" / "review.sqlite"
        with pytest.raises(FileNotFoundError, match="no review database at .*typo/review.sqlite"):
            ReviewDB(str(missing), create=False)
        assert not missing.parent.exists()
        (tmp_path / "other.sqlite").write_bytes(b"")  # an empty file is not a review database either
        with pytest.raises(FileNotFoundError, match="no review database"):
            ReviewDB(str(tmp_path / "other.sqlite"), create=False)
    made = ReviewDB(db_url)  # what `mine` does
    made.close()
    opened = ReviewDB(db_url, create=False)
    assert opened.counters()["items_total"] == 0
    opened.close()


def test_a_database_of_another_schema_version_is_refused_without_create_too(review_db):
    """``create=False`` checks the schema version as ``init_schema`` does (it used to read on)."""
    from curation.reviewdb import BadInput

    review_db.set_meta("schema_version", "0")
    with pytest.raises(BadInput, match="schema version 0"):
        ReviewDB(review_db.url, create=False)


def test_passwords_are_hidden_in_database_urls():
    assert redact_url("postgresql://u:pa55@db.example:5432/review") == "postgresql://u:***@db.example:5432/review"
    assert redact_url("postgres://u@host/db?sslmode=require&password=pa55") == "postgres://u@host/db?sslmode=require&password=***"
    assert redact_url("/data/review.sqlite") == "/data/review.sqlite"
