"""Closing stores whose owner forgot close(): queued nodes are committed at interpreter exit, and a
final commit that fails there is reported (logged and printed), never swallowed."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from typing import Any

_OPEN_WRITERS: "weakref.WeakSet[Any]" = weakref.WeakSet()
if hasattr(os, "register_at_fork"):
    # a forked child (a DataLoader worker reading a weight dataset) does not own its parent's writers: closing
    # them at its exit would wait on the parent's writer thread (absent here, its locks perhaps held) forever
    os.register_at_fork(after_in_child=_OPEN_WRITERS.clear)


def track(store: Any) -> None:
    """Close ``store`` at exit unless it is closed before."""
    _OPEN_WRITERS.add(store)
    _register_exit_hook()


def untrack(store: Any) -> None:
    _OPEN_WRITERS.discard(store)


_EXIT_HOOK = threading.Lock()
_exit_hook_registered = False


def _register_exit_hook() -> None:
    """Close forgotten writers at interpreter exit *before* concurrent.futures shuts its thread pools
    down (zarr writes through one; after that shutdown every chunk write fails). threading's exit hooks
    run last-registered first and before atexit's, so registering here, after zarr's import, is early
    enough; atexit stays as a fallback."""
    global _exit_hook_registered
    with _EXIT_HOOK:
        if not _exit_hook_registered:
            register = getattr(threading, "_register_atexit", None)
            try:
                if register is not None:
                    register(_close_before_thread_pools_stop)
            except RuntimeError:  # the interpreter is already shutting down: atexit remains
                pass
            _exit_hook_registered = True


def _close_before_thread_pools_stop() -> None:
    # other non-daemon threads still run at this point (they are joined later) and may still append:
    # leave their stores to the atexit fallback rather than closing under them
    others = [t for t in threading.enumerate()
              if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if not others:
        _close_open_writers()


@atexit.register
def _close_open_writers() -> None:
    """A forgotten close() must not lose queued nodes, and a final commit that fails is reported."""
    for store in list(_OPEN_WRITERS):
        try:
            store.close()
        except Exception as exc:
            message = f"fipgraph: the final commit of store {store.root} failed at exit; queued nodes were lost: {exc}"
            logging.getLogger("fipgraph.build.store").error(message)
            print(message, file=sys.stderr, flush=True)
