"""A judge profile: the prompt, its few-shot examples, the five labels and the calibration.

The prompt is split into a prefix shared by every row (instructions and examples, computed
once and kept in the KV cache) and a suffix holding the transcript, which is all a row costs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    score: int = Field(ge=1, le=5)


class Calibration(BaseModel):
    """A monotone map from the expected score (sum k*pk) to the 1..5 scale.

    Stored as knots of a piecewise-linear, non-decreasing function; fitted by isotonic
    regression of dev-set labels on the judge's expected score (`benchmarks/calibrate_judge.py`).
    """

    model_config = ConfigDict(extra="forbid")
    method: str = "isotonic"
    x: list[float]
    y: list[float]
    fitted_on: str = Field(description="What the map was fitted on, and how.")
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _monotone(self) -> "Calibration":
        if len(self.x) != len(self.y) or len(self.x) < 2:
            raise ValueError("calibration needs matching x and y knots, at least two")
        if np.any(np.diff(self.x) < 0) or np.any(np.diff(self.y) < 0):
            raise ValueError("calibration knots must be non-decreasing")
        return self

    def apply(self, mean: float) -> float:
        return float(np.interp(mean, self.x, self.y))


class JudgeProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    model: str = Field(description="Default model for this profile: `embedded:...`, a path or a hub id.")
    style: Literal["completion", "chat"] = Field(
        "completion", description="`completion`: one plain text prompt (small models follow "
        "few-shot patterns better than chat turns). `chat`: system + few-shot turns through the "
        "model's chat template.",
    )
    instructions: str = Field(description="The header (completion) or system message (chat).")
    item_template: str = Field("Text: {text}\nScore: ", description="One example or query; `{text}` is the transcript.")
    separator: str = "\n\n"
    examples: list[Example] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=lambda: ["1", "2", "3", "4", "5"])
    max_text_chars: int = Field(4000, description="Longer transcripts are cut to this many characters first.")
    calibration: Optional[Calibration] = None

    @model_validator(mode="after")
    def _check(self) -> "JudgeProfile":
        if self.item_template.count("{text}") != 1:
            raise ValueError("item_template must contain {text} exactly once")
        if len(self.labels) != 5:
            raise ValueError("a judge profile has exactly five labels (scores 1..5)")
        return self

    # ---- scoring ---------------------------------------------------------------------------
    def score(self, mean: float, probs: np.ndarray) -> int:
        """The answer on the 1..5 scale: the calibrated score's integer part (so `edu_score >= k`
        means exactly "calibrated score at least k"), else the argmax."""
        if self.calibration is not None:
            return int(np.clip(np.floor(self.calibration.apply(mean) + 1e-9), 1, 5))
        return int(np.argmax(probs)) + 1

    # ---- completion style ------------------------------------------------------------------
    def _item_parts(self) -> tuple[str, str, str]:
        before, after = self.item_template.split("{text}")
        stem = before.rstrip(" ")
        return stem, before[len(stem):], after

    def prefix(self) -> str:
        """Everything before the transcript: identical for every row (the KV-cached part).
        Trailing spaces move to the suffix so the transcript's first word tokenizes as it
        did inside the examples (" word", not " " + "word")."""
        stem, _, _ = self._item_parts()
        shots = "".join(self.item_template.format(text=e.text) + self.labels[e.score - 1] + self.separator
                        for e in self.examples)
        return self.instructions + self.separator + shots + stem

    def suffix(self, text: str) -> str:
        _, space, after = self._item_parts()
        return space + self.clean(text) + after

    def clean(self, text: str) -> str:
        return " ".join((text or "").split())[: self.max_text_chars]

    # ---- chat style ------------------------------------------------------------------------
    def messages(self, text: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.instructions}]
        for e in self.examples:
            msgs.append({"role": "user", "content": self.item_template.format(text=e.text).rstrip()})
            msgs.append({"role": "assistant", "content": self.labels[e.score - 1]})
        msgs.append({"role": "user", "content": self.item_template.format(text=self.clean(text)).rstrip()})
        return msgs


def load_judge_profile(name_or_path: str) -> JudgeProfile:
    """A profile shipped in `audiocurate/judge/profiles/` by name, or a YAML file by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        data = yaml.safe_load(p.read_text())
    else:
        ref = resources.files("audiocurate.judge") / "profiles" / f"{name_or_path}.yaml"
        if not ref.is_file():
            known = sorted(x.name[:-5] for x in (resources.files("audiocurate.judge") / "profiles").iterdir()
                           if x.name.endswith(".yaml"))
            raise ValueError(f"unknown judge profile {name_or_path!r}; shipped: {', '.join(known)}")
        data = yaml.safe_load(ref.read_text())
    return JudgeProfile.model_validate(data)
