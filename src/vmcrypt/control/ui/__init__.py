"""The web UI at ``/ui``: server-rendered pages (Jinja2) made live with htmx.

Pages are read-only views rendered by thin routes (:mod:`.routes`) that call the same
read functions as the REST API's ``GET`` routes; every action (create, encrypt, decrypt,
re-key, …) is sent by the browser straight to the REST API (``/api/v1/…``) with the
session cookie and the ``HX-Request`` header, so the API's privilege checks, order
rules and audit apply unchanged — the UI holds no business rule of its own. It only
hides or disables controls the user's role lacks and explains why an action is not
possible yet (disks before VM home), which the API would refuse anyway.

htmx is vendored (``static/htmx-2.0.11.min.js``, 0BSD): nothing is fetched at run time.
"""

from __future__ import annotations

from vmcrypt.control.ui.routes import create_ui

__all__ = ["create_ui"]
