"""vLLM's engine, stood in for by llama.cpp inside Ray's own vLLM stage (no GPU, no vLLM here).

Only the engine is replaced: Ray's `vLLMEngineStageUDF` keeps its batching, its per-row error
handling (`should_continue_on_error`) and its output rows (`vLLMOutputData`); around it run
Ray's real tokenize stage and our request and result functions. The engine answers a request
as vLLM does for the judge's: one greedy token within `structured_outputs.choice`, the first
token's top `logprobs` as {token_id: {logprob, rank, decoded_token}}, and a ValueError for a
prompt longer than `max_model_len`.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
from ray.llm._internal.batch.stages.base import StatefulStageUDF
from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMEngineStageUDF, vLLMOutputData

from audiocurate.config import LlamaCppJudgeConfig
from audiocurate.judge.llama_cpp import weights_file
from audiocurate.models import resolve_model


# A file each request's row id is appended to (set before the processor is built: the module
# is pickled by value, with the value it has then), so a test can count what reached the engine.
REQUEST_LOG = None


class LlamaCppEngine:
    def __init__(self, gguf: str, max_model_len: int):
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=max_model_len, n_threads=1, logits_all=False, verbose=False)
        self.max_model_len = max_model_len
        self.lock = asyncio.Lock()
        self.requests = 0
        self.label_tokens: dict[str, int] = {}

    async def generate_async(self, row: dict[str, Any]) -> tuple[Any, dict[str, Any], float]:
        params = row["sampling_params"]
        if REQUEST_LOG:
            with open(REQUEST_LOG, "a") as log:
                log.write(f"{row.get('id')}\n")
        ids = row.get("tokenized_prompt")
        ids = [int(i) for i in ids] if ids is not None else self.llm.tokenize(row["prompt"].encode(), add_bos=True)
        if len(ids) + params["max_tokens"] > self.max_model_len:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model "
                             f"length of {self.max_model_len}.")
        self.requests += 1
        request = SimpleNamespace(request_id=self.requests, idx_in_batch=row[StatefulStageUDF.IDX_IN_BATCH_COLUMN],
                                  params=params)
        async with self.lock:
            t0 = time.perf_counter()
            self.llm.reset()
            self.llm.eval(ids)
            ptr = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
            n_vocab = self.llm.n_vocab()
            logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)).copy()
        logprobs = logits - np.logaddexp.reduce(logits.astype(np.float64))
        choice_ids = [self._token(c) for c in params["structured_outputs"]["choice"]]
        chosen = choice_ids[int(np.argmax(logprobs[choice_ids]))]
        top = np.argsort(-logprobs)[: params["logprobs"]]
        entry = {int(t): {"logprob": float(logprobs[t]), "rank": r + 1,
                          "decoded_token": self.llm.detokenize([int(t)]).decode(errors="replace")}
                 for r, t in enumerate(top)}
        out = vLLMOutputData(prompt=row.get("prompt", ""), prompt_token_ids=ids, num_input_tokens=len(ids),
                             generated_tokens=[int(chosen)], generated_text=self.llm.detokenize([chosen]).decode(),
                             num_generated_tokens=1, logprobs=[entry])
        return request, out.model_dump(), time.perf_counter() - t0

    def _token(self, label: str) -> int:
        # A dict, not functools.lru_cache: the module is pickled by value, and an lru_cache
        # wrapper is pickled by reference, which Ray's workers cannot import.
        if label not in self.label_tokens:
            self.label_tokens[label] = self.llm.tokenize(label.encode(), add_bos=False)[0]
        return self.label_tokens[label]

    def shutdown(self) -> None:
        pass


class LlamaCppVllmStageUDF(vLLMEngineStageUDF):
    """Ray's vLLM stage UDF with `self.llm` (vLLM's engine wrapper) replaced."""

    def __init__(self, data_column: str, expected_input_keys: list[str], batch_size: int,
                 max_concurrent_batches: int, model: str, engine_kwargs: dict[str, Any],
                 should_continue_on_error: bool = False, **_: Any):
        StatefulStageUDF.__init__(self, data_column, expected_input_keys)
        self.model = model
        self.should_continue_on_error = should_continue_on_error
        self.engine_kwargs = {**engine_kwargs, "disable_log_stats": True}
        # the weights the llama.cpp judge computes with, so the two judges' scores are comparable
        gguf = weights_file(resolve_model("embedded:smollm2-135m"), LlamaCppJudgeConfig().weights)
        self.llm = LlamaCppEngine(gguf, engine_kwargs["max_model_len"])
