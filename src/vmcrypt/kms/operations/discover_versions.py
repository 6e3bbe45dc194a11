"""Discover Versions — KMIP 1.4, 4.26.

"The response payload SHALL contain a list of the protocol versions supported by the
server … ordered in decreasing order of preference." With a client list, the answer is
the client's versions the server also supports, in the client's order; none in common
gives an empty list (which tells the client to give up, not an error).
"""

from __future__ import annotations

from vmcrypt.kmip.items import find_all
from vmcrypt.kmip.messages import SUPPORTED_VERSIONS, ProtocolVersion
from vmcrypt.kmip.tags import Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.context import Context, response


def run(ctx: Context, payload: Item) -> Item:
    """The versions both sides speak, best first."""
    asked = [ProtocolVersion.from_item(item) for item in find_all(payload, Tag.PROTOCOL_VERSION)]
    versions = [v for v in asked if v in SUPPORTED_VERSIONS] if asked else list(
        SUPPORTED_VERSIONS)
    return response(*(v.to_item() for v in versions))
