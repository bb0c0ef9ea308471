"""Engines that really fail, for the probe and crash-report tests: each factory is called in a
fresh process exactly as a real engine's would be (`probe.ProbeSpec.factory`)."""

from __future__ import annotations

import os
import signal

from audiocurate.engines import CrashWitness


def die_with_sigill(config):
    """What a native build for another CPU does: the process gets SIGILL while loading."""
    os.kill(os.getpid(), signal.SIGILL)


def die_with_sigsegv(config):
    os.kill(os.getpid(), signal.SIGSEGV)


def raise_on_load(config):
    raise FileNotFoundError(f"no model at {config.model!r}")


def raise_unless_worker_environment(config):
    """The real judge, where `ray.env_vars` reached the process as they reach Ray's workers."""
    if os.environ.get("AUDIOCURATE_TEST_WORKER_VAR") != "set":
        raise RuntimeError("the probe ran without the workers' environment")
    from audiocurate.judge import make_judge

    return make_judge(config)


class JudgeStageDyingOnFirstBatch:
    """A model stage whose engine dies from SIGILL on its first batch, in a real Ray actor,
    armed as `stages.JudgeStage` is."""

    def __init__(self):
        self.crash_witness = CrashWitness("judge", "llama_cpp")
        self.crash_witness.arm()

    def __call__(self, batch):
        os.kill(os.getpid(), signal.SIGILL)
        return batch


class JudgeStage:
    """Stands in for `stages.JudgeStage` (Ray names actors by class name): its process exits
    on every batch without a signal, as one ended from outside would."""

    def __init__(self):
        self.crash_witness = CrashWitness("judge", "llama_cpp")
        self.crash_witness.arm()

    def __call__(self, batch):
        os._exit(3)
