"""Passwords for web logins: salted scrypt hashes in ``users.password_hash``.

API tokens carry 256 random bits and are stored as a plain SHA-256 (see
:mod:`.access`); a password is chosen by a person and can be guessed, so it gets a slow,
memory-hard hash (scrypt, RFC 7914) with a per-user random salt. The stored form is
self-describing — ``scrypt$N$r$p$salt$hash`` (base64) — so the cost can be raised later
and old hashes still verify.

A successful login becomes a short-lived API token (:func:`login`), so the rest of the
API authenticates web sessions and scripts alike. Every failure — unknown user, no
password set, wrong password, disabled user — is one opaque
:class:`~vmcrypt.control.exceptions.AuthenticationFailed`, and an unknown user still
costs one scrypt run, so timing does not tell which names exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmcrypt.control.db.models import User
from vmcrypt.control.db.models.base import now as _now
from vmcrypt.control.db.repo._common import fetch
from vmcrypt.control.db.repo.access import IssuedToken, issue_token
from vmcrypt.control.exceptions import AuthenticationFailed
from vmcrypt.exceptions import UsageError

__all__ = [
    "LOGIN_LABEL",
    "MIN_PASSWORD_LENGTH",
    "SESSION_TTL",
    "generate_password",
    "hash_password",
    "login",
    "set_password",
    "verify_password",
]

#: Shorter passwords are refused; NIST SP 800-63B asks for at least 8, we ask for 12.
MIN_PASSWORD_LENGTH: Final = 12
_MAX_PASSWORD_LENGTH: Final = 1024  # bounds the work an attacker can make us do
#: scrypt cost: N=2**15, r=8, p=1 (32 MiB, ~0.1 s) — OWASP's minimum for scrypt.
_N: Final = 2**15
_R: Final = 8
_P: Final = 1
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32
_SCHEME: Final = "scrypt"
#: The label of tokens made by a login (only those does a logout revoke).
LOGIN_LABEL: Final = "web login"
#: How long a login's token lives: a working day, not forever.
SESSION_TTL: Final = timedelta(hours=8)
# A hash of a random password, verified against when the user is unknown (equal timing).
_DUMMY_HASH: str | None = None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * 1024 * 1024, dklen=_HASH_BYTES)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The stored form of ``password``: ``scrypt$N$r$p$salt$hash``; length checked first."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= _MAX_PASSWORD_LENGTH:
        raise UsageError(f"a password has {MIN_PASSWORD_LENGTH} to "
                         f"{_MAX_PASSWORD_LENGTH} characters")
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, _N, _R, _P)
    return f"{_SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; a malformed ``stored`` is simply False."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != _SCHEME or len(password) > _MAX_PASSWORD_LENGTH:
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)  # constant time


def generate_password() -> str:
    """A random password for a first start: 128 bits, URL-safe, easy to paste."""
    return secrets.token_urlsafe(16)


def set_password(session: Session, *, user_id: int, password: str) -> None:
    """Set (or replace) a user's password; only its hash is stored."""
    fetch(session, User, user_id).password_hash = hash_password(password)
    session.flush()


def login(
    session: Session, *, name: str, password: str, at: datetime | None = None,
    ttl: timedelta = SESSION_TTL,
) -> IssuedToken:
    """Check a user's password and issue a token that expires after ``ttl``.

    One opaque :class:`AuthenticationFailed` for every failure.
    """
    global _DUMMY_HASH  # noqa: PLW0603 — computed once, lazily (it costs one scrypt)
    user = session.scalar(select(User).where(User.name == name))
    if user is None or user.password_hash is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password(generate_password())
        verify_password(password, _DUMMY_HASH)
        raise AuthenticationFailed
    if not verify_password(password, user.password_hash) or user.disabled:
        raise AuthenticationFailed
    moment = at or _now()
    return issue_token(session, user_id=user.id, label=LOGIN_LABEL, expires_at=moment + ttl)
