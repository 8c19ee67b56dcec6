"""One SIGTERM policy: a terminated process stops the way Ctrl-C stops it.

``ray job stop``, ``kill`` and schedulers send SIGTERM; without a handler Python dies at once
and leaves runs RUNNING. Inside ``sigterm_as_interrupt`` SIGTERM goes where SIGINT goes: to the
SIGINT handler that code inside the block installed (Ray Tune's while a sweep stage runs, which
stops the trials and saves the experiment), else it raises ``RunTerminated``, a
KeyboardInterrupt, so the code unwinds as after Ctrl-C (a run ends KILLED, a sweep saves its
state and ends its parent run KILLED). A SIGINT handler that was already there when the block
began (a library's, left behind) is not the block's way of stopping and is not called.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

SignalHandler = Callable[[int, FrameType | None], None]


class RunTerminated(KeyboardInterrupt):
    """SIGTERM turned into an interrupt, so a terminated process unwinds (a run ends KILLED)."""


def _forwarding_to_handlers_installed_after(entry_handler: object) -> SignalHandler:
    """A SIGTERM handler that calls the SIGINT handler installed since the block began, if any,
    and otherwise raises ``RunTerminated``."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler not in (entry_handler, signal.default_int_handler):
            handler(signal.SIGINT, frame)
            return
        raise RunTerminated(f"signal {signum}")

    return on_sigterm


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM as Ctrl-C while the block runs, then restore the previous handler.

    Signal handlers belong to the main thread; elsewhere (a Tune trial's or a Ray Train worker's
    thread) this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    on_sigterm = _forwarding_to_handlers_installed_after(signal.getsignal(signal.SIGINT))
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
