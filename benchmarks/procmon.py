"""Run a command and sample the resident memory of it and everything it starts (psutil).

RSS counts a page of Ray's object store in every process that maps it, so the sum of RSS over
processes counts a block once per process that read or wrote it. PSS shares such pages among
the processes mapping them (their sum is the memory really in use), and USS is what a process
holds alone: both are sampled too (`with_private`: slower, they read /proc/<pid>/smaps)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class MemoryPeaks:
    driver_peak_mb: float = 0.0
    tree_peak_mb: float = 0.0
    by_name_peak_mb: dict[str, float] = field(default_factory=dict)
    tree_peak_pss_mb: float = 0.0
    by_name_peak_uss_mb: dict[str, float] = field(default_factory=dict)
    # At the whole run's PSS peak: how many processes there were, and PSS summed by name.
    processes_at_pss_peak: int = 0
    pss_by_name_at_peak_mb: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    killed: str = ""  # why the run was killed ("memory cap", "time limit"), or empty
    driver_timeline: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)


def _ray_processes(started_after: float = 0.0, besides: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """Processes of a local Ray the command started (they are re-parented, not children):
    those created after `started_after` and not in `besides` (Ray processes already running)."""
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        if p.pid in besides or (p.info["create_time"] or 0.0) < started_after:
            continue
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::") or any(k in cmd for k in ("raylet", "gcs_server", "ray/dashboard", "log_monitor",
                                                                  "ray/_private/", "ray/autoscaler")):
            found.append(p)
    return found


def run_and_measure(cmd: list[str], *, env: dict | None = None, interval: float = 0.25,
                    kill_after: float | None = None, with_private: bool = False,
                    kill_above_mb: float | None = None) -> tuple[int, MemoryPeaks, float]:
    """(exit code, memory peaks in MB, wall seconds); `kill_after` seconds or `kill_above_mb` of
    RSS over all the processes SIGKILL the whole group (and the Ray processes it started)."""
    peaks = MemoryPeaks()
    t0 = time.time()
    already = frozenset(p.pid for p in _ray_processes())
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = {p.pid: p for p in [me, *me.children(recursive=True), *_ray_processes(t0 - 1, already)]}
                total = pss = 0.0
                by_name: dict[str, float] = {}
                for p in procs.values():
                    try:
                        full = p.memory_full_info() if with_private else p.memory_info()
                        name = " ".join(p.cmdline()[:1])[:60] if p.pid != proc.pid else "driver"
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    rss = full.rss / 2**20
                    total += rss
                    peaks.by_name_peak_mb[name] = max(peaks.by_name_peak_mb.get(name, 0.0), rss)
                    if with_private:
                        pss += full.pss / 2**20
                        by_name[name] = by_name.get(name, 0.0) + full.pss / 2**20
                        peaks.by_name_peak_uss_mb[name] = max(peaks.by_name_peak_uss_mb.get(name, 0.0),
                                                              full.uss / 2**20)
                if pss > peaks.tree_peak_pss_mb:
                    peaks.tree_peak_pss_mb = pss
                    peaks.processes_at_pss_peak = len(procs)
                    peaks.pss_by_name_at_peak_mb = by_name
                driver_mb = me.memory_info().rss / 2**20
                peaks.driver_peak_mb = max(peaks.driver_peak_mb, driver_mb)
                peaks.driver_timeline.append((time.time() - t0, driver_mb))
                peaks.tree_peak_mb = max(peaks.tree_peak_mb, total)
                peaks.samples += 1
                if kill_above_mb is not None and total > kill_above_mb:
                    peaks.killed = f"over {kill_above_mb:g} MB"
                    _kill(proc.pid, procs.values())
                    return
            except psutil.NoSuchProcess:
                return
            stop.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        peaks.killed = peaks.killed or f"after {kill_after:g} s"
        _kill(proc.pid, _ray_processes(t0 - 1, already))
        proc.wait()
    stop.set()
    th.join(5)
    return proc.returncode, peaks, time.time() - t0


def _kill(group: int, processes) -> None:
    """SIGKILL the command's process group and the Ray processes it started (re-parented)."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in processes:
        try:
            p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


class CpuByRole:
    """CPU seconds of this process and of the local Ray's processes while it runs, by role:
    Whisper actors, judge actors, task workers (read, decode, select, write), Ray's daemons.

    A background thread samples each process's cumulative CPU time and its name (Ray names a
    worker after what it runs: `ray::MapWorker(MapBatches(TranscribeStage))`)."""

    ROLES = (("TranscribeStage", "whisper actors"), ("JudgeStage", "judge actors"), ("ray::", "task workers"))

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.last: dict[int, tuple[str, float]] = {}
        self.driver0 = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _role(self, cmd: str) -> str:
        for key, role in self.ROLES:
            if key in cmd:
                return role
        return "ray daemons"

    def _run(self) -> None:
        while not self.stop.is_set():
            for p in _ray_processes():
                try:
                    t = p.cpu_times()
                    cmd = " ".join(p.cmdline())
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                role = self._role(cmd)
                previous = self.last.get(p.pid, (role, 0.0))[0]
                # A task worker that became an actor keeps the actor's role.
                keep = previous if previous in ("whisper actors", "judge actors") else role
                self.last[p.pid] = (keep, t.user + t.system)
            self.stop.wait(self.interval)

    def __enter__(self) -> "CpuByRole":
        t = psutil.Process().cpu_times()
        self.driver0 = t.user + t.system
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        t = psutil.Process().cpu_times()
        self.driver_s = t.user + t.system - self.driver0

    def seconds(self) -> dict[str, float]:
        out: dict[str, float] = {"driver": round(self.driver_s, 2)}
        for role, cpu in self.last.values():
            out[role] = round(out.get(role, 0.0) + cpu, 2)
        return out
