"""Errors of the cryptographic core.

``IntegrityError`` is deliberately opaque: a wrong KEK, a tampered wrapped key and a
tampered sealed blob all raise it with the same message, so neither a caller nor an
attacker learns which check failed (the lesson of Fernet's ``InvalidToken``).
"""

from __future__ import annotations

from vmcrypt.exceptions import VmcryptError

__all__ = ["IntegrityError", "InvalidKey"]


class InvalidKey(VmcryptError):
    """Key material has the wrong length or shape; raised before any cryptography runs."""


class IntegrityError(VmcryptError):
    """Unwrapping or unsealing failed: wrong key, or the stored bytes were altered."""

    def __init__(self, what: str = "wrapped key") -> None:
        super().__init__(
            f"cannot open the {what}: the key is wrong or the stored data was altered; "
            "check that the right KEK (key provider and key ID) is used"
        )
