"""One SIGTERM policy: a terminated process stops the way Ctrl-C stops it.

``ray job stop``, ``kill`` and schedulers send SIGTERM; without a handler Python dies at once
and leaves runs RUNNING. Inside ``sigterm_as_interrupt`` SIGTERM goes where SIGINT goes: to the
SIGINT handler someone installed (Ray Tune's, which stops the trials and saves the experiment),
else it raises ``RunTerminated``, a KeyboardInterrupt, so the code unwinds as after Ctrl-C (a
run ends KILLED, a sweep saves its state and ends its parent run KILLED).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class RunTerminated(KeyboardInterrupt):
    """SIGTERM turned into an interrupt, so a terminated process unwinds (a run ends KILLED)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # someone handles Ctrl-C their own way: do as they do
        return
    raise RunTerminated(f"signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM as Ctrl-C while the block runs, then restore the previous handler.

    Signal handlers belong to the main thread; elsewhere (a Tune trial's or a Ray Train worker's
    thread) this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
