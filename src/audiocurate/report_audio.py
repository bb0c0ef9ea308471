"""Clips to listen to in report.html: short Opus data URIs, picked the same on every rerun.

Per outcome (curated, each drop reason, each error stage) the report keeps the rows whose
id hashes lowest: a stable choice that does not depend on which worker wrote which shard.
Curated audio comes from `curated/`; rejected and error rows keep no audio, so theirs is read
back from the input (an error row whose audio does not decode has no player: that is its error).
"""

from __future__ import annotations

import base64
import heapq
import io
import zlib
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CLIP_S = 8.0  # seconds of each clip in the page
OPUS_BITRATE = 24_000  # 24 kb/s: about 24 KB per 8 s clip
PREVIEW_MAX_CELL_BYTES = 128 << 20
"""A rejected clip whose Parquet cell is larger (by the input's footer) gets no player but a
note: Parquet reads a cell whole, twice its size while its page is read, and the report runs
in the driver. 128 MB is an hour or more of FLAC at 48 kHz."""


def stable_ranks(clip_ids: list[str]) -> np.ndarray:
    """Each id's rank: CRC-32 of its UTF-8, the same in every process and on every rerun."""
    return np.fromiter((zlib.crc32(c.encode()) for c in clip_ids), dtype=np.int64, count=len(clip_ids))


class SamplePicker:
    """The `k` rows per outcome with the lowest id rank, while streaming over the shards."""

    def __init__(self, k: int, max_outcomes: int = 16):
        self.k = k
        self.max_outcomes = max_outcomes
        self.heaps: dict[str, list[tuple[int, str, dict[str, Any], str]]] = {}

    def offer(self, outcome: str, clip_ids: list[str], ranks: np.ndarray, rows: np.ndarray,
              row: Callable[[int], dict[str, Any]], part: str) -> None:
        """Rows `rows` (positions in `clip_ids` and `ranks`) of one outcome. Only the `k`
        lowest-ranked of them can be kept, so only those reach the heap; `row(i)` builds a
        sample's fields and is called only for a row that is kept."""
        if self.k <= 0 or not len(rows):
            return
        if outcome not in self.heaps:
            if len(self.heaps) >= self.max_outcomes:
                return
            self.heaps[outcome] = []
        heap = self.heaps[outcome]
        if len(rows) > self.k:
            rows = rows[np.argpartition(ranks[rows], self.k - 1)[:self.k]]
        for i in rows.tolist():
            key = -int(ranks[i])
            if len(heap) < self.k:
                heapq.heappush(heap, (key, clip_ids[i], row(i), part))
            elif key > heap[0][0]:
                heapq.heapreplace(heap, (key, clip_ids[i], row(i), part))

    def picked(self) -> dict[str, list[tuple[str, dict[str, Any], str]]]:
        return {o: [(cid, row, part) for _, cid, row, part in sorted(h, key=lambda x: -x[0])]
                for o, h in sorted(self.heaps.items())}


def opus_data_uri(pcm: np.ndarray, rate: int = 16000) -> str:
    """The first `CLIP_S` seconds of 16-bit mono PCM as an Ogg Opus data URI."""
    import av

    pcm = np.ascontiguousarray(pcm[: int(CLIP_S * rate)], dtype=np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=rate, layout="mono")
        stream.bit_rate = OPUS_BITRATE
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return "data:audio/ogg;base64," + base64.b64encode(buf.getvalue()).decode()


def curated_audio(fs: Any, part: str, ids: list[str], id_column: str) -> dict[str, pa.Buffer]:
    """Encoded audio of some curated rows, from the shard that holds them, read a batch at a
    time: a compacted shard holds hundreds of megabytes of audio. Only the wanted rows are
    kept, as Arrow buffers (no Python copy of each clip)."""
    from .audio import cell_buffer

    wanted = pa.array(sorted(set(ids)), pa.string())
    found: dict[str, pa.Buffer] = {}
    with fs.open_input_file(part) as f:
        for batch in pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=False).iter_batches(
                batch_size=256, columns=[id_column, "audio"]):
            t = batch.filter(pc.is_in(pc.cast(batch.column(id_column), pa.string()), wanted))
            for j, clip_id in enumerate(t.column(id_column).to_pylist()):
                found[str(clip_id)] = cell_buffer(t.column("audio"), j)
            if len(found) == len(wanted):
                break
    return found


def players_for(picked: dict[str, list[tuple[str, dict[str, Any], str]]], fs: Any, id_column: str,
                source_audio: Optional[Any]) -> dict[str, list[dict[str, Any]]]:
    """Sample rows per outcome, each with an `audio` data URI where its clip decodes; a clip
    too large to read for a preview has none and says so in `audio_note`."""
    from .audio import AudioDecodeError, CellTooLarge, decode_audio

    out: dict[str, list[dict[str, Any]]] = {}
    # One read of the input for every outcome's rejected and error rows (they keep no audio).
    from_input = [cid for outcome, rows in picked.items() if outcome != "curated" for cid, _, _ in rows]
    encoded: dict[str, Any] = (source_audio.raw_audio(from_input, max_cell_bytes=PREVIEW_MAX_CELL_BYTES)
                               if source_audio and from_input else {})
    for outcome, rows in picked.items():
        if outcome == "curated":
            for part in {p for _, _, p in rows}:
                encoded.update(curated_audio(fs, part, [cid for cid, _, p in rows if p == part], id_column))
        samples = []
        for cid, row, _ in rows:
            uri, note = None, None
            data = encoded.get(cid)
            if isinstance(data, CellTooLarge):
                note = data.reason
            elif data is not None and (hasattr(data, "seek") or len(data)):
                try:
                    # Only the seconds it plays: a rejected 10-hour clip costs a block, not 1.2 GB.
                    uri = opus_data_uri(decode_audio(data, target_rate=16000, first_s=CLIP_S).pcm)
                except (AudioDecodeError, ValueError):
                    uri = None
                finally:
                    if isinstance(data, pa.NativeFile):
                        data.close()
            samples.append({**row, "audio": uri, **({"audio_note": note} if note else {})})
        out[outcome] = samples
    return out
