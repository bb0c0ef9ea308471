"""The base of every configuration section: strict pydantic models whose field descriptions are
the manual, and the mark that says a field changes only speed, never results."""

from __future__ import annotations

import textwrap
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo

Concurrency = Union[int, tuple[int, int], Literal["auto"]]


class Settings(BaseModel):
    """A configuration section: unknown fields are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# A setting that changes how fast or where a result comes, never the result. The resume
# fingerprint (`PipelineConfig.result_fingerprint`) is every setting without this mark, so a
# resumed run may change these and nothing else. On a field: `Field(..., json_schema_extra=SPEED_ONLY)`;
# on a whole section: its `model_config`'s `json_schema_extra=SPEED_ONLY`.
SPEED_ONLY: dict[str, Any] = {"changes_results": False}
SPEED_ONLY_SECTION = ConfigDict(extra="forbid", validate_assignment=True, json_schema_extra=SPEED_ONLY)


# A setting added after outputs were written, whose default gives the results they already
# have: at its default it is left out of a result's identity, so those outputs still resume.
# `Field(default, json_schema_extra=ADDED_AS_BEFORE)`; any other value is part of the identity.
ADDED_AS_BEFORE: dict[str, Any] = {"identity_at_default": False}


def in_identity(field: FieldInfo, value: Any) -> bool:
    """Whether a result setting's value is part of a result's identity (see ADDED_AS_BEFORE)."""
    extra = field.json_schema_extra
    return not (isinstance(extra, dict) and extra.get("identity_at_default") is False and value == field.default)


def changes_results(field: FieldInfo) -> bool:
    """Whether a field is part of a result's identity (see SPEED_ONLY)."""
    section = getattr(field.annotation, "model_config", None) or {}
    for extra in (field.json_schema_extra, section.get("json_schema_extra")):
        if isinstance(extra, dict) and extra.get("changes_results") is False:
            return False
    return True


def documented_yaml(model: BaseModel, indent: int = 0) -> str:
    """`model` as YAML with each field under its description, as comments (a section without
    one under its class's docstring): the manual of an effective configuration, as
    `audiocurate config` prints it. It loads back to the same configuration."""
    import yaml

    pad, lines = "  " * indent, []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        about = field.description or (_own_docstring(type(value)) if isinstance(value, BaseModel) else None)
        if indent == 0 and lines:
            lines.append("")
        if about:
            width = max(40, 98 - len(pad))
            lines += [f"{pad}# {line}" for line in textwrap.wrap(" ".join(about.split()), width, break_on_hyphens=False)]
        if isinstance(value, BaseModel) and type(value).model_fields:
            lines += [f"{pad}{name}:", documented_yaml(value, indent + 1).rstrip("\n")]
        else:
            dumped = yaml.safe_dump({name: model.model_dump(mode="json", include={name})[name]}, sort_keys=False)
            lines += [pad + line for line in dumped.rstrip("\n").split("\n")]
    return "\n".join(lines) + "\n"


def _own_docstring(cls: type) -> Optional[str]:
    """A class's own docstring, not one it inherits (every section's base has one)."""
    return cls.__dict__.get("__doc__")


class StageResources(Settings):
    """Ray resources of one stage. Logical reservations only: a model's threads are set in
    the backend's own `threads`, so fractions here never oversubscribe the machine."""

    model_config = SPEED_ONLY_SECTION

    num_cpus: float = Field(0.5, ge=0, description="CPUs Ray reserves per task or actor (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractions let stages share one GPU.")
    concurrency: Concurrency = Field(
        "auto",
        description="Actors in the pool: an int for a fixed pool, `[min, max]` for an "
        "autoscaling pool, `auto` to plan it from the cluster at start: on CPUs one Whisper "
        "actor per core (per `asr.threads` cores) and one judge actor per four cores besides, "
        "at least one (2 cores: two Whisper actors and a judge, 1.3x one Whisper actor and "
        "1.03x faster-whisper alone on both cores, `benchmarks/throughput.py`); on GPUs one "
        "actor per GPU and stage.",
    )
    batch_size: int = Field(8, ge=1, description="Rows per model batch, and per call (block) of the model "
                            "stages; segmented runs call them with whole recordings, batched inside. Larger "
                            "batches feed GPUs better; smaller calls lose less work when a worker dies.")

    @field_validator("concurrency", mode="before")
    @classmethod
    def _list_to_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v


def planned_device(device: str, resources: StageResources) -> str:
    """Where a model stage's engine runs: `device` as set, and for `auto` `cuda` when the stage
    reserves GPUs (`resources.num_gpus` > 0), else `cpu`. Decided from the configuration, not
    from what a worker happens to see, so the driver knows it before the run (the resolved
    precision is part of the resume fingerprint) and every worker resolves it the same way."""
    if device != "auto":
        return device
    return "cuda" if resources.num_gpus > 0 else "cpu"

