"""Errors the user sees: one line, naming the file and the problem."""


class MotionSSIMError(Exception):
    """Base class for every error MotionSSIM reports to a user (CLI exit status 2)."""


class InputError(MotionSSIMError):
    """An input image or volume that cannot be assessed."""


class CheckpointError(MotionSSIMError):
    """A model file that is not a valid MotionSSIM checkpoint."""


class SettingsError(MotionSSIMError, ValueError):
    """A setting out of range or of the wrong type (orientation, thresholds, spacing, batch
    size...). Also a ValueError, so callers that caught ValueError before still do."""


class Cancelled(MotionSSIMError):
    """The user cancelled the assessment."""
