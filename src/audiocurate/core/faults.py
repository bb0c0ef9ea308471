"""Engine faults against row faults: which failures of a model stage are the engine's (or the
machine's) and must never be written down as the rows' own.

A row fault is the row's: a corrupt clip, a transcript the model refuses. It becomes that row's
error row, and the run goes on. An engine fault is the engine's or the machine's: an
out-of-memory GPU, a broken CUDA context, a server that does not answer. Writing it as an error
row per row would lose every row of the batch for good (error rows count as finished, so a
resume never tries them again); instead the stage tries the batch again and, when the fault
stays, fails the block with `EngineFault`, which stops the run with the stage and engine named.
A rerun resumes the rows that were not written.

The rule (`ModelStage` applies it, `classify_failures` is its second half):

1. An exception of a declared fatal kind (`is_fatal`) is an engine fault wherever it is raised:
   by a whole batch or by a row alone.
2. Any other exception from a batch sends its rows through the engine one by one. When a batch
   of two rows or more fails row by row with the same exception (type and message) for every
   row, that is the engine, not the rows (rows that differ do not fail identically).
3. Otherwise every row that fails alone is that row's error row. A batch of one row that fails
   with an exception of no fatal kind is the ambiguous case: it is recorded as the row's error,
   in a stage whose errors are retryable (`Stage.retryable_errors`), so `--retry-errors` can
   give it another chance.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

# Exception classes, by name anywhere in the class's MRO, that say the engine or the machine
# failed: torch's `OutOfMemoryError` (torch.cuda.OutOfMemoryError), vLLM's `EngineDeadError`,
# aiohttp's `ClientConnectionError`/`ServerDisconnectedError`, our own `EngineCrashed`.
FATAL_CLASS_NAMES = frozenset({
    "OutOfMemoryError", "EngineDeadError", "EngineGenerateError", "ClientConnectionError",
    "ServerDisconnectedError", "EngineCrashed", "EngineFault",
})
# Built-in exception types that are never a row's fault (ConnectionRefusedError and the other
# connection errors are ConnectionErrors; socket.timeout is a TimeoutError).
FATAL_TYPES: tuple[type[BaseException], ...] = (MemoryError, ConnectionError, TimeoutError)
# Messages of engine and machine faults raised as plain RuntimeErrors (CTranslate2, PyTorch,
# CUDA libraries, engines whose background loop died).
FATAL_MESSAGE = re.compile(
    r"CUDA out of memory|out of memory|CUDA error|CUDA failed|CUBLAS_STATUS_|CUDNN_STATUS_|cuDNN error|"
    r"NCCL error|device-side assert|engine (?:has )?crashed|engine (?:is )?dead|engine died|broken engine|"
    r"engine context is broken",
    re.IGNORECASE,
)


class EngineFault(RuntimeError):
    """A model stage's engine failed a batch in a way no row caused, and kept failing after
    `ray.engine_fault_retries` tries. Its message is one line: `<stage>: <engine>: <what>`,
    and Ray's wrapping of it is turned back into that line by `engine_fault_message`."""

    def __init__(self, stage: str, engine: str, cause: str, tries: int):
        self.stage, self.engine, self.cause, self.tries = stage, engine, cause, tries
        super().__init__(f"{stage}: {engine}: the engine failed, not the rows ({cause}); "
                         f"{tries} {'try' if tries == 1 else 'tries'} (ray.engine_fault_retries), no row was "
                         "written as an error, so a rerun resumes them")

    def __reduce__(self) -> Any:  # Ray pickles it back to the driver: rebuild from the parts
        return type(self), (self.stage, self.engine, self.cause, self.tries)


def describe(e: BaseException) -> str:
    """`Type: message`, on one line, at most 300 characters."""
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def is_fatal(e: BaseException) -> bool:
    """Whether an exception is of a kind that is the engine's or the machine's (rule 1)."""
    if isinstance(e, FATAL_TYPES):
        return True
    if any(k.__name__ in FATAL_CLASS_NAMES for k in type(e).__mro__):
        return True
    return bool(FATAL_MESSAGE.search(str(e)))


def classify_failures(results: Sequence[Any]) -> Optional[str]:
    """Rules 1 and 2 on a batch's row-by-row results (each a result or the exception that row
    raised alone): the engine fault's description, or None when the failures are the rows'."""
    failures = [r for r in results if isinstance(r, BaseException)]
    for e in failures:
        if is_fatal(e):
            return describe(e)
    if len(results) >= 2 and len(failures) == len(results):
        kinds = {(type(e), str(e)) for e in failures}
        if len(kinds) == 1:
            return f"every one of {len(results)} rows failed alone with {describe(failures[0])}"
    return None


_FATAL_NAMES_IN_TEXT = re.compile(
    r"\b(?:%s|MemoryError|ConnectionError|ConnectionRefusedError|ConnectionResetError|TimeoutError|"
    r"ClientConnectorError)\b|Connection refused|Connection reset" % "|".join(sorted(FATAL_CLASS_NAMES)))


def classify_failure_texts(reasons: Sequence[Optional[str]]) -> Optional[str]:
    """Rules 1 and 2 for engines that hand back each row's failure as text (`ray.data.llm`'s
    processors with `should_continue_on_error`: a dead vLLM engine fails every row in turn).
    `reasons` has one entry per row sent, None where the row succeeded."""
    failures = [r for r in reasons if r]
    for r in failures:
        if FATAL_MESSAGE.search(r) or _FATAL_NAMES_IN_TEXT.search(r):
            return " ".join(r.split())[:300]
    if len(reasons) >= 2 and len(failures) == len(reasons) and len(set(failures)) == 1:
        return f"every one of {len(reasons)} rows failed the same way: {' '.join(failures[0].split())[:250]}"
    return None


_FAULT_LINE = re.compile(r"EngineFault: ([^\n]+)")


def engine_fault_message(text: str) -> Optional[str]:
    """The one line `<stage>: <engine>: ...` of an `EngineFault` in the text of a (Ray-wrapped)
    exception, or None when there is none. For `pipeline.explain_failure`."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    found = _FAULT_LINE.findall(text)
    # Ray repeats the cause in its wrapper's headline and in the traceback: any one will do.
    for line in found:
        line = line.strip()
        if re.match(r"^\w+: .+: the engine failed", line):
            return line
    return None
