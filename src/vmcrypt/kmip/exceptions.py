"""Errors of the KMIP protocol layer.

::

    VmcryptError
    └── kmip.KmipError           — a KMIP item or message is invalid
        └── kmip.TtlvDecodeError — bytes received are not well-formed TTLV; the message
                                   says which check failed and at which byte offset

Malformed input from the network must only ever surface as ``TtlvDecodeError``, so a
server can answer it with a KMIP "Invalid Message" result instead of crashing.
"""

from __future__ import annotations

from vmcrypt.exceptions import VmcryptError

__all__ = ["KmipError", "TtlvDecodeError"]


class KmipError(VmcryptError):
    """A KMIP item or message cannot be built or understood."""


class TtlvDecodeError(KmipError):
    """The input is not well-formed TTLV; nothing was decoded from it."""
