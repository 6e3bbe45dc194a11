"""Errors of the disk layer; each message says what failed and what to do next."""

from __future__ import annotations

from vmcrypt.exceptions import VmcryptError

__all__ = [
    "ConversionCancelled",
    "ConversionInProgress",
    "DiskError",
    "HeaderError",
    "JournalError",
    "NoSpaceError",
    "WrongKeyError",
]


class DiskError(VmcryptError):
    """A disk operation failed; the data on disk is unchanged unless the message says so."""


class HeaderError(DiskError):
    """The LUKS2 header is missing, not a LUKS2 header, or corrupt in both copies."""


class WrongKeyError(DiskError):
    """The DEK does not match the digest in the disk's LUKS2 header."""


class ConversionInProgress(DiskError):
    """An interrupted conversion must be resumed before the disk can be opened."""


class JournalError(DiskError):
    """The conversion journal is unreadable or contradicts the data it describes."""


class NoSpaceError(DiskError):
    """The file system is full; nothing half-written was left behind."""


class ConversionCancelled(DiskError):
    """A conversion stopped on request between two chunks; ``resume`` finishes it."""
