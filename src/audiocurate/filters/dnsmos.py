"""DNSMOS P.835 speech quality on the decoded 16 kHz samples, with onnxruntime alone.

The model scores 9.01 s windows of raw audio (shorter clips are repeated to fill one window,
as DNSMOS's reference code does) and Microsoft's polynomials (`dnsmos_local.py`,
non-personalized) map its raw outputs to MOS; the clip's score is the mean over windows.
Unlike the reference, windows do not overlap (see `dnsmos`)."""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import numpy as np
import pyarrow as pa

from pydantic import Field

from .. import contract as C
from ..core.settings import Settings
from ..models import resolve_model
from .base import FILTERS, Filter

LOW_DNSMOS = "low_dnsmos"
RATE = 16000
WINDOW = int(9.01 * RATE)
# Microsoft's polynomials from raw model outputs to P.835 MOS (non-personalized model).
_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
_OVRL = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


class DnsmosFilter(Settings):
    """DNSMOS P.835 (Microsoft's no-reference speech quality model, ONNX on CPU): SIG (speech),
    BAK (background) and OVRL (overall) on a 1-5 scale, written as `dnsmos_sig`, `dnsmos_bak`,
    `dnsmos_ovrl` right after decoding. Measured here: clean espeak-ng speech OVRL about 3.0,
    the same with white noise at 10 dB SNR 1.9, at 0 dB 1.6 (`benchmarks/dnsmos.py`). Emilia
    keeps OVRL >= 3.0 on real speech; that gate would reject much clean synthetic speech, so
    gating is a choice you make (`min_ovrl`), measuring is on in the `longform` profile."""

    enabled: bool = Field(False, description="Measure DNSMOS for every decoded clip or segment: about 0.36 s "
                          "of one core per 9 s of audio (4% of real time), in the decode or segment tasks.")
    min_ovrl: Optional[float] = Field(None, ge=1, le=5, description="Reject clips whose OVRL is below this "
                                      "(`low_dnsmos`); None only measures.")
    model: str = Field("embedded:dnsmos-p835", description="The P.835 `sig_bak_ovr.onnx`; embedded: from `speechmos`.")


@functools.lru_cache(maxsize=2)
def _session(path: str) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # decode tasks share the cores; one thread each
    opts.inter_op_num_threads = 1
    # Planned buffers per input shape cost 75 MB of every process that runs it, and no speed
    # (measured: 0.36 s a window either way; the arena itself is worth its memory, 20 % speed).
    opts.enable_mem_pattern = False
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def dnsmos(pcm: np.ndarray, model: str = "embedded:dnsmos-p835", max_windows: int = 40) -> tuple[float, float, float]:
    """(SIG, BAK, OVRL) of 16 kHz mono samples (int16 or float in [-1, 1]).

    A window costs about 0.36 s of one core, so windows do not overlap (the reference code
    hops by 1 s, nine times the work, more than Whisper tiny itself), run one at a time (a
    batch of 22 windows took 3.9 GB), and at most `max_windows` spread over a long clip."""
    audio = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
    if not len(audio):
        raise ValueError("no samples")
    while len(audio) < WINDOW:
        audio = np.concatenate([audio, audio])
    starts = list(range(0, len(audio) - WINDOW + 1, WINDOW))
    if len(starts) > max_windows:  # long recordings: windows spread evenly over the whole
        starts = [starts[int(i)] for i in np.linspace(0, len(starts) - 1, max_windows)]
    session = _session(resolve_model(model))
    raw = np.stack([session.run(None, {"input_1": audio[s:s + WINDOW][None, :]})[0][0] for s in starts])
    sig, bak, ovrl = raw.mean(axis=0)
    return float(_SIG(sig)), float(_BAK(bak)), float(_OVRL(ovrl))


@FILTERS.register("dnsmos")
class Dnsmos(Filter):
    name = "dnsmos"
    settings = DnsmosFilter
    needs = (C.PCM,)
    produces = {"dnsmos_sig": pa.float32(), "dnsmos_bak": pa.float32(), "dnsmos_ovrl": pa.float32()}

    def __init__(self, config: DnsmosFilter):
        self.min_ovrl, self.model = config.min_ovrl, config.model

    def measure(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        pcm = np.frombuffer(row[C.PCM], dtype="<i2") if row[C.PCM] else np.zeros(0, np.int16)
        sig, bak, ovrl = dnsmos(pcm, self.model)
        return {"dnsmos_sig": sig, "dnsmos_bak": bak, "dnsmos_ovrl": ovrl}

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        return LOW_DNSMOS if self.min_ovrl is not None and row["dnsmos_ovrl"] < self.min_ovrl else None
