"""One writer per store on an object storage: a lease object, ``<store>/writer.lease``.

An object store has no flock, and nothing releases a lock when its holder is SIGKILLed. So the writer
*creates* the lease object only if it is absent (S3's conditional PUT, ``If-None-Match: *``: of two writers
racing, exactly one create succeeds), renews its expiry every ``ttl / 3`` seconds from a thread, and
deletes it on close. A lease whose holder died expires ``ttl`` seconds after its last renewal; the next
writer then takes it over. A writer that finds its lease taken by another (it was paused longer than
``ttl``) stops publishing: ``check()`` raises, so two writers never publish over each other.

Expiry times are the holder's clock; clocks of writers on different machines should agree within ``ttl``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid

from fipgraph.errors import WriterLockedError
from fipgraph.storage.remote import RemotePath

DEFAULT_TTL = 30.0  # seconds a killed writer keeps others out; renewals every ttl / 3


def default_ttl() -> float:
    """The lease time: FIPGRAPH_LEASE_TTL (seconds) when set, e.g. for tests and CLI runs, else DEFAULT_TTL."""
    text = os.environ.get("FIPGRAPH_LEASE_TTL")
    try:
        return float(text) if text else DEFAULT_TTL
    except ValueError:
        raise ValueError(f"FIPGRAPH_LEASE_TTL={text!r} is not a number of seconds; e.g. 30") from None


class Lease:
    def __init__(self, path: RemotePath, ttl: float | None = None) -> None:
        ttl = default_ttl() if ttl is None else ttl
        if not (isinstance(ttl, (int, float)) and ttl > 0):
            raise ValueError(f"lease_ttl must be a positive number of seconds, got {ttl!r}")
        self.path, self.ttl = path, float(ttl)
        self.owner = uuid.uuid4().hex
        self.lost: str | None = None  # why this writer no longer holds the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "expires": time.time() + self.ttl}).encode()

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_bytes() or b"{}")
        except FileNotFoundError:
            return {}
        except ValueError:  # a damaged lease object: treat as expired
            return {"expires": 0}

    def _create(self) -> bool:
        """Create the lease object if absent; False when it exists."""
        try:
            if hasattr(self.path.fs, "call_s3"):
                self.path.fs.pipe_file(self.path.path, self._body(), mode="create")
            elif self.path.exists():  # other filesystems: check, then write (not atomic across machines)
                return False
            else:
                self.path.write_bytes(self._body())
            return True
        except (FileExistsError, OSError) as exc:
            if "pre-condition" in str(exc).lower() or "precondition" in str(exc).lower() or isinstance(exc, FileExistsError):
                return False
            raise

    def acquire(self) -> "Lease":
        if not self._create():
            held = self.holder()
            left = float(held.get("expires", 0)) - time.time()
            if left > 0:
                raise WriterLockedError(
                    f"store {self.path.parent} is already open for writing by pid {held.get('pid', '?')} on "
                    f"{held.get('host', '?')} (since {held.get('since', '?')}; its lease expires in {left:.0f} s unless "
                    "renewed). Only one writer at a time: wait for it to finish (a killed writer's lease expires by "
                    "itself), or open the store with mode='r' to read while it writes.")
            self.path.unlink(missing_ok=True)  # expired: its writer died without releasing it
            if not self._create():
                raise WriterLockedError(f"store {self.path.parent}: another writer took over the expired lease just "
                                        "now; only one writer at a time")
        self._thread = threading.Thread(target=self._renew_loop, name="fipgraph-lease", daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception:  # a network hiccup: the next renewal tries again, within the ttl
                pass

    def renew(self) -> None:
        held = self.holder()
        if held.get("owner") != self.owner:
            self.lost = (f"the lease of store {self.path.parent} was taken over by pid {held.get('pid', '?')} on "
                         f"{held.get('host', '?')} (this writer did not renew it within {self.ttl:.0f} s)")
            self._stop.set()
            return
        self.path.write_bytes(self._body())

    def check(self) -> None:
        """Raise when this writer lost its lease: nothing more may be published."""
        if self.lost is not None:
            raise WriterLockedError(self.lost + "; nothing more was published. Reopen the store to continue.")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.lost is None and self.holder().get("owner") == self.owner:
            self.path.unlink(missing_ok=True)
