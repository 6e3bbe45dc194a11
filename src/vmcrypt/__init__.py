"""vmcrypt: virtual machine encryption with KEKs from a key provider and DEKs per VM and disk."""

from vmcrypt.exceptions import UsageError, VmcryptError

__version__ = "0.1.0"

__all__ = ["UsageError", "VmcryptError", "__version__"]
