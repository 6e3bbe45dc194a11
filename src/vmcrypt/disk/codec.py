"""How logical sectors are stored: raw, or XTS-AES-256 ciphertext with thin holes.

An all-zero 4096-byte stored sector of an encrypted disk is a *hole*: a sector never
written since a thin disk was created. It reads as zeros. Real ciphertext is all zeros
with probability 2^-32768, so the rule costs nothing in correctness and lets a 100 GiB
disk be created instantly. Writes always store real ciphertext, so every sector written
through vmcrypt decrypts identically with cryptsetup (which sees holes as pseudo-random).

Conversions map stored sectors from one codec to another. Between two XTS codecs (deep
re-key) holes stay holes, so the mapping is an exact bijection on stored bytes; the
crash-recovery check in :mod:`vmcrypt.disk.convert` relies on being able to run it in
reverse.
"""

from __future__ import annotations

import numpy as np

from vmcrypt.crypto.xts import SectorCipher

__all__ = ["SECTOR", "RawCodec", "SectorCodec", "XtsCodec", "holes", "transcode"]

SECTOR = 4096
_WORDS = SECTOR // 8
_ZERO_SECTOR = bytes(SECTOR)


def holes(stored: np.ndarray) -> np.ndarray:
    """Boolean mask of all-zero stored sectors in a whole-sector uint8 array.

    Only sectors whose first 8 bytes are zero are scanned in full: ciphertext almost never
    starts so, and a full ``any`` over every sector cost ~3% of a conversion's compute.
    """
    words = stored.view("<u8").reshape(-1, _WORDS)
    mask: np.ndarray = words[:, 0] == 0
    if mask.any():
        candidates = np.flatnonzero(mask)
        mask[candidates] = ~words[candidates].any(axis=1)
    return mask


class SectorCodec:
    """Turns stored sectors into plaintext and back, in place on uint8 arrays."""

    encrypted: bool = False

    def to_plain(
        self, buf: np.ndarray, first_sector: int, hole_mask: np.ndarray | None = None
    ) -> None:
        """Decode ``buf`` (whole sectors starting at ``first_sector``) in place.

        ``hole_mask`` is :func:`holes` of ``buf`` when the caller has it already.
        """

    def to_stored(self, buf: np.ndarray, first_sector: int) -> None:
        """Encode plaintext ``buf`` in place for storage."""


class RawCodec(SectorCodec):
    """An unencrypted disk: stored bytes are the plaintext."""


class XtsCodec(SectorCodec):
    """aes-xts-plain64 with 4096-byte sectors under one DEK; holes read as zeros."""

    encrypted = True

    def __init__(self, dek: bytes, *, threads: int | None = None) -> None:
        self.cipher = SectorCipher(dek, unit_size=SECTOR, threads=threads)

    def to_plain(
        self, buf: np.ndarray, first_sector: int, hole_mask: np.ndarray | None = None
    ) -> None:
        mask = holes(buf) if hole_mask is None else hole_mask
        self.cipher.decrypt_into(buf, buf, first_sector)
        if mask.any():
            buf.reshape(-1, SECTOR)[mask] = 0

    def to_stored(self, buf: np.ndarray, first_sector: int) -> None:
        self.cipher.encrypt_into(buf, buf, first_sector)

    def plain_bytes(self, stored: bytes, first_sector: int) -> bytes:
        """Decode a few sectors given as bytes: the lean path of random 4 KiB reads."""
        plain = self.cipher.decrypt(stored, first_sector)
        zero = [
            i for i in range(len(stored) // SECTOR)
            if stored[i * SECTOR : (i + 1) * SECTOR] == _ZERO_SECTOR
        ]
        if not zero:
            return plain
        out = bytearray(plain)
        for i in zero:
            out[i * SECTOR : (i + 1) * SECTOR] = _ZERO_SECTOR
        return bytes(out)

    def stored_bytes(self, plain: bytes, first_sector: int) -> bytes:
        """Encode a few whole sectors given as bytes (random 4 KiB writes)."""
        return self.cipher.encrypt(plain, first_sector)


def transcode(
    buf: np.ndarray, first_sector: int, src: SectorCodec, dst: SectorCodec
) -> np.ndarray:
    """Re-store sectors written by ``src`` as ``dst`` would, in place.

    Between two encrypted codecs holes are kept as holes, so that ``transcode`` with
    the codecs swapped is its exact inverse. Returns the mask of sectors that were all
    zero before and still are (a writer may skip them and leave holes unallocated).
    """
    sectors = buf.size // SECTOR
    if not src.encrypted:
        dst.to_stored(buf, first_sector)
        # Raw → XTS never yields an all-zero sector; raw → raw changes nothing.
        return np.zeros(sectors, dtype=bool) if dst.encrypted else np.ones(sectors, dtype=bool)
    mask = holes(buf)
    src.to_plain(buf, first_sector, mask)
    dst.to_stored(buf, first_sector)
    if dst.encrypted and mask.any():
        buf.reshape(-1, SECTOR)[mask] = 0
    # Decrypting turns a hole into zeros; re-keying keeps it a hole: unchanged either way.
    return mask
