"""The terminal keeps what needs action: Ray's native log lines that never do are held back.

Ray Data starts every actor with its constructor arguments in the object store, and Ray's
C++ core logs an ERROR for each such actor that may restart ("has constructor arguments in
the object store and max_restarts > 0"): it warns that a restart would fail if those objects
were lost. Ray Data keeps them alive for the whole run, so it needs no action, yet it printed
on every normal run. Native code writes to file descriptor 2 directly, so the filter sits
there; everything else goes through unchanged, and partial lines (progress bars) at once.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

# Native log lines that need no action, held back from the terminal.
HARMLESS = (
    re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store "
               rb"and max_restarts > 0"),
)


@contextmanager
def harmless_native_lines_held_back() -> Iterator[list[bytes]]:
    """Within the block, lines of fd 2 matching `HARMLESS` are dropped (and collected in the
    yielded list); the rest reach the terminal as they come."""
    held: list[bytes] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # no real fd 2 (some notebooks): nothing to filter
        yield held
        return
    os.dup2(write_end, 2)
    os.close(write_end)
    pump = threading.Thread(target=_pump, args=(read_end, saved, held), daemon=True, name="audiocurate-stderr")
    pump.start()
    try:
        yield held
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer here is gone; children may still hold it
        pump.join(timeout=2.0)


def _pump(read_end: int, out: int, held: list[bytes]) -> None:
    pending = b""
    while True:
        try:
            data = os.read(read_end, 65536)
        except OSError:
            break
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if any(p.search(line) for p in HARMLESS):
                held.append(line)
            else:
                _write(out, line + b"\n")
        if pending and not pending.startswith(b"["):  # not a native log line: show it now
            _write(out, pending)
            pending = b""
    if pending:
        _write(out, pending)
    os.close(read_end)


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass
