"""``vmcrypt vm clone`` and ``vmcrypt vm migrate``: copies and moves of VMs with their keys.

Registered on ``vm_app`` by :mod:`vmcrypt.cli.vm`. A clone is a job on the VM's host,
followed with a progress bar through ``/vms/{id}/jobs/{job}`` (which also records the
clone once the job succeeded); ``--json`` prints the clone. A migration within its
cluster answers at once; to another cluster the KEKs are pushed there first and the
files relayed as a job, followed with a progress bar like a clone. This command only ever sees
key IDs.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

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
from vmcrypt.cli.output import out, print_json, progress_bar
from vmcrypt.cli.vm import _FINAL, POLL, JobFailed, NameArg, QuietOpt, _follow, vm_app

__all__ = ["clone", "migrate"]

def _follow_clone(api: Any, vm_id: int, job: dict[str, Any], *,
                  quiet: bool) -> dict[str, Any]:
    """Poll the clone job with a progress bar; the clone once recorded, or JobFailed."""
    status: dict[str, Any] = {"job": job, "clone": None}
    with progress_bar("clone", enabled=not quiet) as update:
        while True:
            status = api.get(f"/vms/{vm_id}/jobs/{job['id']}")
            job = status["job"]
            if update and job.get("bytes_total"):
                update(int(job["bytes_done"]), int(job["bytes_total"]))
            if job["state"] in _FINAL:
                break
            time.sleep(POLL)
    if job["state"] != "succeeded" or status["clone"] is None:
        raise JobFailed(f"clone job {job['id']} {job['state']}: "
                        f"{job.get('error') or 'cancelled'}; nothing of the clone was kept")
    clone: dict[str, Any] = status["clone"]
    return clone


@vm_app.command("clone")
def clone(
    name: NameArg,
    new_name: Annotated[str, typer.Argument(help="The clone's name (unused by any VM).")],
    host: Annotated[
        str | None, typer.Option("--host", help="A host of the VM's cluster to do the copy "
                                 "(default: the VM's own host).")
    ] = None,
    quiet: QuietOpt = False,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Clone a VM with new keys (a new KEK, new DEKs), following the job with a bar.

    The clone lands on the same datastore; move it with `vmcrypt vm migrate` after.
    Example: vmcrypt vm clone web1 web1-test
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        vm_id = resolve_id(api, "/vms", name, what="vm")
        body: dict[str, Any] = {"name": new_name}
        if host is not None:
            body["host_id"] = resolve_id(api, "/hosts", host, what="host")
        job = api.post(f"/vms/{vm_id}/clone", body)
        made = _follow_clone(api, vm_id, job, quiet=quiet or as_json)
    if as_json:
        print_json(made)
    else:
        keys = made.get("key_ids", {}).get("home")
        note = f" under new key {keys}" if keys else (" with new keys" if made["encrypted"]
                                                       else " (unencrypted)")
        out.print(f"cloned {name} as {new_name}{note}", highlight=False, markup=False)


@vm_app.command("migrate")
def migrate(
    name: NameArg,
    host: Annotated[str, typer.Option("--host", help="The host the VM moves to.")],
    datastore: Annotated[
        str | None, typer.Option("--datastore", help="Where its files go, when that host "
                                 "reaches several datastores.")
    ] = None,
    quiet: QuietOpt = False,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Move a VM to another host; to another cluster its keys go first, then its files.

    Within its cluster only the registration moves (at once). To another datastore the
    files are relayed as a job, followed with a progress bar (`vmcrypt vm cancel JOB`
    stops it; the VM then stays where it was). `--json` prints the VM once moved.
    Example: vmcrypt vm migrate web1 --host esx3
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        vm_id = resolve_id(api, "/vms", name, what="vm")
        body: dict[str, Any] = {"host_id": resolve_id(api, "/hosts", host, what="host")}
        if datastore is not None:
            body["datastore_id"] = resolve_id(api, "/datastores", datastore,
                                              what="datastore")
        moved = api.post(f"/vms/{vm_id}/migrate", body)
        if "instance_uuid" not in moved:  # 202: a relay job, followed to its end
            _follow(api, moved, quiet=quiet or as_json)
            moved = api.get(f"/vms/{vm_id}")
    if as_json:
        print_json(moved)
    else:
        out.print(f"migrated {name} to {host}", highlight=False, markup=False)
