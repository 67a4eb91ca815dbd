"""postpulse stream processing: the Faust app, records, stages, CLI."""

__version__ = "0.1.0"
