"""Encrypted VM disks: a flat ciphertext data file plus a detached LUKS2 header."""
