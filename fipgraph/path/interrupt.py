"""Ctrl-C for a whole build: stop cleanly in every phase, never leave a half-written step.

One :class:`StopSignal` is installed for the whole build (planning, model loading, every run). Its
mode says what the first Ctrl-C does:

- between steps (the default): set ``requested``; the run saves the current network as a node at the
  next step boundary and stops. A second Ctrl-C raises ``KeyboardInterrupt`` at once (hard stop: only
  nodes already saved are kept).
- inside ``with stop.immediate():`` (model loading, memory set-up, evaluation): raise
  ``KeyboardInterrupt`` at once, because nothing there needs finishing: a load or an evaluation
  can simply be abandoned. The caller catches it and stops cleanly (an aborted evaluation leaves its
  node stored without metrics; a rerun evaluates a run's last node if it has none).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class StopSignal:
    """The build's SIGINT handler (a no-op outside the main thread, where signals cannot be caught)."""

    def __init__(self) -> None:
        self.requested = False
        self._immediate = 0
        self._old = None

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None

    def _handle(self, signum, frame) -> None:
        already, self.requested = self.requested, True
        if already or self._immediate:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def immediate(self) -> Iterator[None]:
        """A phase that a Ctrl-C abandons at once (one that came before it is the caller's to check)."""
        self._immediate += 1
        try:
            yield
        finally:
            self._immediate -= 1
