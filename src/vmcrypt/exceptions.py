"""The root of every error vmcrypt raises on purpose.

::

    VmcryptError
    ├── UsageError               — the caller asked for something invalid (bad size, bad path)
    ├── crypto.InvalidKey        — key material of the wrong length or shape
    ├── crypto.IntegrityError    — one opaque error for every failed unwrap or open:
    │                              wrong KEK, tampered keySafe, tampered sealed blob
    ├── disk.DiskError
    │   ├── disk.HeaderError     — not a LUKS2 header, or both copies corrupt
    │   ├── disk.WrongKeyError   — the DEK does not match the header's digest
    │   ├── disk.ConversionInProgress — a journal says a conversion must be resumed
    │   └── disk.JournalError    — the journal itself is unreadable
    ├── pki.PkiError             — certificates and keys: missing, unreadable, would be
    │                              overwritten (see vmcrypt.pki.exceptions)
    ├── kmip.KmipError           — the KMIP protocol: bad TTLV or message, a failure
    │   │                          answer, an unreachable server (vmcrypt.kmip.exceptions)
    │   └── kms.KmsError         — the key server cannot start: configuration, master key
    ├── providers.ProviderError  — a key provider could not deliver a KEK: the key server
    │                              is unreachable, the key is missing, a native backup is
    │                              invalid or missing (vmcrypt.providers.exceptions)
    ├── host.HostError           — a host operation on a VM: key not on this host, a
    │                              refused order (decrypt disks before home), a busy VM
    │                              (vmcrypt.host.exceptions)
    ├── control.ControlError     — the control plane: not found, conflict, permission
    │                              denied, authentication failed (vmcrypt.control.exceptions)
    └── trust.TrustError         — the Trust Authority: attestation failed, bad token, key
                                   provider unavailable (vmcrypt.trust.exceptions)

User mistakes and internal failures stay distinct all the way up: the CLI maps each class
to an exit code (see ``EXIT_CODES``) and prints the message, which always says what
failed and what to do next, and never contains key bytes.
"""

from __future__ import annotations

__all__ = ["EXIT_CODES", "UsageError", "VmcryptError", "exit_code_for"]


class VmcryptError(Exception):
    """Base class: everything vmcrypt raises deliberately derives from it."""


class UsageError(VmcryptError):
    """The request itself is invalid; nothing was changed."""


#: CLI exit codes by error class name; the most specific class found in the MRO wins.
EXIT_CODES: dict[str, int] = {
    "VmcryptError": 1,
    "UsageError": 2,
    "InvalidKey": 3,
    "IntegrityError": 4,
    "WrongKeyError": 4,
    "DiskError": 5,
    "HeaderError": 6,
    "ConversionInProgress": 7,
    "JournalError": 8,
    "NoSpaceError": 9,
    "PkiError": 10,
    "KmipError": 11,
    "KmipConnectionError": 12,
    "OperationFailed": 13,
    "KmsError": 14,
    "MasterKeyError": 15,
    "ProviderError": 16,
    "KeyServerUnreachable": 17,
    "KeyMissing": 18,
    "NotBackedUp": 19,
    "BackupError": 20,
    "HostError": 21,
    "KeyNotOnHost": 22,
    "StateError": 23,
    "VmBusy": 24,
    "ControlError": 25,
    "NotFound": 26,
    "Conflict": 27,
    "PermissionDenied": 28,
    "AuthenticationFailed": 29,
    "TrustError": 30,
    "AttestationFailed": 31,
    "EvidenceMalformed": 32,
    "TokenInvalid": 33,
    "KeyProviderUnavailable": 34,
    "KekCiphertextInvalid": 35,
    "TrustObjectNotFound": 36,
    "TrustConflict": 37,
    "TrustConfigError": 38,
}


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the CLI exit code of its most specific known class."""
    for cls in type(exc).__mro__:
        code = EXIT_CODES.get(cls.__name__)
        if code is not None:
            return code
    return 1
