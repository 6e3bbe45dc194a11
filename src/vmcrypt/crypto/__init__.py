"""The cryptographic core: vmcrypt's hazmat layer.

No I/O and no knowledge of VMs lives here: XTS-AES-256 sector encryption with dm-crypt
semantics, AES key wrap with padding, AES-256-GCM sealing, key generation, and the
keySafe envelope recipe that joins a KEK and a DEK.
"""

from vmcrypt.crypto.aead import seal, unseal
from vmcrypt.crypto.exceptions import IntegrityError, InvalidKey
from vmcrypt.crypto.keys import (
    AEAD_KEY_SIZE,
    KEK_SIZE,
    XTS_KEY_SIZE,
    constant_time_equal,
    generate_aead_key,
    generate_kek,
    generate_xts_key,
)
from vmcrypt.crypto.keysafe import KeySafe, open_keysafe, rewrap_keysafe, seal_keysafe
from vmcrypt.crypto.keywrap import unwrap_key, wrap_key
from vmcrypt.crypto.xts import SectorCipher

__all__ = [
    "AEAD_KEY_SIZE",
    "KEK_SIZE",
    "XTS_KEY_SIZE",
    "IntegrityError",
    "InvalidKey",
    "KeySafe",
    "SectorCipher",
    "constant_time_equal",
    "generate_aead_key",
    "generate_kek",
    "generate_xts_key",
    "open_keysafe",
    "rewrap_keysafe",
    "seal",
    "seal_keysafe",
    "unseal",
    "unwrap_key",
    "wrap_key",
]
