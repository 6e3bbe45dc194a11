"""The control plane's REST API (FastAPI): app factory, pipeline, errors, routers.

Layout: :mod:`.app` builds the app; :mod:`.deps` is the request pipeline (transaction,
authentication, privilege checks, audit); :mod:`.errors` maps errors to HTTP in one
table; :mod:`.schemas` holds the bodies; :mod:`.routers` one router per resource;
:mod:`.bootstrap` creates the first Administrator.
"""

from __future__ import annotations

from vmcrypt.control.api.app import API_PREFIX, create_app
from vmcrypt.control.api.bootstrap import bootstrap_administrator

__all__ = ["API_PREFIX", "bootstrap_administrator", "create_app"]
