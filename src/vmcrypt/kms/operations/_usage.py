"""What Encrypt and Decrypt check before a key is used: state, usage mask, material."""

from __future__ import annotations

from collections.abc import Iterable

from vmcrypt.kmip.tags import CryptographicAlgorithm, CryptographicUsageMask, ResultReason, State
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.context import Context, state_of
from vmcrypt.kms.errors import OperationError

_NEEDED = ("State", "Cryptographic Algorithm", "Cryptographic Usage Mask",
           "Cryptographic Parameters")


def usable_key(ctx: Context, uid: str, *, operation: str, mask: CryptographicUsageMask,
               states: Iterable[State]) -> tuple[bytes, Item | None]:
    """The key's material and its own Cryptographic Parameters, once ``operation`` may use it.

    A key in the wrong state or without the usage bit is *Permission Denied*, with the
    state or the mask named so the operator knows what to change.
    """
    obj = ctx.load(uid, names=_NEEDED)
    state = state_of(obj)
    allowed = tuple(states)
    if state not in allowed:
        names = " or ".join(s.name.replace("_", "-").title() for s in allowed)
        raise OperationError(ResultReason.PERMISSION_DENIED,
                             f"{operation} needs a key that is {names}; key {uid!r} is "
                             f"{state.name.replace('_', '-').title()}")
    algorithm = obj.first("Cryptographic Algorithm")
    if algorithm is None or algorithm.value != CryptographicAlgorithm.AES:
        raise OperationError(ResultReason.INVALID_FIELD,
                             f"key {uid!r} is not an AES key: it cannot {operation}")
    usage = obj.first("Cryptographic Usage Mask")
    if usage is None or not isinstance(usage.value, int) or not usage.value & mask:
        raise OperationError(ResultReason.PERMISSION_DENIED,
                             f"key {uid!r}: its Cryptographic Usage Mask does not allow "
                             f"{operation}")
    material = ctx.store.material(uid)
    if material is None:
        raise OperationError(ResultReason.ITEM_NOT_FOUND,
                             f"object {uid!r} was destroyed: its key material no longer exists")
    return material, obj.first("Cryptographic Parameters")
