"""The host process's state, shared by every route through one dependency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from vmcrypt.host.api.runner import JobTable
from vmcrypt.host.datastore import Datastore
from vmcrypt.host.keycache import KeyCache
from vmcrypt.host.trust import TrustLink

__all__ = ["HostState", "StateDep"]


@dataclass
class HostState:
    """One host: its identity, datastore, memory-only key cache and job table.

    ``trust`` is the link to the host's Trust Authority (None: no trusted providers);
    the cache uses it for trusted providers' KEKs.
    """

    name: str
    hardware_uuid: str
    datastore: Datastore
    cache: KeyCache = field(default_factory=KeyCache)
    jobs: JobTable = field(default_factory=JobTable)
    trust: TrustLink | None = None

    def __post_init__(self) -> None:
        if self.trust is not None:
            self.cache.attach_trust(self.trust)


def _state(request: Request) -> HostState:
    state = request.app.state.host
    assert isinstance(state, HostState)
    return state


StateDep = Annotated[HostState, Depends(_state)]
