"""The key server's one error type: each failure carries the KMIP Result Reason it maps to.

Operations raise :class:`OperationError`; the dispatcher turns it into a failure batch
item (Result Status "Operation Failed", the reason, and the message). Messages say what
was wrong and what would work, and never contain key material.
"""

from __future__ import annotations

from vmcrypt.kmip.exceptions import KmipError, MessageError
from vmcrypt.kmip.tags import ResultReason

__all__ = ["KmsError", "MasterKeyError", "OperationError", "item_not_found"]


class KmsError(KmipError):
    """The key server cannot start or run (configuration, master key, database)."""


class MasterKeyError(KmsError):
    """The master key is missing, malformed, too widely readable, or not the right one."""


class OperationError(MessageError):
    """A KMIP operation failed for a reason the client should be told.

    Like a :class:`~vmcrypt.kmip.exceptions.MessageError` it carries the Result Reason;
    it says the request was well-formed but could not be carried out.
    """


def item_not_found(uid: str) -> OperationError:
    """The error for an unknown Unique Identifier (every operation words it the same)."""
    return OperationError(ResultReason.ITEM_NOT_FOUND, f"no object with Unique Identifier {uid!r}")
