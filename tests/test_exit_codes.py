"""Every name in EXIT_CODES is a real error class, and every code means one thing."""

from __future__ import annotations

import importlib

from vmcrypt.exceptions import EXIT_CODES, VmcryptError, exit_code_for

_PACKAGES = ("control", "crypto", "disk", "host", "kmip", "kms", "pki", "providers",
             "trust")


def _error_classes() -> dict[str, type[VmcryptError]]:
    for package in _PACKAGES:
        importlib.import_module(f"vmcrypt.{package}")
        importlib.import_module(f"vmcrypt.{package}.exceptions" if package != "kms"
                                else "vmcrypt.kms.errors")
    found: dict[str, type[VmcryptError]] = {}
    pending: list[type[VmcryptError]] = [VmcryptError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def test_every_exit_code_names_an_error_class() -> None:
    classes = _error_classes()
    assert set(EXIT_CODES) <= set(classes), set(EXIT_CODES) - set(classes)


#: Deliberate aliases: a wrong DEK and a wrong KEK are the same news for an operator.
_ALIASES = {"WrongKeyError": "IntegrityError"}


def test_exit_codes_are_distinct_but_for_deliberate_aliases() -> None:
    codes = [code for name, code in EXIT_CODES.items() if name not in _ALIASES]
    assert len(codes) == len(set(codes))
    for alias, target in _ALIASES.items():
        assert EXIT_CODES[alias] == EXIT_CODES[target]
    assert all(1 <= code <= 125 for code in codes)


def test_most_specific_class_wins() -> None:
    classes = _error_classes()
    missing = classes["KeyMissing"]("key 'k' is missing")
    assert exit_code_for(missing) == EXIT_CODES["KeyMissing"]
    assert exit_code_for(classes["ProviderError"]("x")) == EXIT_CODES["ProviderError"]
