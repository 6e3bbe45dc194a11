"""``vmcrypt cluster|host|datastore|user|token``: the control plane's inventory and users.

Thin commands over the REST API (see ``docs/control-api.md``): each one makes one or
two requests through :mod:`vmcrypt.cli.api_client` and prints a Rich table, or with
``--json`` one JSON document, the API's own objects unchanged. Objects are named by
name, as in govc; the API's numeric IDs appear in the output for scripts.

``vmcrypt host`` already runs the host agent (``host serve``, :mod:`vmcrypt.cli.host`);
:func:`add_host_commands` adds the inventory commands to that group.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from vmcrypt.cli.api_client import (
    DEFAULT_URL,
    CaOpt,
    JsonOpt,
    TokenFileOpt,
    TokenOpt,
    UrlOpt,
    connect,
    resolve_id,
)
from vmcrypt.cli.output import out, print_json, print_record
from vmcrypt.exceptions import UsageError, VmcryptError

__all__ = ["add_host_commands", "cluster_app", "datastore_app", "token_app", "user_app"]

NameArg = Annotated[str, typer.Argument(help="The object's name (or its numeric ID).")]

cluster_app = typer.Typer(help="Clusters: groups of hosts sharing datastores and keys.",
                          no_args_is_help=True)
datastore_app = typer.Typer(help="Datastores: a cluster's shared folder or one host's.",
                            no_args_is_help=True)
user_app = typer.Typer(help="Users of the control plane, each with a built-in role.",
                       no_args_is_help=True)
token_app = typer.Typer(help="API tokens for scripts and the CLI.", no_args_is_help=True)


def print_rows(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A table for people: one row per object, the given fields as columns."""
    table = Table(title=escape(title), title_justify="left")
    for column in columns:
        table.add_column(escape(column))
    for row in rows:
        table.add_row(*("—" if row.get(c) is None else escape(_cell(row.get(c)))
                        for c in columns))
    out.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "—"
    return str(value)


def emit(as_json: bool, data: Any, *, title: str, columns: list[str] | None = None) -> None:
    """Print ``data`` (an object or a list of them) as JSON or as a table."""
    if as_json:
        print_json(data)
    elif isinstance(data, list):
        print_rows(title, data, columns or sorted({k for row in data for k in row}))
    else:
        print_record(title, {k: _cell(v) if isinstance(v, list) else v
                             for k, v in data.items()})


# -- clusters ---------------------------------------------------------------------------


