"""A judge profile: the prompt, its few-shot examples, the five labels and the calibration.

The prompt is split into a prefix shared by every row (instructions and examples, computed
once and kept in the KV cache) and a suffix holding the transcript, which is all a row costs.
"""

from __future__ import annotations

import hashlib
import json
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
    language: Optional[str] = Field(None, description="The example's language (a name or a code), shown "
                                    "with the profile's `language_line`.")


# Names for the language codes Whisper writes (`language` column); other values are shown as they are.
LANGUAGE_NAMES = {
    "en": "English", "de": "German", "es": "Spanish", "fr": "French", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "pl": "Polish", "ru": "Russian", "uk": "Ukrainian", "cs": "Czech", "sv": "Swedish",
    "da": "Danish", "no": "Norwegian", "fi": "Finnish", "tr": "Turkish", "el": "Greek", "hu": "Hungarian",
    "ro": "Romanian", "ca": "Catalan", "eu": "Basque", "gl": "Galician", "cy": "Welsh", "ga": "Irish",
    "ar": "Arabic", "fa": "Persian", "he": "Hebrew", "hi": "Hindi", "bn": "Bengali", "ta": "Tamil",
    "ja": "Japanese", "ko": "Korean", "zh": "Chinese", "th": "Thai", "vi": "Vietnamese", "id": "Indonesian",
    "sw": "Swahili", "eo": "Esperanto", "bg": "Bulgarian", "hr": "Croatian", "sr": "Serbian", "sk": "Slovak",
}


def language_name(language: Optional[str]) -> Optional[str]:
    """'de' -> 'German'; a name or an unknown code unchanged; empty -> None."""
    if not language or not str(language).strip():
        return None
    return LANGUAGE_NAMES.get(str(language).strip().lower(), str(language).strip())


class EngineRecord(BaseModel):
    """What a calibration map was fitted with: the same prompt through another model, weights
    type or engine build, or another prompt through the same one, gives other expected scores,
    so the map holds for this one only."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="The model the map was fitted with (`embedded:...`, a path or an id).")
    weights: str = Field(description="The weights' type in memory (`judge.weights`: `f16`, `stored`).")
    engine: str = Field(description="The engine and its version, e.g. `llama-cpp-python==0.3.36`.")
    prompt: Optional[str] = Field(
        None, description="The prompt's digest (`JudgeProfile.prompt_digest()`: instructions, examples, templates, "
        "labels). New examples move the expected scores as a new engine does; a test compares it with the profile's.")

    @classmethod
    def of(cls, profile: "JudgeProfile", model: Optional[str], weights: str, engine: str) -> "EngineRecord":
        """The record for a map fitted now with `profile` (its own model unless `model` is given)."""
        return cls(model=model or profile.model, weights=weights, engine=engine, prompt=profile.prompt_digest())


class Calibration(BaseModel):
    """A monotone map from the expected score (sum k*pk) to the 1..5 scale.

    Stored as knots of a piecewise-linear, non-decreasing function; fitted by isotonic
    regression of dev-set labels on the judge's expected score (`benchmarks/calibrate_judge.py`).
    """

    model_config = ConfigDict(extra="forbid")
    method: str = "isotonic"
    x: list[float]
    y: list[float]
    length_slope: float = Field(
        0.0, description="How the map accounts for the transcript's length: the expected score is moved by "
        "`length_slope * ln(chars / length_reference_chars)` before the knots are read (chars: the cleaned "
        "transcript's characters). Small judges score long texts higher whatever they say; a negative "
        "slope takes that back. 0: the map reads the expected score alone.")
    length_reference_chars: float = Field(100.0, gt=0, description="The length at which the knots hold as they are.")
    fitted_on: str = Field(description="What the map was fitted on, and how.")
    fitted_with: Optional[EngineRecord] = Field(
        None, description="The model, weights type and engine version the map was fitted with; a test "
        "compares the engine with the pinned one, so a new engine cannot ship with an old map.")
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _monotone(self) -> "Calibration":
        if len(self.x) != len(self.y) or len(self.x) < 2:
            raise ValueError("calibration needs matching x and y knots, at least two")
        if np.any(np.diff(self.x) < 0) or np.any(np.diff(self.y) < 0):
            raise ValueError("calibration knots must be non-decreasing")
        return self

    def reads(self, mean: float, n_chars: Optional[int] = None) -> float:
        """What the knots read: the expected score, moved by the transcript's length. Rows rank by
        this, so an evaluation's AUC is of what the map decides on."""
        if self.length_slope and n_chars:
            mean = mean + self.length_slope * float(np.log(max(n_chars, 1) / self.length_reference_chars))
        return float(mean)

    def apply(self, mean: float, n_chars: Optional[int] = None) -> float:
        return float(np.interp(self.reads(mean, n_chars), self.x, self.y))

    def mismatch(self, model: str, weights: str, engine: str, prompt: Optional[str] = None) -> Optional[str]:
        """Why this map does not hold for the judge `model`/`weights`/`engine`/`prompt` digest (a
        sentence), or None when it was fitted with exactly that judge or records nothing to compare."""
        if self.fitted_with is None:
            return None
        fitted = self.fitted_with
        compared = [("model", model, fitted.model), ("weights", weights, fitted.weights), ("engine", engine, fitted.engine)]
        if prompt and fitted.prompt:  # maps from before the digest, and callers without one, are not compared
            compared.append(("prompt", prompt, fitted.prompt))
        diffs = [f"{what} {now!r} (fitted with {then!r})" for what, now, then in compared if now != then]
        return ("the calibration map was fitted with another judge: " + ", ".join(diffs) +
                "; refit it (benchmarks/judge_eval.py --fit --write)") if diffs else None


class JudgeProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    extends: Optional[str] = Field(
        None, description="A shipped profile, or a YAML path (relative to this file), this one starts from: its "
        "fields, then this file's over them. The calibration is never inherited: a map holds for the prompt it "
        "was fitted with.")
    examples_language: Optional[str] = Field(
        None, description="The language stated (`language_line`) for each example that names none, "
        "inherited ones included.")
    model: str = Field(description="Default model for this profile: `embedded:...`, a path or a hub id.")
    style: Literal["completion", "chat"] = Field(
        "completion", description="`completion`: one plain text prompt (small models follow "
        "few-shot patterns better than chat turns). `chat`: system + few-shot turns through the "
        "model's chat template.",
    )
    instructions: str = Field(description="The header (completion) or system message (chat).")
    item_template: str = Field("Text: {text}\nScore: ", description="One example or query; `{text}` is the transcript.")
    separator: str = "\n\n"
    language_line: Optional[str] = Field(
        None, description="A line written before each item whose language is known, `{language}` being its "
        "name (from the row's `language` column: Whisper's code, shown as a name). None: the language is "
        "never stated. With it, the cached prefix ends after the examples and every row's own tokens "
        "start with this line.")
    examples: list[Example] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=lambda: ["1", "2", "3", "4", "5"])
    max_text_chars: int = Field(4000, description="Longer transcripts are cut to this many characters first.")
    calibration: Optional[Calibration] = None

    @model_validator(mode="after")
    def _check(self) -> "JudgeProfile":
        if self.examples_language:
            self.examples = [e if e.language else e.model_copy(update={"language": self.examples_language})
                             for e in self.examples]
        if self.item_template.count("{text}") != 1:
            raise ValueError("item_template must contain {text} exactly once")
        if len(self.labels) != 5:
            raise ValueError("a judge profile has exactly five labels (scores 1..5)")
        if self.language_line is not None and self.language_line.count("{language}") != 1:
            raise ValueError("language_line must contain {language} exactly once")
        return self

    # ---- scoring ---------------------------------------------------------------------------
    def score(self, mean: float, probs: np.ndarray, n_chars: Optional[int] = None) -> int:
        """The answer on the 1..5 scale: the calibrated score's integer part (so `edu_score >= k`
        means exactly "calibrated score at least k"), else the argmax. `n_chars`: the cleaned
        transcript's length, for maps with a `length_slope`."""
        if self.calibration is not None:
            return int(np.clip(np.floor(self.calibration.apply(mean, n_chars) + 1e-9), 1, 5))
        return int(np.argmax(probs)) + 1

    def prompt_digest(self) -> str:
        """SHA-256 (16 hex digits) of everything the judge reads besides the transcript: a map fitted
        with one prompt does not hold for another (`EngineRecord.prompt`)."""
        fields = self.model_dump(mode="json", include={"style", "instructions", "item_template", "separator",
                                                       "language_line", "examples", "labels", "max_text_chars"})
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    # ---- completion style ------------------------------------------------------------------
    def _item_parts(self) -> tuple[str, str, str]:
        before, after = self.item_template.split("{text}")
        stem = before.rstrip(" ")
        return stem, before[len(stem):], after

    def _language_line(self, language: Optional[str]) -> str:
        name = language_name(language)
        return self.language_line.format(language=name) if self.language_line and name else ""

    def prefix(self) -> str:
        """Everything before the transcript: identical for every row (the KV-cached part).
        Trailing spaces move to the suffix so the transcript's first word tokenizes as it
        did inside the examples (" word", not " " + "word"). A profile with a `language_line`
        ends its prefix after the examples: the row's language comes first in its suffix."""
        stem, _, _ = self._item_parts()
        shots = "".join(self._language_line(e.language) + self.item_template.format(text=e.text)
                        + self.labels[e.score - 1] + self.separator for e in self.examples)
        return self.instructions + self.separator + shots + ("" if self.language_line else stem)

    def suffix(self, text: str, language: Optional[str] = None) -> str:
        stem, space, after = self._item_parts()
        head = self._language_line(language) + stem if self.language_line else ""
        return head + space + self.clean(text) + after

    def clean(self, text: str) -> str:
        return " ".join((text or "").split())[: self.max_text_chars]

    # ---- chat style ------------------------------------------------------------------------
    def messages(self, text: str, language: Optional[str] = None) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.instructions}]
        for e in self.examples:
            msgs.append({"role": "user", "content": (self._language_line(e.language)
                                                     + self.item_template.format(text=e.text)).rstrip()})
            msgs.append({"role": "assistant", "content": self.labels[e.score - 1]})
        msgs.append({"role": "user", "content": (self._language_line(language)
                                                 + self.item_template.format(text=self.clean(text))).rstrip()})
        return msgs


