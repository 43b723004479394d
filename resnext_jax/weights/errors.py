"""Exceptions of the weights package: every one names the file and the fix."""


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded into the requested model (nothing was loaded)."""


class WeightsFileError(WeightsError):
    """A file that cannot be read: missing, truncated, corrupted, unsafe or of unknown type."""
