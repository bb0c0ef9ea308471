"""The engines behind the model stages: what they are called, which installed versions make a
result, and what it means when one dies from a signal.

A native engine built for another CPU dies the moment it runs (SIGILL). Inside a Ray actor
that reads as a worker lost "possibly to the OOM killer", three restarts later. Here the death
is named: the stage and engine, the signal, what it usually means and what to do.
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .config import PipelineConfig


@dataclass(frozen=True)
class Engine:
    """One engine a stage backend runs on."""

    name: str  # as users know it: "llama.cpp", "faster-whisper (CTranslate2)"
    distributions: tuple[str, ...]  # installed packages whose versions change results
    native: bool  # a compiled library that can meet a CPU it was not built for
    reinstall: str  # what to do when its build does not fit this machine


# Versions that change how audio becomes the 16 kHz samples every engine sees.
DECODE_DISTRIBUTIONS = ("soxr",)


def engine_of(stage: str, backend: str) -> Engine:
    """The engine `backend` of section `stage` (`asr`, `judge`) registered with."""
    from .asr import ASR_BACKENDS
    from .judge.backends import JUDGE_BACKENDS

    registry = {"asr": ASR_BACKENDS, "judge": JUDGE_BACKENDS}[stage]
    engine = registry.entry(backend).engine
    if engine is None:
        raise KeyError(f"{registry.kind} {backend!r} was registered without its engine (`engine=Engine(...)`)")
    return engine


def engine_versions(config: "PipelineConfig") -> dict[str, Optional[str]]:
    """Installed versions of everything that changes a row's result under this configuration
    (part of the resume fingerprint and of report.json). None: not installed here."""
    names = [*DECODE_DISTRIBUTIONS, *engine_of("asr", config.asr.backend).distributions,
             *engine_of("judge", config.judge.backend).distributions]
    return {name: installed_version(name) for name in dict.fromkeys(names)}


def installed_version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


SIGNAL_MEANINGS = {
    signal.SIGILL: "illegal instruction",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating-point exception",
    signal.SIGABRT: "aborted",
    signal.SIGKILL: "killed",
}

# What each signal usually means for a model engine, and the first thing to try.
SIGNAL_CAUSES = {
    signal.SIGILL: "a native build that uses CPU instructions this machine does not allow (a build "
                   "made with -march=native on another CPU, or AMX/AVX-512 code paths on a VM that "
                   "advertises them without allowing them)",
    signal.SIGSEGV: "a crash inside the engine: a model file it cannot read, or a build that does not "
                    "match this machine",
    signal.SIGBUS: "a memory-mapped model file that changed or shrank while in use, or a full /dev/shm",
    signal.SIGFPE: "an arithmetic fault inside the engine's native code",
    signal.SIGABRT: "the engine stopped on one of its own checks (its message is in the worker's log)",
    signal.SIGKILL: "the process was killed from outside, most often by a memory limit",
}


def describe_signal(signum: int) -> str:
    """`SIGILL: illegal instruction`."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
    return f"{name}: {SIGNAL_MEANINGS.get(signum, signal.strsignal(signum) or 'signal')}"


class EngineCrashed(RuntimeError):
    """A model engine's process died from a signal: the message names stage, engine, signal,
    the usual cause and what to do (its first line says all of it)."""

    @classmethod
    def of(cls, stage: str, backend: str, signum: int, *, where: str, detail: str = "") -> "EngineCrashed":
        engine = engine_of(stage, backend)
        version = installed_version(engine.distributions[0]) if engine.distributions else None
        todo = engine.reinstall.replace("VERSION", version or "VERSION")
        cause = SIGNAL_CAUSES.get(signum, "a crash inside the engine's native code")
        message = (f"{stage}: {engine.name} died with {describe_signal(signum)} {where}. "
                   f"This usually means {cause}. What to do: {todo}.")
        return cls(f"{message}\n{detail}" if detail else message)


# faulthandler's first line for each fatal signal it catches.
_FAULTHANDLER_NAMES = {
    "Illegal instruction": signal.SIGILL,
    "Segmentation fault": signal.SIGSEGV,
    "Bus error": signal.SIGBUS,
    "Floating-point exception": signal.SIGFPE,
    "Floating point exception": signal.SIGFPE,
    "Aborted": signal.SIGABRT,
}


class CrashWitness:
    """Lets a restarted Ray actor learn how its previous process died.

    Ray restarts a dead actor under the same actor id but says nothing of the signal. The
    actor's process records fatal signals (faulthandler) in a file named by the actor id;
    the restarted process finds that record and raises `EngineCrashed` instead of loading the
    engine again, so the run stops after one crash with the signal named. An actor whose process
    exits cleanly removes its empty record; one killed outright leaves it empty (0 bytes, in the
    temp folder). Records older than `STALE_AFTER_S` go when the next actor arms: a crash's record
    is read by the restart seconds after it, and an empty one of a live actor must stay."""

    STALE_AFTER_S = 7 * 24 * 3600

    def __init__(self, stage: str, backend: str, directory: Optional[str] = None):
        self.stage, self.backend = stage, backend
        self.directory = Path(directory or os.path.join(tempfile.gettempdir(), "audiocurate-crashes"))
        self.path: Optional[Path] = None
        self._file: Any = None

    def arm(self) -> None:
        """Call first thing in an actor's `__init__`."""
        actor_id = _current_actor_id()
        if actor_id is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{actor_id}.txt"
        if self.path.exists():
            record = self.path.read_text(errors="replace")
            signum = _signal_in(record)
            if signum is not None:
                frames = "\n".join(record.strip().splitlines()[:12])
                self.path.unlink(missing_ok=True)
                raise EngineCrashed.of(self.stage, self.backend, signum, where=f"in its Ray actor on {socket.gethostname()}",
                                    detail=f"The engine's last Python frames:\n{frames}")
        self._prune_stale()
        self._file = open(self.path, "w")
        faulthandler.enable(file=self._file, all_threads=False)
        atexit.register(self._disarm)

    def _disarm(self) -> None:
        """At a clean exit: nothing was recorded, so nothing needs to stay."""
        if self._file is None or self.path is None:
            return
        faulthandler.disable()
        self._file.close()
        self._file = None
        try:
            if self.path.stat().st_size == 0:
                self.path.unlink()
        except OSError:
            pass

    def _prune_stale(self) -> None:
        """Records of actors killed outright (Ray Data's forced release, a stopped cluster) and of
        crashes no restart came to read."""
        cutoff = time.time() - self.STALE_AFTER_S
        try:
            for record in self.directory.glob("*.txt"):
                if record.stat().st_mtime < cutoff:
                    record.unlink(missing_ok=True)
        except OSError:  # another actor pruned it first, or the folder is not ours to tidy
            pass


def _signal_in(record: str) -> Optional[int]:
    for text, signum in _FAULTHANDLER_NAMES.items():
        if f"Fatal Python error: {text}" in record:
            return signum
    return None


def _current_actor_id() -> Optional[str]:
    try:
        import ray

        if not ray.is_initialized():
            return None
        return ray.get_runtime_context().get_actor_id()
    except Exception:  # not in a Ray worker
        return None
