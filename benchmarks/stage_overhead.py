"""The transcribe stage's own work per call at GPU batch sizes, without a model.

    python benchmarks/stage_overhead.py

`TranscribeStage` on Arrow tables of 5 s 16-bit clips (gpu_asr.py's), its transcriber replaced
by one that returns ready transcriptions: what is left is the stage's own work (the rows'
samples out of Arrow, the output columns, marking). On a GPU node this is added to every
batch the model decodes.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from audiocurate import contract as C  # noqa: E402
from audiocurate.asr import Segment, Transcription  # noqa: E402
from audiocurate.config import PipelineConfig  # noqa: E402
from audiocurate.stages import TranscribeStage  # noqa: E402
from gpu_asr import clips  # noqa: E402

RESULTS = HERE / "results" / "stage_overhead.json"


class ReadyTranscriber:
    model_name = "ready"

    def __init__(self, batch: int):
        text = "otherotherother capabilities capabilities capabilities " * 2
        self.results = [Transcription.from_segments([Segment(text, 0.0, 5.0, -8.0, 1e-5, 24)], "en")
                        for _ in range(batch)]

    def transcribe_batch(self, pcm):
        assert len(pcm) == len(self.results)
        return self.results


def main() -> None:
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    for batch in (1024, 4096):
        config = PipelineConfig.load(overrides=["asr.backend=transformers", "asr.model=ready", "asr.device=cpu",
                                                f"asr.resources.batch_size={batch}"])
        stage = TranscribeStage(config.asr)
        stage.__dict__["transcriber"] = ReadyTranscriber(batch)
        table = pa.table({"id": [str(i) for i in range(batch)],
                          C.PCM: pa.array([c.tobytes() for c in clips(batch)], pa.large_binary())})
        stage(table)
        runs = 5
        t0 = time.perf_counter()
        for _ in range(runs):
            stage(table)
        per_call = (time.perf_counter() - t0) / runs
        result[str(batch)] = {"ms_per_call": round(1000 * per_call, 2), "us_per_row": round(1e6 * per_call / batch, 2)}
        print(batch, result[str(batch)], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
