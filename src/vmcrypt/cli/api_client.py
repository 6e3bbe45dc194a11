"""The CLI's connection to the control plane REST API: settings, one client, errors.

This module is the strict point of cut-off between the commands and HTTP. Commands ask
:class:`ApiClient` for JSON and get Python values back, or a :class:`VmcryptError`
subclass whose message is one line: the server's own ``message`` for a refused request
(401 → :class:`AuthenticationFailed`, 403 → :class:`PermissionDenied` naming the
privilege, 404 → :class:`NotFound`, 409 → :class:`Conflict`, 422 → :class:`UsageError`
with each field's reason), or :class:`ControlPlaneUnreachable` naming the URL. No
``httpx`` exception ever leaves this module, so the CLI never shows a traceback for a
network or server problem.

Settings come from flags or the environment, as govc does: ``--url``/``VMCRYPT_URL``
(default ``https://127.0.0.1:8440``), ``--token``/``VMCRYPT_TOKEN`` or
``--token-file``/``VMCRYPT_TOKEN_FILE``, and ``--ca``/``VMCRYPT_CA`` for the control
plane's CA certificate. The token goes in the ``Authorization`` header and nowhere else:
it is never printed, logged or put into an error message.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
import typer

from vmcrypt.control.exceptions import (
    AuthenticationFailed,
    Conflict,
    ControlError,
    NotFound,
    PermissionDenied,
)
from vmcrypt.exceptions import UsageError
from vmcrypt.providers.exceptions import BackupError, ProviderError

__all__ = [
    "DEFAULT_URL",
    "ApiClient",
    "CaOpt",
    "ControlPlaneUnreachable",
    "JsonOpt",
    "TokenFileOpt",
    "TokenOpt",
    "UrlOpt",
    "connect",
    "error_from_response",
    "post_named_action",
    "resolve_id",
]

DEFAULT_URL: Final = "https://127.0.0.1:8440"
API_PREFIX: Final = "/api/v1"
_TIMEOUT: Final = 30.0

UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="VMCRYPT_URL", show_envvar=True,
                 help="The control plane's base URL."),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="VMCRYPT_TOKEN", show_envvar=True, show_default=False,
                 help="API token (vmct_…). Prefer the variable or --token-file: a flag "
                 "shows in the process list."),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option("--token-file", envvar="VMCRYPT_TOKEN_FILE", show_envvar=True,
                 help="File holding the API token."),
]
CaOpt = Annotated[
    Path | None,
    typer.Option("--ca", envvar="VMCRYPT_CA", show_envvar=True,
                 help="CA certificate (PEM) of the control plane, for HTTPS."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]


class ControlPlaneUnreachable(ControlError):
    """No answer from the control plane: refused, timed out, or TLS not trusted."""


@dataclass(frozen=True)
class ApiClient:
    """JSON over HTTP to ``/api/v1``, with every failure turned into one vmcrypt error."""

    url: str
    http: httpx.Client = field(repr=False)

    def get(self, path: str, *, params: dict[str, Any] | None = None) -> Any:
        """``GET`` a resource and return its JSON body."""
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """``POST`` a JSON body and return the JSON answer (``None`` for 204)."""
        response = self.request("POST", path, json=body if body is not None else {})
        return None if response.status_code == 204 else response.json()

    def delete(self, path: str) -> None:
        """``DELETE`` a resource."""
        self.request("DELETE", path)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a non-2xx answer or a network failure raises a vmcrypt error."""
        try:
            response = self.http.request(method, f"{API_PREFIX}{path}", **kwargs)
        except httpx.ConnectError as exc:
            raise ControlPlaneUnreachable(_connect_message(self.url, exc)) from None
        except httpx.TimeoutException:
            raise ControlPlaneUnreachable(
                f"the control plane at {self.url} did not answer within {_TIMEOUT:.0f} s"
            ) from None
        except httpx.HTTPError as exc:
            raise ControlPlaneUnreachable(
                f"cannot talk to the control plane at {self.url}: {type(exc).__name__}"
            ) from None
        if response.is_success:
            return response
        raise error_from_response(response)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def connect(*, url: str, token: str | None, token_file: Path | None,
            ca: Path | None) -> ApiClient:
    """An :class:`ApiClient` for the settings of one command (flags, then environment)."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url!r} must start with https:// (or http:// for tests)")
    secret = _token(token, token_file)
    verify: ssl.SSLContext | bool = True
    if ca is not None:
        if not ca.is_file():
            raise UsageError(f"--ca {ca}: no such file")
        try:
            verify = ssl.create_default_context(cafile=str(ca))
        except ssl.SSLError:
            raise UsageError(f"--ca {ca}: not a PEM CA certificate") from None
    http = httpx.Client(
        base_url=url, verify=verify, timeout=_TIMEOUT,
        headers={"Authorization": f"Bearer {secret}", "Accept": "application/json"},
    )
    return ApiClient(url=url, http=http)


def _token(token: str | None, token_file: Path | None) -> str:
    if token is None and token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"--token-file {token_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--token-file {token_file}: not a text file") from None
    token = (token or "").strip()
    if not token:
        raise UsageError(
            "no API token: set VMCRYPT_TOKEN or VMCRYPT_TOKEN_FILE, or pass --token-file FILE"
        )
    if any(c.isspace() or not c.isprintable() for c in token):
        # Never echo it: a pasted token with a stray character is still a secret.
        raise UsageError("the API token contains spaces or control characters; check it")
    return token


def _connect_message(url: str, exc: httpx.ConnectError) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"TLS with the control plane at {url} failed: its certificate is not "
                "trusted; pass the control plane's CA with --ca FILE (or VMCRYPT_CA)")
    if "SSL" in text:
        return (f"TLS handshake with {url} failed: is it serving HTTPS on that port? "
                "(check --url or VMCRYPT_URL)")
    return (f"cannot connect to the control plane at {url}: is it running? "
            "(check --url or VMCRYPT_URL)")


#: Status → error class for refused requests whose message is the server's own.
_BY_STATUS: Final[dict[int, type[ControlError | UsageError | ProviderError]]] = {
    404: NotFound, 409: Conflict, 422: UsageError, 502: ProviderError,
}
#: Error code → class for 400 answers, which carry several kinds of mistakes.
_BY_CODE: Final[dict[str, type[UsageError | ProviderError]]] = {
    "usage_error": UsageError, "backup_error": BackupError,
}


def error_from_response(response: httpx.Response) -> ControlError | UsageError | ProviderError:
    """The vmcrypt error for a refused request, from the server's ``{error, message}``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    status = response.status_code
    # One line, whatever the server sent: the CLI prints it after "error: ".
    message = " ".join(str(body.get("message") or f"HTTP {status}").split())
    if status == 401:
        return AuthenticationFailed()
    if status == 403:
        return PermissionDenied(str(body.get("privilege") or "unknown"))
    cls = _BY_STATUS.get(status) or _BY_CODE.get(str(body.get("error", "")))
    if cls is not None:
        return cls(message)
    return ControlError(f"the control plane answered {status}: {message}")


