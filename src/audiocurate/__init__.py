"""audiocurate: curate speech collections into training sets on Ray Data."""

__version__ = "0.1.0"

from .config import PipelineConfig  # noqa: E402

__all__ = ["PipelineConfig", "__version__"]
