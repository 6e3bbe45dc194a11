"""Decrypt — KMIP 1.4, 4.30: decrypt Data with a managed key that stays in the server.

A Deactivated or Compromised key may still *process* protected data (3.22), so Decrypt
accepts those states as well as Active; its Cryptographic Usage Mask must allow
Decrypt. Data that does not authenticate is a Cryptographic Failure.
"""

from __future__ import annotations

from vmcrypt.kmip.items import byte_string, text
from vmcrypt.kmip.tags import CryptographicUsageMask, State, Tag
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms import cipher
from vmcrypt.kms.context import Context, response
from vmcrypt.kms.operations._usage import usable_key


def run(ctx: Context, payload: Item) -> Item:
    """The plaintext of the request's Data under the named key."""
    uid = ctx.uid(payload)
    key, params = usable_key(ctx, uid, operation="Decrypt",
                             mask=CryptographicUsageMask.DECRYPT,
                             states=(State.ACTIVE, State.DEACTIVATED, State.COMPROMISED))
    plain = cipher.decrypt(key, cipher.request_of(payload, params))
    return response(text(Tag.UNIQUE_IDENTIFIER, uid), byte_string(Tag.DATA, plain))
