"""Read and write detached LUKS2 headers, byte-compatible with stock cryptsetup.

An encrypted vmcrypt disk is a flat ciphertext file ``NAME.img`` plus a detached LUKS2
header ``NAME.img.luks``. Writing a *real* LUKS2 header (rather than a private format) is
what makes the disk recoverable without vmcrypt: anyone holding the DEK can add a
passphrase with ``cryptsetup luksAddKey --volume-key-file`` and then open or decrypt the
disk with stock tools (see ``docs/recovery.md``).

The DEK is the LUKS2 *volume key*. vmcrypt stores no passphrase keyslot by default; the
DEK is reachable only by unwrapping the keySafe kept in a LUKS2 token of type
``vmcrypt``. The header still carries the standard PBKDF2 digest of the volume key so
that cryptsetup (and :meth:`Luks2Header.verify_volume_key`) can tell a right DEK from a
wrong one.

References are to the "LUKS2 On-Disk Format Specification" (Milan Brož, cryptsetup
project, version 1.1.x), cited by section title because numbering moved between
revisions:

* "Binary header" — the 4096-byte big-endian structure and its checksum;
* "JSON area" — the NUL-padded metadata that follows each binary header;
* "Keyslots area" — binary keyslot material after the two header copies;
* "Header recovery" / "Secondary header" — the fixed offsets probed when the primary is
  damaged;
* "keyslots", "segments", "digests", "tokens", "config" — the JSON metadata objects.
"""

from __future__ import annotations

from vmcrypt.disk.exceptions import HeaderError  # re-exported: callers may use luks2.HeaderError
from vmcrypt.disk.luks2.constants import (
    CIPHER,
    DEFAULT_HDR_SIZE,
    DEFAULT_KEYSLOTS_SIZE,
    SECTOR_SIZE,
    TOKEN_TYPE,
    VOLUME_KEY_SIZE,
)
from vmcrypt.disk.luks2.constants import MIN_DIGEST_ITERATIONS as MIN_DIGEST_ITERATIONS
from vmcrypt.disk.luks2.header import Luks2Header, build_header, with_keysafe
from vmcrypt.disk.luks2.io import read_header, write_header

__all__ = [
    "CIPHER",
    "DEFAULT_HDR_SIZE",
    "DEFAULT_KEYSLOTS_SIZE",
    "SECTOR_SIZE",
    "TOKEN_TYPE",
    "VOLUME_KEY_SIZE",
    "HeaderError",
    "Luks2Header",
    "build_header",
    "read_header",
    "with_keysafe",
    "write_header",
]
