"""`RunOutput`: a finished or unfinished run's output, opened from what the run recorded.

Everything that works on an existing output after its run (`report`, `export`, `compact`,
`verify`, `run --retry-errors`) opens it here, so each sees the run's own configuration:
its storage settings, its input and id column, and the scope of its last attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import yaml

from .config import PipelineConfig
from .run_state import RUN, RunState
from .sinks import OutputDir
from .storage import StorageConfig


class NotARunOutput(ValueError):
    """The folder holds no audiocurate run."""


@dataclass
class RunOutput:
    out: OutputDir
    config: PipelineConfig
    identity: dict[str, Any]

    @classmethod
    def open(cls, uri: str, storage: Optional[StorageConfig] = None) -> "RunOutput":
        """`storage` reaches OUTPUT (it is not known before OUTPUT is read); the recorded
        configuration's storage then reaches the run's input."""
        out = OutputDir(uri, storage)
        identity = RunState(out).identity()
        if identity is None:
            raise NotARunOutput(f"{uri} holds no audiocurate run (no {RUN})")
        raw = RunState(out).recorded_config()
        config = PipelineConfig.model_validate(yaml.safe_load(raw)) if raw else PipelineConfig()
        if storage is not None and storage != config.output.storage:
            config = config.model_copy(update={"output": config.output.model_copy(update={"storage": storage})})
        return cls(out, config, identity)

    @property
    def state(self) -> RunState:
        """The output's run record: identity, attempts, `_SUCCESS`, progress."""
        return RunState(self.out)

    @property
    def uri(self) -> str:
        return self.out.uri

    @property
    def input_uri(self) -> str:
        return self.identity.get("input", "")

    @property
    def id_column(self) -> str:
        return self.config.source.id_column

    @property
    def last_attempt(self) -> dict[str, Any]:
        attempts = self.state.attempts()
        return attempts[-1] if attempts else {}

    @property
    def limit(self) -> Optional[int]:
        return self.last_attempt.get("limit")

    def source(self, input_uri: Optional[str] = None) -> Any:
        from .sources import open_source

        return open_source(input_uri or self.input_uri, self.config.source)
