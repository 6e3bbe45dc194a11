"""Errors of the KMIP protocol layer.

::

    VmcryptError
    └── kmip.KmipError              — a KMIP item or message is invalid
        ├── kmip.TtlvDecodeError    — bytes received are not well-formed TTLV; the message
        │                             says which check failed and at which byte offset
        ├── kmip.MessageError       — well-formed TTLV that is not a valid KMIP message
        │                             or payload; carries the Result Reason to answer with
        ├── kmip.OperationFailed    — the server answered a batch item with a failure:
        │   │                         its Result Status, Result Reason and Result Message
        │   └── kmip.ItemFailed     — … about one named object (``uid`` says which)
        └── kmip.KmipConnectionError — the server could not be reached, the TLS handshake
                                      failed, or the connection broke or timed out

Malformed input from the network must only ever surface as ``TtlvDecodeError`` or
``MessageError``, so a server can answer it with a KMIP failure result instead of
crashing.
"""

from __future__ import annotations

from vmcrypt.exceptions import VmcryptError
from vmcrypt.kmip.tags import ResultReason, ResultStatus

__all__ = [
    "ItemFailed",
    "KmipConnectionError",
    "KmipError",
    "MessageError",
    "OperationFailed",
    "TtlvDecodeError",
]


class KmipError(VmcryptError):
    """A KMIP item or message cannot be built or understood."""


class TtlvDecodeError(KmipError):
    """The input is not well-formed TTLV; nothing was decoded from it."""


class MessageError(KmipError):
    """Valid TTLV, invalid KMIP: ``reason`` is the Result Reason a server answers with."""

    def __init__(self, reason: ResultReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class OperationFailed(KmipError):
    """A KMIP server answered a request with a failure result."""

    def __init__(
        self,
        *,
        operation: str,
        status: ResultStatus,
        reason: ResultReason | int | None,
        message: str | None,
    ) -> None:
        self.operation = operation
        self.status = status
        self.reason = reason
        self.result_message = message
        reason_name = (
            reason.name.replace("_", " ").title() if isinstance(reason, ResultReason)
            else f"reason {reason}"
        )
        super().__init__(f"KMIP {operation} failed: {reason_name}: {message or 'no message'}")


class ItemFailed(OperationFailed):
    """An operation on one named object failed; ``uid`` is that object's identifier.

    A subclass so callers that catch :class:`OperationFailed` keep working, while those
    that batch (``get_keys``) can tell which key it was without parsing the message.
    """

    def __init__(self, *, uid: str, operation: str, status: ResultStatus,
                 reason: ResultReason | int | None, message: str | None) -> None:
        self.uid = uid
        server_message = message or "no message"
        if repr(uid) not in server_message:
            server_message = f"{server_message} (Unique Identifier {uid!r})"
        super().__init__(operation=operation, status=status, reason=reason,
                         message=server_message)


class KmipConnectionError(KmipError):
    """The KMIP server is unreachable, refused TLS, or the connection broke or timed out."""
