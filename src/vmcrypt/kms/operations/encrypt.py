"""Encrypt — KMIP 1.4, 4.29: encrypt Data with a managed key that stays in the server.

The key must be Active (3.22: only an Active key may apply protection) and allowed to
Encrypt by its Cryptographic Usage Mask. The modes and their fields are in
:mod:`vmcrypt.kms.cipher`. The response carries the Unique Identifier, the Data, the
IV/Counter/Nonce when the server chose it, and the GCM tag.
"""

from __future__ import annotations

from vmcrypt.kmip.items import byte_string, text
from vmcrypt.kmip.tags import CryptographicUsageMask, State, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms import cipher
from vmcrypt.kms.context import Context, response
from vmcrypt.kms.operations._usage import usable_key


def run(ctx: Context, payload: Item) -> Item:
    """The ciphertext of the request's Data under the named key."""
    uid = ctx.uid(payload)
    key, params = usable_key(ctx, uid, operation="Encrypt",
                             mask=CryptographicUsageMask.ENCRYPT, states=(State.ACTIVE,))
    sealed = cipher.encrypt(key, cipher.request_of(payload, params))
    return response(
        text(Tag.UNIQUE_IDENTIFIER, uid),
        byte_string(Tag.DATA, sealed.data),
        byte_string(Tag.IV_COUNTER_NONCE, sealed.iv) if sealed.iv is not None else None,
        byte_string(Tag.AUTHENTICATED_ENCRYPTION_TAG, sealed.tag)
        if sealed.tag is not None else None,
    )
