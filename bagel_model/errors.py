"""Exception types of the BAGEL core, so callers can tell user mistakes from broken files."""


class BagelError(Exception):
    """Base class for every error raised on purpose by bagel_model."""


class BagelInputError(BagelError, ValueError):
    """An argument given by the user cannot be used (size, prompt, image, option)."""


class BagelCheckpointError(BagelError, OSError):
    """A checkpoint folder or file is missing, incomplete, corrupt or does not match the model."""
