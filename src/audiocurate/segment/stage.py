"""The segment stage: each decoded recording becomes its segment rows (CPU task)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import pyarrow as pa

from .. import contract as C
from ..audio import levels_dbfs
from ..config import SegmentConfig
from ..core.stage import Stage
from ..filters.base import Filter
from .vad import RATE, VadSettings, plan_segments, segment_room, speech_regions

NO_SPEECH = "no_speech"


def segment_id(parent_id: str, start_s: float) -> str:
    """Unique and stable across reruns: the parent's id and where the segment starts."""
    return f"{parent_id}@{start_s:09.3f}"


class SegmentStage(Stage):
    """Recordings to segment rows. Source columns are carried to every segment; `duration_s`,
    `peak_dbfs`, `rms_dbfs` and the samples become the segment's own, and the audio filters
    (placed here when segmenting) judge each segment. Rows settled upstream pass through."""

    name = C.SEGMENT
    produces = C.SEGMENT_COLUMNS

    def __init__(self, config: SegmentConfig, id_column: str, filters: Sequence[Filter] = (),
                 audio_column: Optional[str] = None):
        super().__init__(filters)
        self.config = config
        self.id_column = id_column
        self.audio_column = audio_column
        self.vad = VadSettings(config.vad_threshold, config.min_silence_s, 0.25, config.vad_window_s)

    def __call__(self, table: pa.Table) -> pa.Table:
        table = C.ensure_status(table)
        active = C.active_mask(table)
        ids = [str(x) for x in table[self.id_column].to_pylist()]
        durations = table["duration_s"].to_pylist()
        take: list[int] = []  # source row of each output row
        extra: dict[str, list[Any]] = {k: [] for k in (*C.SEGMENT_COLUMNS, "id", "duration_s", "peak_dbfs",
                                                       "rms_dbfs", C.PCM, C.DROP_REASON)}
        for i in range(table.num_rows):
            if not active[i]:
                self._keep(extra, take, i, ids[i], durations[i], table)
                continue
            pcm = C.pcm_of(table, i)
            duration = len(pcm) / RATE
            regions = speech_regions(pcm, self.vad, segment_room(self.config.max_s, self.config.pad_s))
            spans = plan_segments(regions, duration, self.config.min_s, self.config.max_s, self.config.pad_s,
                                  self.config.target_s)
            if not spans:
                self._keep(extra, take, i, ids[i], duration, table, reason=NO_SPEECH)
                continue
            for start, end in spans:
                piece = pcm[int(start * RATE):int(end * RATE)]
                peak, rms = (max(x, -200.0) for x in levels_dbfs(piece))
                take.append(i)
                for k, v in (("parent_id", ids[i]), ("start_s", start), ("end_s", end), ("segments", len(spans)),
                             ("id", segment_id(ids[i], start)), ("duration_s", len(piece) / RATE),
                             ("peak_dbfs", peak), ("rms_dbfs", rms), (C.PCM, piece.tobytes()),
                             (C.DROP_REASON, None)):
                    extra[k].append(v)
        # The recording's encoded audio and samples are not copied into each of its segment
        # rows (an hour's 115 MB times 200 segments): samples are set per segment below, and
        # the source audio is dropped (segments are packaged from their own samples).
        heavy = [c for c in (C.PCM, self.audio_column) if c in table.column_names]
        out = table.drop_columns(heavy).take(pa.array(take, pa.int64()))
        types = {**C.SEGMENT_COLUMNS, "duration_s": pa.float64(), "peak_dbfs": pa.float32(), "rms_dbfs": pa.float32(),
                 C.PCM: pa.large_binary(), C.DROP_REASON: pa.string(), "id": out.schema.field(self.id_column).type}
        for k, typ in types.items():
            name = self.id_column if k == "id" else k
            values = extra[k] if k != "id" else pa.array(extra[k], pa.string()).cast(typ)
            out = C.put_column(out, name, values, typ)
        out, _ = self._filter(out)
        return C.drop_settled_pcm(out)

    def _keep(self, extra: dict[str, list[Any]], take: list[int], i: int, rid: str, duration: Any, table: pa.Table,
              reason: Any = None) -> None:
        """A row that is not cut (settled upstream, or a recording with no speech): one row,
        its own parent, complete as it is."""
        take.append(i)
        drop = reason if reason is not None else table[C.DROP_REASON][i].as_py()
        for k, v in (("parent_id", rid), ("start_s", 0.0 if duration is not None else None), ("end_s", duration),
                     ("segments", 1), ("id", rid), ("duration_s", duration),
                     ("peak_dbfs", table["peak_dbfs"][i].as_py()), ("rms_dbfs", table["rms_dbfs"][i].as_py()),
                     (C.PCM, None), (C.DROP_REASON, drop)):
            extra[k].append(v)
