"""Revoke — KMIP 1.4, 4.20.

"If the revocation reason is 'key compromise' or 'CA compromise', then the object is
placed into the 'compromised' state; the Date is set to the current date and time; and
the Compromise Occurrence Date is set to the value (if provided) in the Revoke request
and if a value is not provided in the Revoke request then Compromise Occurrence Date
SHOULD be set to the Initial Date for the object"; otherwise "the object is placed into
the 'deactivated' state, and the Deactivation Date is set". A destroyed object revoked
for compromise becomes Destroyed Compromised.
"""

from __future__ import annotations

from datetime import datetime

from vmcrypt.kmip.items import children, date_time, enum, find, get_enum, structure, text
from vmcrypt.kmip.tags import ResultReason, RevocationReasonCode, State, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.context import Context, response, state_of
from vmcrypt.kms.errors import OperationError
from vmcrypt.kms.objects import touch

_COMPROMISE = (RevocationReasonCode.KEY_COMPROMISE, RevocationReasonCode.CA_COMPROMISE)


def run(ctx: Context, payload: Item) -> Item:
    """Deactivate, or mark compromised."""
    uid = ctx.uid(payload)
    reason = find(payload, Tag.REVOCATION_REASON)
    if reason is None:
        raise OperationError(ResultReason.MISSING_DATA, "Revoke needs a Revocation Reason")
    code = get_enum(reason, Tag.REVOCATION_REASON_CODE)
    assert code is not None
    try:
        reason_code = RevocationReasonCode(code)
    except ValueError:
        raise OperationError(
            ResultReason.INVALID_FIELD, f"unknown Revocation Reason Code {code}"
        ) from None
    obj = ctx.load(uid)
    state = state_of(obj)
    put = ctx.store.put_attribute
    if reason_code in _COMPROMISE:
        occurred = find(payload, Tag.COMPROMISE_OCCURRENCE_DATE)
        initial = obj.first("Initial Date")
        when = occurred.value if occurred is not None and isinstance(
            occurred.value, datetime) else (
            initial.value if initial is not None and isinstance(initial.value, datetime)
            else ctx.now)
        new_state = State.DESTROYED_COMPROMISED if state in (
            State.DESTROYED, State.DESTROYED_COMPROMISED) else State.COMPROMISED
        put(uid, "Compromise Date", 0, date_time(Tag.ATTRIBUTE_VALUE, ctx.now))
        put(uid, "Compromise Occurrence Date", 0, date_time(Tag.ATTRIBUTE_VALUE, when))
    else:
        if state in (State.DESTROYED, State.DESTROYED_COMPROMISED, State.COMPROMISED):
            raise OperationError(
                ResultReason.ILLEGAL_OPERATION,
                f"object {uid!r} is {state.name.replace('_', ' ').title()}; only "
                "a key or CA compromise can still be recorded for it",
            )
        new_state = State.DEACTIVATED
        if state is not State.DEACTIVATED:
            put(uid, "Deactivation Date", 0, date_time(Tag.ATTRIBUTE_VALUE, ctx.now))
    put(uid, "State", 0, enum(Tag.ATTRIBUTE_VALUE, new_state))
    put(uid, "Revocation Reason", 0, structure(Tag.ATTRIBUTE_VALUE, *children(reason)))
    touch(ctx, obj)
    return response(text(Tag.UNIQUE_IDENTIFIER, uid))