def resolve_id(client: ApiClient, collection: str, name: str, *, what: str) -> int:
    """The ID of the object of ``collection`` called ``name`` (or whose ID it is).

    The API addresses objects by ID; people use names, as in govc. A name is looked up
    in the list first, so a cluster called ``7`` is found by name before ID 7.
    """
    rows = client.get(collection)
    for row in rows:
        if row.get("name") == name:
            return int(row["id"])
    if name.isdigit() and any(int(row["id"]) == int(name) for row in rows):
        return int(name)
    raise NotFound(f"no {what} named {name!r}; list them with `vmcrypt {_LS.get(what, 'ls')}`")


_LS: Final = {
    "cluster": "cluster ls", "host": "host ls", "datastore": "datastore ls",
    "key provider": "kp ls", "storage policy": "policy ls", "user": "user ls", "vm": "vm ls",
}


def post_named_action(collection: str, what: str, name: str, action: str, *, url: str,
                      token: str | None, token_file: Path | None, ca: Path | None,
                      as_json: bool, done: str) -> None:
    """``POST {collection}/{id}/{action}`` for the object called ``name``, then report.

    The shape of every "do X to the VM / provider named N" command: resolve the name,
    post, and print either the returned record (``--json``) or one line for people.
    """
    from vmcrypt.cli.output import out, print_json

    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        object_id = resolve_id(api, collection, name, what=what)
        record = api.post(f"{collection}/{object_id}/{action}")
    if as_json:
        print_json(record)
    else:
        out.print(done, highlight=False, markup=False)