def load_judge_profile(name_or_path: str) -> JudgeProfile:
    """A profile shipped in `audiocurate/judge/profiles/` by name, or a YAML file by path."""
    return JudgeProfile.model_validate(_profile_data(name_or_path, ()))


def _profile_data(name_or_path: str, seen: tuple[str, ...]) -> dict:
    """A profile's fields with those of the profile it `extends` beneath them."""
    p = Path(name_or_path)
    is_file = p.suffix in (".yaml", ".yml") and p.exists()
    key = str(p.resolve()) if is_file else name_or_path
    if key in seen:
        raise ValueError(f"judge profiles extend each other in a loop: {' -> '.join((*seen, key))}")
    if is_file:
        data = yaml.safe_load(p.read_text())
    else:
        ref = resources.files("audiocurate.judge") / "profiles" / f"{name_or_path}.yaml"
        if not ref.is_file():
            known = sorted(x.name[:-5] for x in (resources.files("audiocurate.judge") / "profiles").iterdir()
                           if x.name.endswith(".yaml"))
            raise ValueError(f"unknown judge profile {name_or_path!r}; shipped: {', '.join(known)}")
        data = yaml.safe_load(ref.read_text())
    if data.get("extends"):
        parent = Path(data["extends"])
        if is_file and not parent.is_absolute() and (p.parent / parent).is_file():
            parent = p.parent / parent  # a YAML path is read beside the file that names it
        base = _profile_data(str(parent), (*seen, key))
        base.pop("calibration", None)
        data = base | data
    return data
