"""Fixtures for review tests: a real SQLite review database with users and queued items."""

from __future__ import annotations

import hashlib

import lance
import numpy as np
import pyarrow as pa
import pytest

from annotator_ui.db import ReviewDB

PASSWORD = "correct horse battery"


def make_items(n: int, *, gold: int = 0, double_every: int = 0, prefix: str = "r") -> list[dict]:
    """``n`` queued items with distinct priorities (the first is served first)."""
    items = []
    for i in range(n):
        it = {"row_id": f"{prefix}{i:06d}", "priority": float(n - i),
              "payload": {"row_id": f"{prefix}{i:06d}", "caption": f"caption {i}", "pos": i},
              "needed": 2 if double_every and i % double_every == 0 else 1}
        if i < gold:
            it["gold_answer"] = "keep" if i % 2 == 0 else "drop"
        items.append(it)
    return items


@pytest.fixture
def review_db(tmp_path):
    db = ReviewDB(tmp_path / "review.sqlite")
    db.add_user("admin", PASSWORD, "admin")
    db.add_user("alice", PASSWORD)
    db.add_user("bob", PASSWORD)
    yield db
    db.close()


def _u(row_id: str, salt: str) -> float:
    return int(hashlib.sha1(f"{salt}{row_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def add_signals(uri: str) -> None:
    """Profile-like columns (deterministic per row) for the loop to learn from."""

    def udf(batch: pa.RecordBatch) -> pa.RecordBatch:
        ids = batch.column("id").to_pylist()
        rng = np.random.default_rng(len(ids))
        emb = rng.normal(size=(len(ids), 32)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return pa.RecordBatch.from_pydict({
            "prof_quality": pa.array([_u(i, "q") for i in ids], pa.float32()),
            "prof_clip_sim": pa.array([0.5 * _u(i, "s") for i in ids], pa.float32()),
            "prof_clip_image": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float16()), 32),
        })

    lance.dataset(uri).add_columns(udf, read_columns=["id"])
