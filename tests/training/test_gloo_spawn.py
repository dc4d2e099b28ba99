"""The gloo spawn helper's one retry (tests/training/gloo.py): a rank killed by a signal runs again
from the folders as they were; a Python exception in a rank is never retried."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.training.gloo import spawn


def _abort_once(rank: int, out: str, marker: str) -> None:
    """Each rank writes into ``out``; rank 0 aborts the first time (``marker``, a file, remembers)."""
    (Path(out) / "written").mkdir(exist_ok=False)  # exist_ok=False: a retry must start from the saved folder
    (Path(out) / "written" / f"rank{rank}").write_text("x")
    if rank == 0 and not Path(marker).exists():
        Path(marker).write_text("aborted once")
        os.abort()


def _raise(rank: int, out: str) -> None:
    (Path(out) / f"try{len(list(Path(out).iterdir()))}_{rank}").write_text("x")
    raise ValueError("a Python error in a rank")


def test_a_rank_killed_by_a_signal_runs_again_from_the_saved_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "before").write_text("kept")
    with pytest.warns(UserWarning, match="died by SIGABRT"):
        spawn(_abort_once, str(out), str(tmp_path / "marker"), world=1)
    assert (tmp_path / "marker").read_text() == "aborted once"
    assert sorted(p.name for p in out.iterdir()) == ["before", "written"]
    assert [p.name for p in (out / "written").iterdir()] == ["rank0"]


def test_a_python_exception_in_a_rank_is_not_retried(tmp_path):
    with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="a Python error in a rank"):
        spawn(_raise, str(tmp_path), world=1)
    assert [p.name for p in tmp_path.iterdir()] == ["try0_0"]
