"""Ctrl-C keeps its work: SIGINT / SIGTERM during training are remembered, not raised at once.

:func:`signals_caught` installs an :class:`Interrupt` handler for SIGINT and SIGTERM (main
thread only: Python allows handlers nowhere else) and puts the previous handlers back on
exit. The training loop finishes its step, writes a checkpoint and then raises
``KeyboardInterrupt`` itself; a second signal raises it at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

__all__ = ["Interrupt", "signals_caught"]


class Interrupt:
    """A signal handler that remembers the first SIGINT / SIGTERM (``signum``) so the loop can
    finish its step, checkpoint and stop; a second signal raises ``KeyboardInterrupt`` at once.

    Attributes:
        signum: the first signal received, or ``None``.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        """Remember the first signal; a second one raises KeyboardInterrupt at once."""
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum


@contextlib.contextmanager
def signals_caught(enabled: bool) -> Iterator[Interrupt]:
    """Install an :class:`Interrupt` for SIGINT and SIGTERM and put the previous handlers back.

    Args:
        enabled: install the handlers (``False``: yield an Interrupt that never fires, and
            signals keep their usual effect). Outside the main thread nothing is installed.

    Yields:
        The :class:`Interrupt` to poll (``interrupt.signum is not None``).
    """
    state = Interrupt()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield state
        return
    names = [s for s in ("SIGINT", "SIGTERM") if hasattr(signal, s)]
    previous = {name: signal.signal(getattr(signal, name), state) for name in names}
    try:
        yield state
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
