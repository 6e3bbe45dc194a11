"""Errors of the control plane.

::

    VmcryptError
    └── control.ControlError          — the control plane refused or could not act
        ├── NotFound                  — no such object (HTTP 404)
        ├── Conflict                  — the object exists, or its state forbids the
        │                               change: a duplicate name, a VM home that is still
        │                               needed by an encrypted disk (HTTP 409)
        ├── PermissionDenied          — the caller is known but lacks a privilege
        │                               (HTTP 403)
        └── AuthenticationFailed      — one opaque error for every bad credential:
                                        unknown, revoked or expired token, disabled user
                                        (HTTP 401)

The database layer raises these; the API maps each to its HTTP status in one table
later. ``AuthenticationFailed`` never says *which* check failed, so a caller learns
nothing about the tokens that exist.
"""

from __future__ import annotations

from vmcrypt.exceptions import VmcryptError

__all__ = [
    "AuthenticationFailed",
    "Conflict",
    "ControlError",
    "NotFound",
    "PermissionDenied",
]


class ControlError(VmcryptError):
    """The control plane refused a request or could not carry it out."""


class NotFound(ControlError):
    """The named object does not exist (or is not visible to the caller)."""


class Conflict(ControlError):
    """The request clashes with what exists: a duplicate name or a forbidden state."""


class PermissionDenied(ControlError):
    """The caller authenticated but its role lacks the privilege the operation needs."""

    def __init__(self, privilege: str) -> None:
        super().__init__(f"permission denied: the privilege {privilege!r} is required")
        self.privilege = privilege


class AuthenticationFailed(ControlError):
    """The credentials did not identify an active user; deliberately says no more."""

    def __init__(self) -> None:
        super().__init__("authentication failed: present a valid, unexpired API token")
