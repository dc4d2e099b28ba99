"""Fixtures for the review database tests: a database with users, on each engine (``db_url``, in
``tests/conftest.py``, gives a SQLite file or a database on the throwaway PostgreSQL server)."""

from __future__ import annotations

import pytest

from curation.reviewdb import ReviewDB
from tests.helpers import PASSWORD


@pytest.fixture
def review_db(db_url):
    db = ReviewDB(db_url)
    db.add_user("admin", PASSWORD, "admin")
    db.add_user("alice", PASSWORD)
    db.add_user("bob", PASSWORD)
    yield db
    db.close()
