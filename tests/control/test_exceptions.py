"""The control plane's errors hang under VmcryptError and say what to do."""

from __future__ import annotations

import pytest

from vmcrypt.control import exceptions
from vmcrypt.control.exceptions import (
    AuthenticationFailed,
    Conflict,
    ControlError,
    NotFound,
    PermissionDenied,
)
from vmcrypt.exceptions import VmcryptError


@pytest.mark.parametrize("cls", [NotFound, Conflict, PermissionDenied, AuthenticationFailed])
def test_rooted_at_vmcrypt_error(cls: type[Exception]) -> None:
    assert issubclass(cls, ControlError)
    assert issubclass(cls, VmcryptError)
    assert cls.__name__ in (exceptions.__doc__ or "")


def test_messages() -> None:
    assert "Cryptographer.Encrypt" in str(PermissionDenied("Cryptographer.Encrypt"))
    assert PermissionDenied("x").privilege == "x"
    assert "token" in str(AuthenticationFailed())
