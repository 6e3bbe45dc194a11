"""One router per resource; :func:`vmcrypt.control.api.app.create_app` mounts them all."""

from __future__ import annotations

from vmcrypt.control.api.routers import (
    clusters,
    datastores,
    events,
    hosts,
    key_providers,
    storage_policies,
    trusted_providers,
    users,
)

__all__ = ["ROUTERS"]

ROUTERS = (
    clusters.router,
    hosts.router,
    datastores.router,
    # Before key_providers: "/key-providers/trusted" is not a provider ID.
    trusted_providers.router,
    key_providers.router,
    storage_policies.router,
    users.router,
    events.router,
)
