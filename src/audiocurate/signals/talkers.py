"""More than one talker: how far apart the voices in a clip's windows are.

Resemblyzer's speaker encoder (Apache-2.0; its trained weights `pretrained.pt` ship inside the
`resemblyzer` wheel, 17 MB, so nothing is downloaded at run time) embeds 1.6 s windows, hopped
by 0.4 s, of the speech frames. One voice gives windows that agree; a second voice, over or
between the first, pulls some windows elsewhere. `talker_spread` is the mean cosine distance
of the windows' embeddings to their mean, `talker_max_distance` the largest distance of a
window to it. The encoder's own mel front end is computed here with numpy (the package's
`audio.py` needs librosa and webrtcvad, which the encoder does not), so the `quality` extra is
`resemblyzer` installed with `--no-deps` and torch (CPU)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from . import RATE, Signal, as_float, excerpt, register

WINDOW_FRAMES = 160  # 1.6 s of 10 ms mel frames, as the encoder was trained
HOP_FRAMES = 40
N_FFT, HOP, N_MELS = 400, 160, 40
TARGET_RMS = 10 ** (-30 / 20)


class MissingExtra(ImportError):
    """The `quality` extra is not installed."""


def weights_path() -> Path:
    spec = importlib.util.find_spec("resemblyzer")  # finds the package without importing it (librosa)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra("the talkers signal needs resemblyzer's encoder: pip install 'audiocurate[quality]' "
                           "(or: pip install --no-deps resemblyzer, and torch)")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


@functools.lru_cache(maxsize=1)
def _encoder() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingExtra("the talkers signal needs torch (CPU build): pip install 'audiocurate[quality]'") from None

    class VoiceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(N_MELS, 256, 3, batch_first=True)
            self.linear = torch.nn.Linear(256, 256)

        def forward(self, mels: "torch.Tensor") -> "torch.Tensor":
            _, (hidden, _) = self.lstm(mels)
            raw = torch.relu(self.linear(hidden[-1]))
            return raw / (torch.norm(raw, dim=1, keepdim=True) + 1e-9)

    model = VoiceEncoder()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)["model_state"]
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity")})
    model.eval()
    return model


@functools.lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    """librosa's default (Slaney) mel filterbank for 16 kHz, n_fft 400, 40 bands."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        return np.where(f >= 1000, 15 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27), lin)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= 15, 1000 * np.exp((np.log(6.4) / 27) * (m - 15)), m * (200.0 / 3))

    fft_hz = np.fft.rfftfreq(N_FFT, 1 / RATE)
    mel_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(RATE / 2), N_MELS + 2))
    fdiff = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower, upper = -ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return (weights * (2.0 / (mel_hz[2:N_MELS + 2] - mel_hz[:N_MELS]))[:, None]).astype(np.float32)


def mel_frames(x: np.ndarray) -> np.ndarray:
    """(frames, 40) power mel spectrogram, as resemblyzer's `wav_to_mel_spectrogram`."""
    padded = np.pad(x, (N_FFT // 2, N_FFT // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return (power @ _mel_basis().T).astype(np.float32)


def window_embeddings(samples: np.ndarray) -> np.ndarray:
    """(windows, 256) unit embeddings of 1.6 s windows of the clip's speech frames."""
    import torch

    x = as_float(excerpt(samples, 60.0))
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0
    if 0 < rms < TARGET_RMS:  # the encoder was trained on clips raised to -30 dBFS (never lowered)
        x = x * (TARGET_RMS / rms)
    mel = mel_frames(x)
    energy = mel.sum(axis=1)
    speech = mel[energy > np.percentile(energy, 95) * 10 ** (-40 / 10)]  # pauses out: they carry no voice
    if len(speech) < WINDOW_FRAMES:
        speech = np.pad(speech, ((0, WINDOW_FRAMES - len(speech)), (0, 0)))
    starts = range(0, len(speech) - WINDOW_FRAMES + 1, HOP_FRAMES)
    batch = np.stack([speech[s:s + WINDOW_FRAMES] for s in starts])
    with torch.inference_mode():
        return _encoder()(torch.from_numpy(batch)).numpy()


def measure_talkers(samples: np.ndarray) -> dict[str, float]:
    emb = window_embeddings(samples)
    centre = emb.mean(axis=0)
    centre /= np.linalg.norm(centre) + 1e-9
    distance = 1.0 - emb @ centre
    return {"talker_spread": float(distance.mean()), "talker_max_distance": float(distance.max())}


TALKERS = register(Signal("talkers", {"talker_spread": pa.float32(), "talker_max_distance": pa.float32()},
                          measure_talkers))
