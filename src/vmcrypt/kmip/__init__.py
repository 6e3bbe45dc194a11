"""The KMIP protocol only: the TTLV codec, tag and enumeration tables.

This package knows how KMIP messages are laid out on the wire (KMIP 1.4, section 9.1)
and nothing about what a server does with them: operations, storage and policy live
in ``vmcrypt.kms``, which depends on this package and never the other way round.
"""

from vmcrypt.kmip.exceptions import KmipError, TtlvDecodeError
from vmcrypt.kmip.ttlv import HEADER_SIZE, Item, ItemType, decode, decode_stream, encode

__all__ = [
    "HEADER_SIZE",
    "Item",
    "ItemType",
    "KmipError",
    "TtlvDecodeError",
    "decode",
    "decode_stream",
    "encode",
]
