"""Names and sizes fixed by the LUKS2 format and by vmcrypt's use of it."""

from __future__ import annotations

#: Encryption sector size of the data segment (dm-crypt ``sector_size``).
SECTOR_SIZE = 4096
#: dm-crypt cipher spec of the data segment; the only one vmcrypt reads or writes.
CIPHER = "aes-xts-plain64"
#: XTS-AES-256 takes two 256-bit keys: the 512-bit LUKS2 volume key (the DEK).
VOLUME_KEY_SIZE = 64
#: LUKS2 token type holding the keySafe. Types without the ``luks2-`` prefix are
#: "external" tokens that cryptsetup stores and shows but never interprets ("tokens").
TOKEN_TYPE = "vmcrypt"  # noqa: S105 - a token type name, not a secret

#: One header copy = 4096-byte binary header + JSON area ("Binary header", "JSON area").
#: 16 KiB is cryptsetup's default and leaves a 12 KiB JSON area.
DEFAULT_HDR_SIZE = 16 * 1024
#: cryptsetup's default keyslots area: 16 MiB minus the two 16 KiB header copies.
#: Reserved (sparse) so that a recovery passphrase keyslot can be added later.
DEFAULT_KEYSLOTS_SIZE = 16 * 1024 * 1024 - 2 * DEFAULT_HDR_SIZE
#: Lower bound for the PBKDF2 digest iterations ("digests"); cryptsetup's own minimum.
MIN_DIGEST_ITERATIONS = 1000

_BINARY_HEADER_SIZE = 4096
# "Binary header": hdr_size (binary header + JSON area) must be one of these; the
# secondary copy starts at offset hdr_size, so these are also the offsets probed for
# a secondary copy when the primary is unreadable ("Header recovery").
_HDR_SIZES = tuple(kib * 1024 for kib in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096))
# NUL-terminated string fields of the binary header (see binary._BINARY).
_LABEL_SIZE = 48
_UUID_SIZE = 40
