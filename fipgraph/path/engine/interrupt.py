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

Replica groups stepping in parallel threads (``replicas.py``) agree through :class:`GroupStop` on the
one step at which they all stop.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from fipgraph.path.engine.recipe import Limits


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
        """A phase that a Ctrl-C abandons at once (one that came before it is the caller's to check).

        Only on the main thread, where Python runs signal handlers: elsewhere (a replica group's thread)
        the phase runs to its end, and the Ctrl-C stops the walks at their next step."""
        here = int(threading.current_thread() is threading.main_thread())
        self._immediate += here
        try:
            yield
        finally:
            self._immediate -= here


class GroupStop:
    """Where groups stepping in parallel threads stop. Each group asks before every step; the first to
    see a stop (Ctrl-C, the deadline, --max-steps) fixes the last step at the furthest one any group
    has begun, so every walk stops at the same step, as one batched walk would (and a rerun resumes
    them batched). ``--max-steps`` counts a step of all groups once."""

    def __init__(self, groups: int, step: int, total: int, limits: "Limits", stop: StopSignal) -> None:
        self.lock = threading.Lock()
        self.begun = [step] * groups  # the last step each group began
        self.last, self.reason, self.aborted = total, None, False
        self.cap = None if limits.max_steps is None else step + max(0, limits.max_steps)
        self.limits, self.stop = limits, stop

    def begin(self, g: int) -> bool:
        """Whether group ``g`` takes its next step (it has then begun it)."""
        with self.lock:
            step = self.begun[g] + 1
            if self.aborted or step > self.last:
                return False
            if self.reason is None and (self.stop.requested or self.limits.exhausted()
                                        or (self.cap is not None and step > self.cap)):
                self.reason = "interrupt" if self.stop.requested else "limit"
                self.last = max(self.begun)
                if step > self.last:
                    return False
            self.begun[g] = step
            return True

    def abort(self) -> None:
        """An error or a hard stop: every group stops before its next step."""
        with self.lock:
            self.aborted = True
