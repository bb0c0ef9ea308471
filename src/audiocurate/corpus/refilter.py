"""`audiocurate refilter OUTPUT DEST`: OUTPUT's rows routed again under a new configuration,
from the signals the run stored, with no model loaded ("tag once, filter many").

DEST is a run like any other (`pipeline._run_held`: lease, resume by id, corpus passes,
compaction, report, exports); only its input is OUTPUT's stored rows (`sources.stored`) and
its decode, ASR and judge stages are replaced by `replay.RefilterStage`, which runs the same placed
filters a run would, in the same order, on the stored columns.

Which rows can change outcome: a filter decides a row only when the row reached the stage
whose signals it reads. A row that OUTPUT rejected before Whisper or the judge has no
transcript or score, so where the new gates let it past its old gate, it keeps its old
`drop_reason` (deciding it would need the models). A row that passes every new gate and
reached every stage is curated; one from `rejected/` (which keeps no audio) gets its clip
read back from OUTPUT's input, as `export --from rejected` does. errors/ rows stay errors.

A segmented OUTPUT (`--profile longform`): its rows are segments, decided one by one as in the
run (the audio filters as the segment stage placed them), a segment curated anew cut from its
recording in OUTPUT's input. DEST is accounted per recording, as OUTPUT was and as any
segmented run is: its input rows are OUTPUT's recordings, each in DEST's errors/ or the parent
of its segments, every segment once (each row names its recording's segment count, which
resume and verify read). A change to how recordings are cut (`segment.*`) is refused.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .. import contract as C
from ..config import PipelineConfig
from ..filters.base import Filter
from ..sources.stored import StoredRows
from .fingerprint import FINGERPRINT
from .moves import DUPLICATE_OF
from .replay import _STAGES


class MissingSignal(ValueError):
    """A setting of the new configuration needs a column OUTPUT did not store."""


def refilter(config: PipelineConfig, output_uri: str, dest_uri: str, *, restart: bool = False,
             echo: Callable[[str], None] = print, stop_ray: bool = False) -> dict[str, Any]:
    """Route OUTPUT's stored rows under `config` into DEST; returns DEST's report. A rerun
    of the same command resumes DEST; a different configuration on it is refused."""
    from ..lease import OutputLease
    from ..pipeline import _run_held
    from ..run_output import RunOutput
    from ..sinks import OutputDir

    run = RunOutput.open(output_uri, config.output.storage)
    if not run.state.is_complete():
        raise ValueError(f"{output_uri} is not a finished run (no _SUCCESS): finish it with its `audiocurate run` "
                         "command first")
    check_segments(run.config, config, output_uri)
    if dest_uri.rstrip("/") == output_uri.rstrip("/"):
        raise ValueError("DEST must be another folder than OUTPUT: OUTPUT's rows are its input")
    source = StoredRows.open(run.out, run.id_column)
    out = OutputDir(dest_uri, config.output.storage)
    if config.segment.enabled:
        source.recordings = _recordings(run.out, output_uri)
    source.input_columns = input_columns(source.columns, (run.config, config))
    check_signals(config, source, output_uri)
    with OutputLease(out, "refilter") as lease:
        return _run_held(config, source, output_uri, dest_uri, out, lease, limit=None, restart=restart,
                         retry_errors=False, echo=echo, stop_ray=stop_ray)


def check_segments(recorded: PipelineConfig, config: PipelineConfig, output_uri: str) -> None:
    """Refuse, naming the settings, a change to how recordings are cut: OUTPUT's rows are the
    segments it cut, and cutting them anew needs the audio decoded and every model run again."""
    before, now = recorded.result_fingerprint()["segment"], config.result_fingerprint()["segment"]
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise ValueError(f"refilter cannot change how {output_uri}'s recordings were cut "
                         f"({', '.join(f'segment.{k}: {before.get(k)} -> {now.get(k)}' for k in changed)}): "
                         "its rows are those segments; run `audiocurate run` on the input instead")


def _recordings(out: Any, output_uri: str) -> int:
    """How many recordings a segmented OUTPUT accounted for: what its `_SUCCESS` records."""
    count = (out.read_json("_SUCCESS") or {}).get("input")
    if not isinstance(count, int):
        raise ValueError(f"{output_uri}/_SUCCESS records no input count, so DEST's accounting has nothing to "
                         "match: run OUTPUT's `audiocurate run` command again to finish it anew")
    return count


def new_config(recorded: PipelineConfig, profile: Optional[str], overrides: list[str]) -> PipelineConfig:
    """OUTPUT's recorded configuration, then `--profile` layers, then `--set` overrides."""
    return PipelineConfig.load(profile=profile, overrides=overrides, base=recorded.model_dump(mode="json"))


def input_columns(stored: list[str], configs: tuple[PipelineConfig, ...]) -> list[str]:
    """The stored columns that came from the run's input, not from a stage, filter or pass:
    filters are placed on these as in a run, so a transcript check still runs after Whisper
    (where a row that never reached Whisper is not decided) though `transcript` is stored."""
    from ..plan import placed_filters, produced_by

    made = set(C.STATUS_COLUMNS) | {C.AUDIO, C.PCM, DUPLICATE_OF, FINGERPRINT}
    for config in configs:
        made |= set(produced_by(placed_filters(config, stored), config))
    return [c for c in stored if c not in made]


def check_signals(config: PipelineConfig, source: StoredRows, output_uri: str) -> None:
    """Refuse, naming the column, a configuration whose filters or corpus passes need a
    signal OUTPUT did not store."""
    have = set(source.columns)
    missing: list[str] = []
    for f in _all_filters(config, source.input_columns):
        lacking = _lacking(f, have)
        if lacking:
            missing.append(f"filter {f.name or type(f).__name__} needs {', '.join(sorted(lacking))}")
    if config.dedup.enabled and FINGERPRINT not in have:
        missing.append(f"dedup needs {FINGERPRINT} (set dedup.enabled in the run that makes OUTPUT)")
    cap = config.corpus.max_hours_per
    if cap is not None and cap.column not in have:
        missing.append(f"corpus.max_hours_per needs {cap.column}")
    if missing:
        raise MissingSignal(f"cannot refilter {output_uri} under this configuration without a model: "
                            f"{'; '.join(missing)}, which the run did not store")


def _all_filters(config: PipelineConfig, stored: list[str]) -> list[Filter]:
    from ..plan import placed_filters

    placed = placed_filters(config, stored)
    return [f for stage in _STAGES for f in placed.get(stage, [])]


def _lacking(f: Filter, have: set[str]) -> set[str]:
    """The columns `f` would need and OUTPUT lacks: none when it can read its needs, or the
    signals it measures were stored (then it decides on those, `_replay`)."""
    needs = set(f.needs) - have
    if not needs:
        return set()
    return set(f.produces) - have if f.produces else needs
