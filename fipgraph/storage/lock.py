"""The single-writer lock: an flock on <store>/writer.lock, released by the kernel when the
holder dies (even by SIGKILL), so a crashed build never leaves a stale lock behind."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from fipgraph.errors import WriterLockedError


class WriterLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> "WriterLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise WriterLockedError(
                f"store {self.path.parent} is already open for writing by pid {holder.get('pid', '?')} "
                f"(since {holder.get('since', '?')}). Only one writer at a time: wait for it to finish, "
                "or open the store with mode='r' to read while it writes."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
