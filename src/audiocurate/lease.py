"""One writer per OUTPUT: a lease that a run (or `compact`, `export`, `report`, `verify --repair`)
holds while it works on an output, on a local disk and on object storage alike.

`_state/lease.json` names its holder (host, pid, start time, command) and when it was last
renewed; the holder renews it from a background thread every `ttl_s / 4`. Another process that
finds a live lease refuses at once, naming the holder. A lease is stale, and is taken over,
when its holder's process is gone (same host: the pid no longer runs) or it was not renewed
for `ttl_s` (any host: a crashed run on another machine blocks for at most that long).

Taking a lease is a compare-and-set made of plain writes, because pyarrow's filesystems offer
no conditional PUT: write our token, wait `settle_s`, read it back (Fischer's mutual exclusion:
of two processes that both saw the lease free, the one whose write landed last reads its own
token back, and the other sees it and backs off, provided each wrote within `settle_s` of its
read). On a local disk the first claim is an `O_EXCL` create instead, which is exact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator, Optional

from . import storage
from .run_state import LEASE, STATE_DIR

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 120.0
SETTLE_S = 0.5


# Leases this process holds now: one it recorded but failed to delete (storage down at release)
# is known to be dead, though its pid lives on.
_HELD: set[str] = set()


class OutputBusyError(RuntimeError):
    """Another live process holds OUTPUT's lease."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def _pid_namespace() -> Optional[int]:
    """Processes in two containers can share a host name, not a pid space."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def describe_holder(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (f"{holder.get('command', 'a run')} on host {holder.get('host')}, pid {holder.get('pid')}, "
            f"started {started}")


class OutputLease:
    """Held with `with OutputLease(out, "run"):`; raises `OutputBusyError` if another holds it."""

    def __init__(self, out: Any, command: str, *, ttl_s: float = DEFAULT_TTL_S, settle_s: float = SETTLE_S):
        self.out = out
        self.command = command
        self.ttl_s = ttl_s
        self.settle_s = settle_s
        self.token = uuid.uuid4().hex
        self.record = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                       "pid_namespace": _pid_namespace(), "started": time.time(), "command": command, "ttl_s": ttl_s}
        self._writing = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost: Optional[str] = None

    # ---- state on storage ----------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.out.path(LEASE)

    def holder(self) -> Optional[dict[str, Any]]:
        raw = self.out.read_bytes(self.path)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:  # unreadable (an older version's torn write): as old as the file says
            info = self.out.fs.get_file_info(self.path)
            renewed = info.mtime.timestamp() if info.mtime is not None else 0.0
            return {"token": None, "host": "?", "pid": -1, "renewed": renewed, "ttl_s": self.ttl_s,
                    "command": "an unreadable lease"}

    def is_stale(self, holder: dict[str, Any], now: Optional[float] = None) -> bool:
        now = time.time() if now is None else now
        if holder.get("host") == socket.gethostname() and holder.get("pid_namespace", _pid_namespace()) == _pid_namespace():
            pid = int(holder.get("pid", -1))
            if not _pid_alive(pid) or (pid == os.getpid() and holder.get("token") not in _HELD):
                return True
        return now - float(holder.get("renewed", holder.get("started", 0))) > float(holder.get("ttl_s", self.ttl_s))

    def _write(self) -> None:
        self.record["renewed"] = time.time()
        self.out.write_bytes(self.path, json.dumps(self.record).encode())

    # ---- acquire / renew / release --------------------------------------------------------
    def acquire(self) -> "OutputLease":
        holder = self.holder()
        if holder is not None and holder.get("token") != self.token and not self.is_stale(holder):
            raise OutputBusyError(f"{self.out.uri} is in use by {describe_holder(holder)}; "
                                  "wait for it to finish (or stop it), then run this again")
        if holder is None and storage.is_local(self.out.fs):
            self._create_exclusive()
        elif holder is not None and holder.get("token") is None and storage.is_local(self.out.fs):
            log.warning("replacing %s's stale, unreadable lease", self.out.uri)
            self.out.fs.delete_file(self.path)
            self._create_exclusive()
        else:
            if holder is not None:
                log.warning("taking over the stale lease of %s", describe_holder(holder))
            self._write()
            time.sleep(self.settle_s)
        now = self.holder()
        if not now or now.get("token") != self.token:
            raise OutputBusyError(f"{self.out.uri} was claimed at the same moment by "
                                  f"{describe_holder(now or {})}; run this again once it has finished")
        _HELD.add(self.token)
        self._thread = threading.Thread(target=self._renew_loop, name="audiocurate-lease", daemon=True)
        self._thread.start()
        return self

    def _create_exclusive(self) -> None:
        self.out.fs.create_dir(self.out.path(STATE_DIR), recursive=True)
        self.record["renewed"] = time.time()
        # Written whole beside it, then linked into place: `link` fails if the name is taken,
        # and the lease never exists without its content (a kill leaves only the temporary file).
        tmp = f"{self.path}.{self.token}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.record, f)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            holder = self.holder() or {}
            raise OutputBusyError(f"{self.out.uri} is in use by {describe_holder(holder)}; "
                                  "wait for it to finish (or stop it), then run this again") from None
        finally:
            os.unlink(tmp)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                holder = self.holder()
                if holder is not None and holder.get("token") != self.token:
                    self.lost = f"the lease was taken over by {describe_holder(holder)}"
                    log.error("%s: %s", self.out.uri, self.lost)
                    return
                with self._writing:
                    if self._stop.is_set():
                        return
                    self._write()
            except OSError as e:  # a passing storage fault: the next renewal tries again
                log.warning("could not renew the lease on %s: %s", self.out.uri, e)

    def release(self) -> None:
        _HELD.discard(self.token)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._writing, contextlib.suppress(OSError):  # no renewal lands after the delete
            holder = self.holder()
            if holder is not None and holder.get("token") == self.token:
                self.out.fs.delete_file(self.path)

    def check(self) -> None:
        """Raise if another process took this lease over (a stall longer than `ttl_s`, a race on
        object storage): a writer that lost it must not mark the output complete."""
        holder = self.lost or None
        if holder is None:
            now = self.holder()
            if now is not None and now.get("token") != self.token:
                holder = f"the lease was taken over by {describe_holder(now)}"
        if holder:
            raise OutputBusyError(f"{self.out.uri}: {holder}; this process stops writing it")

    def __enter__(self) -> "OutputLease":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextlib.contextmanager
def holding(out: Any, command: str, ttl_s: float = DEFAULT_TTL_S) -> Iterator[OutputLease]:
    """The lease on `out` for the duration of the block."""
    lease = OutputLease(out, command, ttl_s=ttl_s)
    with lease:
        yield lease
