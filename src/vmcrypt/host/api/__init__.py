"""The host agent's REST API (``vmcrypt host serve``): keys pushed in, VM operations out.

See ``docs/host.md`` ("The host API"). The control plane is its only client, over
mutual TLS.
"""

from vmcrypt.host.api.app import API_PREFIX, create_app
from vmcrypt.host.api.runner import Job, JobTable
from vmcrypt.host.api.state import HostState

__all__ = ["API_PREFIX", "HostState", "Job", "JobTable", "create_app"]
