"""Hugging Face transformers judge: any causal LM, one batched forward pass per batch."""

from __future__ import annotations

import os
from typing import Any, Literal, Optional, Sequence

from pydantic import Field

from ..core.settings import SPEED_ONLY, planned_device
from ..engines import Engine
from ..models import dtype_kwarg, resolve_model
from . import JudgeScore, score_from_logits
from .backends import JUDGE_BACKENDS, ActorJudge
from .profile import JudgeProfile
from .settings import JudgeSettings


class TransformersJudgeConfig(JudgeSettings):
    """`judge.backend: transformers`: any causal LM through Hugging Face transformers."""

    backend: Literal["transformers"] = "transformers"
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", json_schema_extra=SPEED_ONLY, description="Where the model runs; `auto`: a GPU when the stage "
        "reserves one (`judge.resources.num_gpus` > 0), else the CPU. Speed only: the precision it implies "
        "(`dtype: auto`) is part of the resume fingerprint, resolved.")
    dtype: str = Field("auto", description="Weights dtype (`auto`: float16 on GPU, float32 on CPU; `float16`, "
                       "`bfloat16`, `float32`).")

    def resolved_device(self) -> str:
        """`device` with `auto` resolved (`core.settings.planned_device`)."""
        return planned_device(self.device, self.resources)

    def resolved_precision(self) -> str:
        """The dtype the judge computes in, `auto` resolved for the device (part of a result's identity)."""
        if self.dtype != "auto":
            return self.dtype
        return "float16" if self.resolved_device() == "cuda" else "float32"


@JUDGE_BACKENDS.register("transformers", config=TransformersJudgeConfig, engine=Engine(
    "transformers (PyTorch)", ("transformers", "torch"), False, "reinstall PyTorch's published wheel for this machine"))
class TransformersJudge(ActorJudge):
    """Left-padded batch, logits of the last position only, the five labels' softmax."""

    def __init__(self, config: TransformersJudgeConfig, profile: JudgeProfile):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.config = config
        self.profile = profile
        self.model_name = config.model or profile.model
        path = resolve_model(self.model_name)
        self.device = torch.device(config.resolved_device())
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float32": torch.float32}[config.resolved_precision()]
        load: dict[str, Any] = {}
        if path.endswith(".gguf"):  # a GGUF checkpoint, dequantized by transformers
            path, load["gguf_file"] = os.path.split(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path, **load)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, **dtype_kwarg(dtype), **load).to(self.device).eval()
        self.use_chat = profile.style == "chat" and bool(getattr(self.tokenizer, "chat_template", None))
        self.label_ids = [self._label_id(label) for label in profile.labels]
        limit = getattr(self.model.config, "max_position_embeddings", None) or config.n_ctx
        self.max_tokens = min(config.n_ctx, int(limit))

    def _label_id(self, label: str) -> int:
        ids = self.tokenizer.encode(label, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"label {label!r} is {len(ids)} tokens for {self.model_name}; labels must be one token")
        return ids[0]

    def prompt(self, text: str, language: Optional[str] = None) -> str:
        if self.use_chat:
            return self.tokenizer.apply_chat_template(self.profile.messages(text, language), tokenize=False,
                                                      add_generation_prompt=True)
        return self.profile.prefix() + self.profile.suffix(text, language)

    def score_batch(self, texts: Sequence[str], languages: Optional[Sequence[Optional[str]]] = None) -> list[JudgeScore]:
        langs = list(languages) if languages is not None else [None] * len(texts)
        prompts = [self.prompt(text, lang) for text, lang in zip(texts, langs)]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False).input_ids]
        truncated = [False] * len(texts)
        errors: dict[int, str] = {}
        for i, n in enumerate(lengths):
            if n > self.max_tokens:  # only over-long rows are tokenized again
                prompts[i], truncated[i], err = self._fit_long(texts[i], n, langs[i])
                if err:
                    errors[i] = err
        torch = self.torch
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not self.use_chat).to(self.device)
        with torch.inference_mode():
            logits = _last_logits(self.model, enc)
        label_logits = logits[:, self.label_ids].float().cpu().numpy()
        return [JudgeScore.failed(errors[i]) if i in errors else
                score_from_logits(label_logits[i], self.profile, truncated[i], len(self.profile.clean(texts[i])))
                for i in range(len(texts))]

    def _fit_long(self, text: str, n: int, language: Optional[str] = None) -> tuple[str, bool, str | None]:
        """(prompt, truncated, error) for a prompt of `n` tokens over the context: cut at the
        transcript's end when allowed, else an error (and a short stand-in prompt)."""
        if self.config.long_text == "error":
            return self.prompt("", language), False, (f"transcript makes a {n}-token prompt, the judge's context has room for "
                                            f"{self.max_tokens}; set judge.long_text=truncate to score its head")
        words = (text or "").split()
        keep = max(1, int(len(words) * self.max_tokens / n * 0.9))
        while keep > 1:
            p = self.prompt(" ".join(words[:keep]), language)
            if len(self.tokenizer(p, add_special_tokens=False).input_ids) <= self.max_tokens:
                return p, True, None
            keep = int(keep * 0.8)
        return self.prompt(" ".join(words[:1]), language), True, None


def _last_logits(model: Any, enc: Any) -> Any:
    """Logits of the last position only: the full (batch, length, vocabulary) tensor is large."""
    for kw in ("logits_to_keep", "num_logits_to_keep"):
        try:
            return model(**enc, **{kw: 1}).logits[:, -1, :]
        except TypeError:
            continue
    return model(**enc).logits[:, -1, :]

