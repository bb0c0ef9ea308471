"""From configuration to stages, without Ray: where each filter runs and which stage owns
which column (unit-tested in test_stages)."""

from __future__ import annotations

from typing import Iterable

import pyarrow as pa

from . import contract as C
from .config import PipelineConfig
from .filters import Filter, build_filters, place_filters


def _stage_columns(config: PipelineConfig) -> tuple[tuple[str, dict[str, pa.DataType]], ...]:
    """The points a filter can run at, in pipeline order, with the columns each stage adds."""
    return (
        (C.DECODE, {**C.DECODE_COLUMNS, C.PCM: pa.large_binary(),
                    **(C.SEGMENT_COLUMNS if config.segment.enabled else {})}),
        (C.TRANSCRIBE, C.asr_columns(config.asr)),
        (C.SELECT, C.JUDGE_COLUMNS),  # after the judge
    )


def placed_filters(config: PipelineConfig, input_columns: Iterable[str]) -> dict[str, list[Filter]]:
    """The configured filters by the stage that runs them: each at the first stage where the
    input's and the earlier stages' columns cover its `needs`."""
    available: set[str] = set(input_columns)
    points = []
    for stage, columns in _stage_columns(config):
        available = available | set(columns)
        points.append((stage, set(available)))
    placed = place_filters(build_filters(config, input_columns), points)
    # Segmenting: the audio filters judge each segment, in the segment stage, not the recording.
    if config.segment.enabled:
        placed[C.SEGMENT], placed[C.DECODE] = placed[C.DECODE], []
    else:
        placed[C.SEGMENT] = []
    return placed


def produced_by(placed: dict[str, list[Filter]], config: PipelineConfig) -> dict[str, str]:
    """Every column the pipeline writes, and the stage that writes it."""
    out: dict[str, str] = {}
    for stage, columns in _stage_columns(config):
        if stage != C.SELECT:
            out.update({c: stage for c in columns})
        else:
            out.update({c: C.JUDGE for c in columns})
        for f in placed.get(stage, []) + (placed.get(C.SEGMENT, []) if stage == C.DECODE else []):
            out.update({c: f"{stage} (filter {f.name or type(f).__name__})" for c in f.produces})
    if config.segment.enabled:
        out.update({c: C.SEGMENT for c in C.SEGMENT_COLUMNS})
    return out


def columns_after_decode(placed: dict[str, list[Filter]], config: PipelineConfig) -> dict[str, pa.DataType]:
    """The columns later stages add, in the order they add them: what a row settled while
    decoding gets as nulls, so every output shard has one schema."""
    out: dict[str, pa.DataType] = C.asr_columns(config.asr)
    for f in placed.get(C.TRANSCRIBE, []):
        out.update(f.produces)
    out.update(C.JUDGE_COLUMNS)
    for f in placed.get(C.SELECT, []):
        out.update(f.produces)
    return out