@cluster_app.command("create")
def cluster_create(
    name: Annotated[str, typer.Argument(help="The new cluster's name (unique).")],
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create an empty cluster; hosts join it with `vmcrypt host add`.

    Example: vmcrypt cluster create prod
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        created = api.post("/clusters", {"name": name})
    emit(as_json, created, title=f"cluster {name}")


@cluster_app.command("ls")
def cluster_ls(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
               token_file: TokenFileOpt = None, ca: CaOpt = None,
               as_json: JsonOpt = False) -> None:
    """List clusters, oldest first.

    Example: vmcrypt cluster ls --json | jq '.[].name'
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        rows = api.get("/clusters")
    emit(as_json, rows, title="clusters", columns=["id", "name", "created_at"])


@cluster_app.command("info")
def cluster_info(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                 token_file: TokenFileOpt = None, ca: CaOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Show one cluster and the names of its hosts and datastores.

    Example: vmcrypt cluster info prod
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        cluster_id = resolve_id(api, "/clusters", name, what="cluster")
        record = api.get(f"/clusters/{cluster_id}")
        hosts = api.get("/hosts", params={"cluster_id": cluster_id})
        stores = [d for d in api.get("/datastores") if d.get("cluster_id") == cluster_id]
    record["hosts"] = [h["name"] for h in hosts]
    record["datastores"] = [d["name"] for d in stores]
    emit(as_json, record, title=f"cluster {record['name']}")


@cluster_app.command("set-default-provider")
def cluster_set_default_provider(
    name: NameArg,
    provider: Annotated[str | None, typer.Argument(
        help="Key provider (name or ID); omit with --none.")] = None,
    none: Annotated[bool, typer.Option("--none", help="Back to the global default.")] = False,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Make a key provider the default for VMs created on this cluster's hosts.

    It wins over the global default (``vmcrypt kp default``): typically a trusted key
    provider for a cluster of attested hosts.

    Example: vmcrypt cluster set-default-provider trusted-cluster tp1
    """
    if (provider is None) == (not none):
        raise UsageError("give a key provider, or --none to clear the cluster's default")
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        cluster_id = resolve_id(api, "/clusters", name, what="cluster")
        provider_id = None if provider is None else resolve_id(
            api, "/key-providers", provider, what="key provider")
        record = api.request("PUT", f"/clusters/{cluster_id}/default-key-provider",
                             json={"key_provider_id": provider_id}).json()
    emit(as_json, record, title=f"cluster {name}")


# -- hosts (added to the `vmcrypt host` group of cli/host.py) ---------------------------


def host_add(
    name: Annotated[str, typer.Argument(help="The host's name (unique).")],
    cluster: Annotated[str, typer.Option("--cluster", help="Cluster it joins (name or ID).")],
    hardware_uuid: Annotated[
        str, typer.Option("--hardware-uuid", help="The host's hardware (SMBIOS) UUID.")
    ],
    api_url: Annotated[
        str, typer.Option("--api-url", help="Its agent's URL, e.g. https://esx1:8443.")
    ],
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Record a host as a member of a cluster.

    This is not enrolment: the host shows as disconnected until it enrols and the
    control plane connects to it.

    Example: vmcrypt host add esx1 --cluster prod --hardware-uuid $(cat /sys/class/dmi/id/product_uuid) --api-url https://esx1:8443
    """  # noqa: E501
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        cluster_id = resolve_id(api, "/clusters", cluster, what="cluster")
        created = api.post("/hosts", {"name": name, "hardware_uuid": hardware_uuid,
                                      "cluster_id": cluster_id, "api_url": api_url})
    emit(as_json, created, title=f"host {name}")


def host_ls(
    cluster: Annotated[
        str | None, typer.Option("--cluster", help="Only the hosts of this cluster.")
    ] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """List hosts with their connection state.

    Example: vmcrypt host ls --cluster prod
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        params = None
        if cluster is not None:
            params = {"cluster_id": resolve_id(api, "/clusters", cluster, what="cluster")}
        rows = api.get("/hosts", params=params)
    emit(as_json, rows, title="hosts",
         columns=["id", "name", "cluster_id", "connection_state", "api_url"])


def host_info(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
              token_file: TokenFileOpt = None, ca: CaOpt = None,
              as_json: JsonOpt = False) -> None:
    """Show one host: hardware UUID, cluster, agent URL, connection state, enrolment,
    and its attestation with the Trust Authority (attested / failed with the reason /
    unset), as the host reports it.

    Example: vmcrypt host info esx1 --json
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        host_id = resolve_id(api, "/hosts", name, what="host")
        record = api.get(f"/hosts/{host_id}")
        try:
            status = api.get(f"/hosts/{host_id}/attestation")
        except VmcryptError as exc:  # a control plane without hosts, or the host down
            status = {"state": "unknown", "reason": str(exc)}
    if as_json:
        record["attestation"] = {k: v for k, v in status.items()
                                 if k not in ("host_id", "host")}
    else:
        record["attestation"] = status["state"] + (
            f" ({status['reason']})" if status.get("reason") else "") + (
            f", baseline {status['baseline']}" if status.get("baseline") else "")
    emit(as_json, record, title=f"host {record['name']}")


def add_host_commands(host_app: typer.Typer) -> None:
    """Add ``add``, ``ls`` and ``info`` to the ``vmcrypt host`` group."""
    host_app.command("add")(host_add)
    host_app.command("ls")(host_ls)
    host_app.command("info")(host_info)


# -- datastores -------------------------------------------------------------------------


@datastore_app.command("add")
def datastore_add(
    name: Annotated[str, typer.Argument(help="The datastore's name (unique).")],
    path: Annotated[str, typer.Option("--path", help="Its folder, as the hosts see it.")],
    cluster: Annotated[
        str | None, typer.Option("--cluster", help="Shared by this cluster's hosts.")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Local to this host.")] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Add a datastore: give exactly one of --cluster (shared) or --host (local).

    Example: vmcrypt datastore add shared1 --path /srv/vmcrypt/shared1 --cluster prod
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        body: dict[str, Any] = {"name": name, "path": path}
        if cluster is not None:
            body["cluster_id"] = resolve_id(api, "/clusters", cluster, what="cluster")
        if host is not None:
            body["host_id"] = resolve_id(api, "/hosts", host, what="host")
        created = api.post("/datastores", body)
    emit(as_json, created, title=f"datastore {name}")


@datastore_app.command("ls")
def datastore_ls(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
                 token_file: TokenFileOpt = None, ca: CaOpt = None,
                 as_json: JsonOpt = False) -> None:
    """List datastores and where they belong.

    Example: vmcrypt datastore ls
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        rows = api.get("/datastores")
    emit(as_json, rows, title="datastores", columns=["id", "name", "path", "cluster_id",
                                                     "host_id"])


# -- users and tokens -------------------------------------------------------------------


@user_app.command("create")
def user_create(
    name: Annotated[str, typer.Argument(help="The user's name (unique).")],
    role: Annotated[str, typer.Option("--role", help="Administrator, 'No cryptography "
                                      "administrator' or Read-only.")],
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a user with a built-in role; give it a token with `vmcrypt token issue`.

    Example: vmcrypt user create auditor --role Read-only
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        created = api.post("/users", {"name": name, "role": role})
    emit(as_json, created, title=f"user {name}")


@user_app.command("ls")
def user_ls(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
            token_file: TokenFileOpt = None, ca: CaOpt = None,
            as_json: JsonOpt = False) -> None:
    """List users and their roles.

    Example: vmcrypt user ls
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        rows = api.get("/users")
    emit(as_json, rows, title="users", columns=["id", "name", "role", "disabled"])


@user_app.command("passwd")
def user_passwd(
    name: Annotated[str, typer.Argument(help="The user (name or ID).")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin "
                           "(one line) instead of asking twice.")] = False,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None,
) -> None:
    """Set a user's password for the web UI (at least 12 characters).

    Asked for twice without echo, or read from stdin for scripts; never an argument,
    which would leave it in the shell history and the process list. The control plane
    keeps only a salted scrypt hash.

    Example: vmcrypt user passwd auditor
    """
    import sys

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("New password", hide_input=True,
                                confirmation_prompt=True)
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        user_id = resolve_id(api, "/users", name, what="user")
        api.request("PUT", f"/users/{user_id}/password", json={"password": password})
    out.print(f"password of {escape(name)} set")


@token_app.command("issue")
def token_issue(
    user: Annotated[str, typer.Argument(help="The user the token acts as (name or ID).")],
    label: Annotated[str, typer.Option("--label", help="What the token is for.")] = "",
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="Expiry with a time zone, e.g. 2027-01-01T00:00:00Z."),
    ] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Issue an API token and print it once: the control plane keeps only its hash.

    Only the token goes to stdout, so it can be captured straight into a file.

    Example: vmcrypt token issue auditor --label ci > auditor.token
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        user_id = resolve_id(api, "/users", user, what="user")
        body: dict[str, Any] = {"label": label}
        if expires is not None:
            body["expires_at"] = expires
        issued = api.post(f"/users/{user_id}/tokens", body)
    if as_json:
        print_json({"id": issued["id"], "user": user, "token": issued["token"]})
    else:
        out.print(issued["token"], highlight=False, markup=False)
