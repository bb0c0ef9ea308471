"""Engines that really fail, for the probe and crash-report tests: each factory is called in a
fresh process exactly as a real engine's would be (`probe.ProbeSpec.factory`); and a judge whose
engine fails for a while (`FlakyJudge`), for the engine-fault tests."""

from __future__ import annotations

import os
import signal
import time

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


class OutOfMemoryError(RuntimeError):
    """Named as torch's (`torch.OutOfMemoryError`), which the fault rule knows by class name."""


class FlakyJudge:
    """A judge whose engine fails the first `failures` calls across every process of a run
    (None: every call), as a GPU that runs out of memory or a server that restarts would:
    each failure takes a token file in `tokens`, so the count holds over actors and restarts."""

    model_name = "flaky-judge"

    def __init__(self, tokens: str, failures):
        self.tokens, self.failures = tokens, failures
        os.makedirs(tokens, exist_ok=True)
        with open(os.path.join(tokens, f"load-{os.getpid()}-{time.monotonic_ns()}"), "w"):
            pass

    def score_batch(self, texts, languages=None):
        from audiocurate.judge import JudgeScore

        if self._take_failure():
            raise OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({len(texts)} texts)")
        return [JudgeScore(4 if "e" in t else 2, 3.9 if "e" in t else 2.1, [0.0, 0.1, 0.1, 0.7, 0.1]) for t in texts]

    def _take_failure(self) -> bool:
        k = 0
        while self.failures is None or k < self.failures:
            try:
                os.close(os.open(os.path.join(self.tokens, f"failure-{k}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return True
            except FileExistsError:
                k += 1
        return False


def flaky_judge_stage(tokens: str, failures):
    """`stages.JudgeStage` with its engine replaced by a `FlakyJudge`, named as it is (Ray names
    actors by class name), for the planner's judge step in a real run."""
    from audiocurate.stages import JudgeStage

    return type("JudgeStage", (JudgeStage,), {"judge": _LoadedOnce(lambda stage: FlakyJudge(tokens, failures))})


class _LoadedOnce:
    """`functools.cached_property` without its lock, which a class pickled by value cannot carry:
    the value is kept in the instance's `__dict__`, where `ModelStage.reset_engine` drops it."""

    def __init__(self, load):
        self.load = load

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.load(obj)
        return value


class PickyJudge:
    """A judge (or server) that refuses some rows while `flag` exists: each such row fails alone
    with its own message, a row fault, recorded as an error row of the judge stage. Once the
    flag is gone it scores them: what `run --retry-errors` is for."""

    model_name = "picky-judge"

    def __init__(self, flag: str, marker: str):
        self.flag, self.marker = flag, marker

    def score_batch(self, texts, languages=None):
        from audiocurate.judge import JudgeScore

        refused = [t for t in texts if self.marker in t]
        if refused and os.path.exists(self.flag):
            raise ValueError(f"the server refused {refused[0][:40]!r}")
        return [JudgeScore(4, 3.9, [0.0, 0.1, 0.1, 0.7, 0.1]) for _ in texts]


def picky_judge_stage(flag: str, marker: str):
    from audiocurate.stages import JudgeStage

    return type("JudgeStage", (JudgeStage,), {"judge": _LoadedOnce(lambda stage: PickyJudge(flag, marker))})
