"""The privilege names are vSphere's, each documented, and the built-in roles are right."""

from __future__ import annotations

import ast
import inspect

from vmcrypt.control import privileges as p

#: The "Cryptographic operations" privileges as issue 4 (and vSphere) lists them.
_VSPHERE_CRYPTOGRAPHIC = {
    "Cryptographer.Access", "Cryptographer.AddDisk", "Cryptographer.Clone",
    "Cryptographer.Decrypt", "Cryptographer.Encrypt", "Cryptographer.EncryptNew",
    "Cryptographer.ManageEncryptionPolicy", "Cryptographer.ManageKeyServers",
    "Cryptographer.ManageKeys", "Cryptographer.Migrate", "Cryptographer.Recrypt",
    "Cryptographer.RegisterHost", "Cryptographer.RegisterVM",
}


def _constants() -> dict[str, str]:
    """Every module-level ``NAME: Final = "Group.Privilege"`` and whether it has a docstring."""
    tree = ast.parse(inspect.getsource(p))
    found: dict[str, str] = {}
    body = tree.body
    for node, following in zip(body, [*body[1:], None], strict=True):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(node.value, ast.Constant)
            and "." in str(node.value.value)
        ):
            documented = (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            )
            assert documented, f"{node.target.id} has no docstring"
            found[node.target.id] = str(node.value.value)
    return found


def test_the_cryptographic_group_is_exactly_vspheres() -> None:
    assert p.CRYPTOGRAPHIC_PRIVILEGES == _VSPHERE_CRYPTOGRAPHIC
    assert {v for v in p.ALL_PRIVILEGES if v.startswith("Cryptographer.")} == (
        _VSPHERE_CRYPTOGRAPHIC
    )


def test_every_constant_is_documented_exported_and_known() -> None:
    constants = _constants()
    assert set(constants.values()) == p.ALL_PRIVILEGES
    assert len(set(constants.values())) == len(constants)
    assert set(constants) <= set(p.__all__)


def test_builtin_roles() -> None:
    assert set(p.BUILTIN_ROLES) == {
        "Administrator", "No cryptography administrator", "Read-only"}
    assert p.BUILTIN_ROLES[p.ADMINISTRATOR] == p.ALL_PRIVILEGES
    no_crypto = p.BUILTIN_ROLES[p.NO_CRYPTOGRAPHY_ADMINISTRATOR]
    assert not no_crypto & p.CRYPTOGRAPHIC_PRIVILEGES
    assert no_crypto | p.CRYPTOGRAPHIC_PRIVILEGES == p.ALL_PRIVILEGES
    assert p.BUILTIN_ROLES[p.READ_ONLY] == {"System.Anonymous", "System.View", "System.Read"}
