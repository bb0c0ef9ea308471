"""The error of an input that cannot be read as configured.

Its own module so that the Parquet reader (`sources.parquet`), which the package's `Source`
uses, can raise it without importing the package: imports among sources point one way."""


class SourceError(ValueError):
    """The input cannot be read as configured; the message says what was found instead."""
