"""The row-progress thread of a phase is over when the phase is: a Ray call of it left in flight
when the command shut Ray down made Ray's core worker end the process ("The core worker has
already been shutdown"), exit -11 after `curate dedup`'s last line on a loaded machine."""

from __future__ import annotations

import threading
import time


def test_stopping_a_phase_s_row_progress_waits_for_its_thread():
    from curation.runner import _follow

    done: list[str] = []

    class SlowCounter:  # a RowProgress whose last counter read is still in flight when the phase ends
        def follow(self, progress, task, stop) -> None:
            stop.wait()
            time.sleep(0.5)
            done.append(threading.current_thread().name)

    halt = _follow(SlowCounter(), None, None)
    halt()
    assert done == ["row-progress"]  # returned only once the thread had finished
