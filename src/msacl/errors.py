"""Errors a user can act on. The CLI prints their message (naming the file and the problem) and exits 1."""


class MsaclError(Exception):
    """Base class of every error caused by input the user gave (files, folders, options)."""


class DataError(MsaclError):
    """A data folder or file that cannot be used as it is."""


class CheckpointError(MsaclError):
    """A checkpoint or run directory that is missing, corrupt or of another model."""
