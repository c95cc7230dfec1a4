"""The engine's version: recorded in checkpoints and reports, printed by `--version`."""

__version__ = "0.1.0"
