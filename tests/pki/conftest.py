"""One EC PKI directory per test session: key generation, not the checks, would dominate."""

from __future__ import annotations

import pytest

from vmcrypt.pki import PkiLayout, init_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    """CA, server (localhost, 127.0.0.1) and clients ``admin`` and ``kms-client``."""
    return init_pki(tmp_path_factory.mktemp("pki"), key_type="ec",
                    clients=("admin", "kms-client"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    """A second, unrelated CA with a client of the same name: trust must not transfer."""
    return init_pki(tmp_path_factory.mktemp("other"), key_type="ec", clients=("admin",))
