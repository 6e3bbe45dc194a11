"""What every operation receives: the store, the caller, the clock, and the batch's state.

Operations are plain functions ``run(ctx, payload) -> response payload`` (one per file in
``operations/``); the dispatcher builds one :class:`Context` per request message, so the
ID Placeholder (KMIP 1.4, 3.1: a Unique Identifier a batch item may leave out, meaning
"the object the previous item produced") carries from one item to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from vmcrypt.kmip.items import get_text, structure
from vmcrypt.kmip.messages import ProtocolVersion
from vmcrypt.kmip.tags import ResultReason, State, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.store import ManagedObject, Store

__all__ = ["Context", "response", "state_of"]


@dataclass
class Context:
    """One request message's view of the server."""

    store: Store
    version: ProtocolVersion
    identity: str | None
    now: datetime
    id_placeholder: str | None = None

    def uid(self, payload: Item) -> str:
        """The payload's Unique Identifier, or the batch's ID Placeholder."""
        uid = get_text(payload, Tag.UNIQUE_IDENTIFIER, required=False)
        if uid is None:
            uid = self.id_placeholder
        if uid is None:
            raise OperationError(
                ResultReason.MISSING_DATA,
                "no Unique Identifier given and no earlier batch item set the ID Placeholder",
            )
        # Create and Register set the placeholder, and Locate when it finds one object.
        return uid

    def load(self, uid: str, *, names: Sequence[str] | None = None) -> ManagedObject:
        """Load an object.

        Access policy: every client holding a certificate from the server's CA may use
        every object (the control plane, the Trust Authority and an administrator share
        keys); the creating identity is recorded as the object's owner for audit.
        """
        return self.store.load(uid, names=names)

    def load_with_material(
        self, uid: str, *, names: Sequence[str] | None = None
    ) -> tuple[ManagedObject, bytes | None]:
        """:meth:`load` plus the unsealed key material (None once destroyed), in one read."""
        return self.store.load_with_material(uid, names=names)


def state_of(obj: ManagedObject) -> State:
    """The object's State attribute (every managed key has one)."""
    item = obj.first("State")
    return State(item.value) if item is not None and isinstance(item.value, int) else (
        State.PRE_ACTIVE
    )


def response(*items: Item | None) -> Item:
    """A Response Payload of the given children."""
    return structure(Tag.RESPONSE_PAYLOAD, *items)
