"""The segment stage: each recording becomes its segment rows (CPU task), decoded as it is cut."""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import contract as C
from ..audio import levels_dbfs
from ..config import SegmentConfig
from ..core.stage import Outcome, Stage
from ..filters.base import Filter
from ..stages import DecodeStage
from .spool import HeldSamples, RecordingSpool
from .vad import RATE, SpeechDetector, VadSettings, plan_segments, segment_room

NO_SPEECH = "no_speech"


def segment_id(parent_id: str, start_s: float) -> str:
    """Unique and stable across reruns: the parent's id and where the segment starts."""
    return f"{parent_id}@{start_s:09.3f}"


class SegmentStage(Stage):
    """Recordings to segment rows. Source columns are carried to every segment; `duration_s`,
    `peak_dbfs`, `rms_dbfs` and the samples become the segment's own, and the audio filters
    (placed here when segmenting) judge each segment. Rows settled upstream pass through.

    Given `decode`, it decodes too (the pipeline's way): each recording streams from the
    decoder through VAD into a `RecordingSpool`, is cut from there, and its segments leave in
    tables of about `part_bytes` of samples (a quarter of `segment.block_mb`), ending with a
    recording unless one recording alone fills them (a generator; Ray Data packs them into
    blocks), so its memory is bounded by the spool, the VAD window and a part, whatever the
    recording's length. `decode_s` then includes VAD, which runs as the samples arrive, and is
    on each recording's first row only.
    Without `decode`, it cuts the samples a decode stage put in the table."""

    name = C.SEGMENT
    produces = C.SEGMENT_COLUMNS

    def __init__(self, config: SegmentConfig, id_column: str, filters: Sequence[Filter] = (),
                 audio_column: Optional[str] = None, decode: Optional[DecodeStage] = None):
        super().__init__(filters)
        self.config = config
        self.id_column = id_column
        self.audio_column = audio_column
        self.decode = decode
        # A quarter of a block: Ray Data packs parts into blocks of `block_mb`, and closes one
        # after a part, so blocks end with recordings wherever they can.
        self.part_bytes = min(16 << 20, max(int(config.block_mb * 2**20) // 4, 1))
        self.vad = VadSettings(config.vad_threshold, config.min_silence_s, 0.25, config.vad_window_s)

    def __call__(self, table: pa.Table) -> Iterator[pa.Table]:
        table = C.ensure_status(table)
        active = C.active_mask(table)
        n = table.num_rows
        detector = SpeechDetector(self.vad, segment_room(self.config.max_s, self.config.pad_s))
        # The recording's own measures: from the decoder here, or from the table it filled.
        rec: dict[str, list[Any]]
        errors: dict[int, str] = {}
        if self.decode is not None:
            decoded = Outcome(values={k: [None] * n for k in self.decode.produces if k != C.PCM})
            rec, errors = decoded.values, decoded.errors
        else:
            rec = {k: (table[k].to_pylist() if k in table.column_names else [None] * n)
                   for k in ("duration_s", "peak_dbfs", "rms_dbfs")}
        ids = [str(x) for x in table[self.id_column].to_pylist()]
        # The recording's encoded audio and samples are not copied into each of its segment
        # rows (an hour's 115 MB times 200 segments): samples are set per segment, and the
        # source audio is dropped (segments are packaged from their own samples).
        base = table.drop_columns([c for c in (C.PCM, self.audio_column) if c in table.column_names])
        out = _Rows()
        for i in range(n):
            if not active[i]:
                out.keep(i, ids[i], rec, table)
                continue
            if self.decode is not None:
                samples: Any = RecordingSpool(detector, max(1, int(self.config.spool_mb * 2**20)))
                if self.decode.decode_row(table, i, decoded, i, into=samples) is None:
                    samples.close()
                    out.keep(i, ids[i], rec, table)
                    continue
            else:
                samples = HeldSamples(C.pcm_of(table, i), detector)
            try:
                t0 = time.perf_counter()
                regions = samples.regions()  # VAD's last window
                if self.decode is not None:
                    rec["decode_s"][i] += time.perf_counter() - t0
                spans = plan_segments(regions, samples.frames / RATE, self.config.min_s, self.config.max_s,
                                      self.config.pad_s, self.config.target_s)
                if not spans:
                    out.keep(i, ids[i], rec, table, reason=NO_SPEECH)
                own = 0  # this recording's samples in hand
                for start, end in spans:
                    own += out.segment(i, ids[i], start, end, len(spans),
                                       samples.read(int(start * RATE), int(end * RATE)))
                    # Mid-recording only when the recording alone fills a part: Ray Data closes
                    # a block after a part, so parts end with recordings wherever they can.
                    if own >= self.part_bytes:
                        yield self._emit(base, out.pop(), rec, errors)
                        own = 0
            finally:
                samples.close()
            if out.pcm_bytes >= self.part_bytes:
                yield self._emit(base, out.pop(), rec, errors)
        if out.take or not n:
            yield self._emit(base, out.pop(), rec, errors)

    def _emit(self, base: pa.Table, rows: "_Rows", rec: dict[str, list[Any]], errors: dict[int, str]) -> pa.Table:
        """The output rows gathered so far as a table, filtered."""
        table = base.take(pa.array(rows.take, pa.int64()))
        if self.decode is not None:  # the decoder's columns, per recording
            for k, typ in self.decode.produces.items():
                if k in rec and k not in rows.values:
                    table = C.put_column(table, k, [rec[k][i] for i in rows.take], typ)
            failed = {j: (C.DECODE, errors[i]) for j, i in enumerate(rows.take) if i in errors}
            if failed:
                table = C.mark(table, errors=failed)
        if "decode_s" in table.column_names:  # on a recording's first row only: sums count it once
            keep = pa.array(rows.first, pa.bool_())
            table = C.put_column(table, "decode_s", pc.if_else(keep, table["decode_s"], None),
                                 table.schema.field("decode_s").type)
        types = {**C.SEGMENT_COLUMNS, "duration_s": pa.float64(), "peak_dbfs": pa.float32(), "rms_dbfs": pa.float32(),
                 C.PCM: pa.large_binary(), C.DROP_REASON: pa.string(), "id": base.schema.field(self.id_column).type}
        for k, typ in types.items():
            name = self.id_column if k == "id" else k
            values = rows.values[k] if k != "id" else pa.array(rows.values[k], pa.string()).cast(typ)
            table = C.put_column(table, name, values, typ)
        table, _ = self._filter(table)
        return C.drop_settled_pcm(table)


class _Rows:
    """Output rows being gathered: the input row each comes from and its own values."""

    COLUMNS = (*C.SEGMENT_COLUMNS, "id", "duration_s", "peak_dbfs", "rms_dbfs", C.PCM, C.DROP_REASON)

    def __init__(self, seen: Optional[set[int]] = None) -> None:
        self.take: list[int] = []
        self.first: list[bool] = []  # the first output row of its input row
        self.values: dict[str, list[Any]] = {k: [] for k in self.COLUMNS}
        self.pcm_bytes = 0
        self.seen = set() if seen is None else seen

    def pop(self) -> "_Rows":
        rows = _Rows()
        rows.take, rows.first, rows.values, rows.pcm_bytes = self.take, self.first, self.values, self.pcm_bytes
        self.__init__(self.seen)
        return rows

    def _add(self, i: int, **values: Any) -> None:
        self.take.append(i)
        self.first.append(i not in self.seen)
        self.seen.add(i)
        for k in self.COLUMNS:
            self.values[k].append(values[k])

    def segment(self, i: int, parent: str, start: float, end: float, count: int, piece: np.ndarray) -> int:
        """Add a segment; its samples' bytes."""
        peak, rms = (max(x, -200.0) for x in levels_dbfs(piece))
        self._add(i, parent_id=parent, start_s=start, end_s=end, segments=count, id=segment_id(parent, start),
                  duration_s=len(piece) / RATE, peak_dbfs=peak, rms_dbfs=rms, drop_reason=None,
                  **{C.PCM: piece.tobytes()})
        self.pcm_bytes += piece.nbytes
        return piece.nbytes

    def keep(self, i: int, rid: str, rec: dict[str, list[Any]], table: pa.Table, reason: Any = None) -> None:
        """A row that is not cut (settled upstream, failed to decode, or a recording with no
        speech): one row, its own parent, complete as it is."""
        duration = rec["duration_s"][i]
        drop = reason if reason is not None else table[C.DROP_REASON][i].as_py()
        self._add(i, parent_id=rid, start_s=0.0 if duration is not None else None, end_s=duration, segments=1,
                  id=rid, duration_s=duration, peak_dbfs=rec["peak_dbfs"][i], rms_dbfs=rec["rms_dbfs"][i],
                  drop_reason=drop, **{C.PCM: None})
