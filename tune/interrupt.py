"""Ctrl-C during a search: Ray Tune saves the experiment and returns; the search must then
stop too (no final evaluation, no reports) and say how to resume.

What Ray 2.60 does (ray/tune/tune.py, `_setup_signal_catching`): `Tuner.fit` puts in its own
SIGINT handler. The first Ctrl-C sets an event that ends the tuning loop, writes the
experiment state one last time, stops the trials, puts back the handler it found, and
`fit` *returns* a ResultGrid in which the unfinished trials are RUNNING, PAUSED or PENDING
(no error). A second Ctrl-C, now under the handler Ray put back, raises KeyboardInterrupt
wherever the driver is. After a search that ends normally Ray leaves its handler installed,
so a Ctrl-C during the final evaluation would only have set that dead event.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["SigintWatch", "interrupted_message", "sigint_watched", "unfinished_trials"]

FINISHED = ("TERMINATED", "ERROR")  # Tune's end states; RUNNING/PAUSED/PENDING resume


@dataclass
class SigintWatch:
    seen: bool = False  # Ray's handler received a SIGINT (or SIGUSR1) during fit


@contextmanager
def sigint_watched() -> Iterator[SigintWatch]:
    """Around `Tuner.fit`: tells whether Ray stopped the search on a signal, and restores the
    caller's SIGINT handler afterwards either way. Ray puts back, on its first signal, the
    handler it found: a marker installed here first, so finding it back means Ray saw one."""
    watch = SigintWatch()
    if threading.current_thread() is not threading.main_thread():
        yield watch  # signal handlers belong to the main thread; Ray installs none either
        return
    previous = signal.getsignal(signal.SIGINT)

    def marker(signum: int, frame: Any) -> None:  # what a second Ctrl-C runs into
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, marker)
    try:
        yield watch
        ray_handles = not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") or 0)
        watch.seen = ray_handles and signal.getsignal(signal.SIGINT) is marker
    finally:
        signal.signal(signal.SIGINT, previous)


def unfinished_trials(result_grid: Any) -> list[str]:
    """The ids of the trials Tune did not end (it would continue them on resume)."""
    from tune.report import tune_statuses

    return [(result.metrics or {}).get("trial_id") or str(result.path)
            for result, status in zip(result_grid, tune_statuses(result_grid))
            if status is not None and status not in FINISHED]


def interrupted_message(*, storage: str, name: str, address: str | None) -> str:
    """The line an interrupted search ends with: the exact command that continues it, or
    that nothing was saved yet."""
    import ray.tune

    path = f"{storage.rstrip('/')}/{name}"
    try:
        saved = ray.tune.Tuner.can_restore(path)
    except Exception:  # noqa: BLE001 - an unreachable storage path: nothing to offer
        saved = False
    if not saved:
        return f"interrupted before the search saved any state in {path}; nothing to resume"
    command = ["python", "tune/search.py", "--resume", "--name", name, "--storage-path", storage]
    if address:
        command += ["--address", address]
    return f"interrupted; the search's state is saved. Continue it with: {shlex.join(command)}"
