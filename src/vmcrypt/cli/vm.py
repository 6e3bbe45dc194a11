"""``vmcrypt vm …``: VMs through the control plane, which drives their hosts.

Thin wrappers over ``/api/v1/vms``: create (encrypted when the storage policy says so),
list, show, unregister, delete, unlock, add a disk or a vTPM, remove the vTPM, encrypt,
decrypt and re-key, whole or one component (jobs followed with a progress bar until
they end: ``vm jobs``, ``vm wait``), and a disk's plaintext read
and written through its host (``vm disk read|write``), in chunks with a progress bar,
so data can be put in and checked after every operation. The control plane and the
hosts hold the keys; this command only ever sees key IDs and the plaintext the caller
asked for.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer

from vmcrypt.cli.api_client import (
    DEFAULT_URL,
    CaOpt,
    JsonOpt,
    TokenFileOpt,
    TokenOpt,
    UrlOpt,
    connect,
    post_named_action,
    resolve_id,
)
from vmcrypt.cli.disk import parse_size
from vmcrypt.cli.inventory import emit
from vmcrypt.cli.output import out, print_json, progress_bar
from vmcrypt.control.exceptions import Conflict
from vmcrypt.exceptions import UsageError

__all__ = ["vm_app"]

#: Seconds between two polls of a job: a live bar without loading the control plane.
POLL = 0.25
_FINAL = ("succeeded", "failed", "cancelled")

#: Bytes per request: large enough for throughput, small enough for a live progress bar.
CHUNK = 4 << 20

vm_app = typer.Typer(help="Virtual machines: create, inspect, unregister, delete, unlock, "
                     "encrypt, decrypt, re-key, follow jobs, and read or write a disk's "
                     "data through its host.",
                     no_args_is_help=True)
disk_app = typer.Typer(help="A VM disk's plaintext, through its host.", no_args_is_help=True)
vm_app.add_typer(disk_app, name="disk")

NameArg = Annotated[str, typer.Argument(help="The VM's name (or numeric ID).")]
IndexArg = Annotated[int, typer.Argument(min=0, help="Disk index (0 is the first disk).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
_COLUMNS = ["id", "name", "host_id", "encrypted", "vtpm", "registered", "locked",
            "lock_reason"]


def _row(vm: dict[str, Any]) -> dict[str, Any]:
    disks = [f"{d['index']}: {d['size_bytes']} bytes, "
             f"{'encrypted' if d['encrypted'] else 'clear'}" for d in vm.get("disks", [])]
    return {**vm, "key_ids": [f"{k}: {v}" for k, v in vm.get("key_ids", {}).items()],
            "disks": disks}


@vm_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The new VM's name.")],
    host: Annotated[str, typer.Option("--host", help="The host it runs on.")],
    datastore: Annotated[str, typer.Option("--datastore", help="Where its home and disks "
                                           "go.")],
    disk: Annotated[
        list[str] | None, typer.Option("--disk", help="A disk of this size (512M, 1G); "
                                       "repeat for more.")
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", help="Storage policy; an encryption policy "
                                 "makes an encrypted VM.")
    ] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a VM: its home and disks, encrypted as its policy says.

    Example: vmcrypt vm create web1 --host esx1 --datastore shared1 --disk 1G --policy "VM Encryption"
    """  # noqa: E501
    sizes = [parse_size(size) for size in disk or []]
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        body: dict[str, Any] = {
            "name": name, "disks": sizes,
            "host_id": resolve_id(api, "/hosts", host, what="host"),
            "datastore_id": resolve_id(api, "/datastores", datastore, what="datastore"),
        }
        if policy is not None:
            body["storage_policy_id"] = resolve_id(api, "/storage-policies", policy,
                                                   what="storage policy")
        created = api.post("/vms", body)
    emit(as_json, created if as_json else _row(created), title=f"vm {name}")


@vm_app.command("ls")
def ls(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
       ca: CaOpt = None, as_json: JsonOpt = False) -> None:
    """List VMs: encrypted or not, registered, locked and why.

    Example: vmcrypt vm ls --json | jq '.[] | select(.locked)'
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        rows = api.get("/vms")
    emit(as_json, rows, title="vms", columns=_COLUMNS)


@vm_app.command("info")
def info(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
         token_file: TokenFileOpt = None, ca: CaOpt = None, as_json: JsonOpt = False) -> None:
    """Show one VM: instance UUID, host, key ID per component, lock state.

    Example: vmcrypt vm info web1
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        record = api.get(f"/vms/{resolve_id(api, '/vms', name, what='vm')}")
    emit(as_json, record if as_json else _row(record), title=f"vm {record['name']}")


def _post(name: str, action: str, *, url: str, token: str | None, token_file: Path | None,
          ca: Path | None, as_json: bool, done: str) -> None:
    post_named_action("/vms", "vm", name, action, url=url, token=token,
                      token_file=token_file, ca=ca, as_json=as_json, done=done)


@vm_app.command("unregister")
def unregister(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
               token_file: TokenFileOpt = None, ca: CaOpt = None,
               as_json: JsonOpt = False) -> None:
    """Unregister a VM: its files stay, its KEKs leave every host's cache.

    Example: vmcrypt vm unregister web1
    """
    _post(name, "unregister", url=url, token=token, token_file=token_file, ca=ca,
          as_json=as_json, done=f"unregistered {name}; its keys left every host")


@vm_app.command("register")
def register(
    name: Annotated[str | None, typer.Argument(
        help="A known, unregistered VM (name or ID); omit it with --datastore/--uuid.")] = None,
    host: Annotated[str, typer.Option("--host", help="The host (of the VM's datastore) to "
                                      "register it with.")] = "",
    datastore: Annotated[str | None, typer.Option(
        "--datastore", help="Register a VM found on this datastore (with --uuid).")] = None,
    instance_uuid: Annotated[str | None, typer.Option(
        "--uuid", help="The instance UUID of the VM folder on --datastore.")] = None,
    new_name: Annotated[str | None, typer.Option(
        "--name", help="With --datastore: the name to record (default: the VM's own).")] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Register a VM with a host: its KEKs, fetched by key ID, go to every host of the cluster.

    A key that cannot be had leaves the VM registered but locked (see `vm unlock`).
    Examples: vmcrypt vm register web1 --host esx2;
    vmcrypt vm register --datastore shared1 --uuid 4c1e… --host esx1 --name web9
    """
    found = datastore is not None or instance_uuid is not None
    if not host:
        raise UsageError("give --host: the host to register the VM with")
    if found and (name is not None or datastore is None or instance_uuid is None):
        raise UsageError("give either a VM name, or --datastore and --uuid (not both)")
    if not found and name is None:
        raise UsageError("give the VM's name, or --datastore and --uuid for a VM found there")
    if new_name is not None and not found:
        raise UsageError("--name is for a VM found on a datastore (with --datastore/--uuid)")
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        host_id = resolve_id(api, "/hosts", host, what="host")
        if found:
            assert datastore is not None
            body: dict[str, Any] = {
                "datastore_id": resolve_id(api, "/datastores", datastore, what="datastore"),
                "instance_uuid": instance_uuid, "host_id": host_id}
            if new_name is not None:
                body["name"] = new_name
            vm = api.post("/vms/register", body)
        else:
            assert name is not None
            vm = api.post(f"/vms/{resolve_id(api, '/vms', name, what='vm')}/register",
                          {"host_id": host_id})
    if as_json:
        print_json(vm)
    elif vm["locked"]:
        out.print(f"registered {vm['name']} with {host}, but it is locked "
                  f"({vm['lock_reason']}): see `vmcrypt events`, then `vmcrypt vm unlock "
                  f"{vm['name']}`", highlight=False, markup=False)
    else:
        out.print(f"registered {vm['name']} with {host}; its keys are on every host of "
                  "the cluster", highlight=False, markup=False)


@vm_app.command("unlock")
def unlock(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
           token_file: TokenFileOpt = None, ca: CaOpt = None, as_json: JsonOpt = False) -> None:
    """Fetch a locked VM's keys from its provider and push them to its hosts again.

    Example: vmcrypt vm unlock web1
    """
    _post(name, "unlock", url=url, token=token, token_file=token_file, ca=ca,
          as_json=as_json, done=f"unlocked {name}")


@vm_app.command("rm")
def rm(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
       token_file: TokenFileOpt = None, ca: CaOpt = None, as_json: JsonOpt = False) -> None:
    """Delete a VM and its files; its KEKs leave every host's cache.

    Example: vmcrypt vm rm web1
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        vm_id = resolve_id(api, "/vms", name, what="vm")
        api.delete(f"/vms/{vm_id}")
    if as_json:
        print_json({"id": vm_id, "name": name, "deleted": True})
    else:
        out.print(f"deleted {name}", highlight=False, markup=False)


class JobFailed(Conflict):
    """A job ended failed or cancelled; the VM's records match what its host left."""


DiskOpt = Annotated[int | None, typer.Option("--disk", min=0, help="A disk index; "
                                             "without it, VM home.")]


def _follow(api: Any, job: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    """Poll a job until it ends, driving a progress bar; the final job, or JobFailed."""
    label = f"{job['type']} {job.get('component') or ''}".strip()
    with progress_bar(label, enabled=not quiet) as update:
        while job["state"] not in _FINAL:
            time.sleep(POLL)
            job = api.get(f"/jobs/{job['id']}")
            if update and job.get("bytes_total"):
                update(int(job["bytes_done"]), int(job["bytes_total"]))
        if update and job["state"] == "succeeded" and job.get("bytes_total"):
            update(int(job["bytes_total"]), int(job["bytes_total"]))
    if job["state"] != "succeeded":
        raise JobFailed(f"job {job['id']} {job['state']}: {job.get('error') or 'cancelled'}")
    return job


def _crypto(name: str, action: str, disk: int | None, *, quiet: bool, url: str,
            token: str | None, token_file: Path | None, ca: Path | None,
            as_json: bool) -> None:
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        vm_id = resolve_id(api, "/vms", name, what="vm")
        body = {"component": "home" if disk is None else disk}
        job = _follow(api, api.post(f"/vms/{vm_id}/{action}", body), quiet=quiet or as_json)
    if as_json:
        print_json(job)
    else:
        what = "VM home" if disk is None else f"disk {disk}"
        out.print(f"{action}ed {what} of {name} (job {job['id']})", highlight=False,
                  markup=False)


@vm_app.command("encrypt")
def encrypt(name: NameArg, disk: DiskOpt = None, quiet: QuietOpt = False,
            url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
            token_file: TokenFileOpt = None, ca: CaOpt = None,
            as_json: JsonOpt = False) -> None:
    """Encrypt VM home (first), or one disk, and wait for the job with a progress bar.

    Example: vmcrypt vm encrypt web1 && vmcrypt vm encrypt web1 --disk 0
    """
    _crypto(name, "encrypt", disk, quiet=quiet, url=url, token=token,
            token_file=token_file, ca=ca, as_json=as_json)


@vm_app.command("decrypt")
def decrypt(name: NameArg, disk: DiskOpt = None, quiet: QuietOpt = False,
            url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
            token_file: TokenFileOpt = None, ca: CaOpt = None,
            as_json: JsonOpt = False) -> None:
    """Decrypt one disk, or VM home (once no disk is encrypted), and wait for the job.

    Example: vmcrypt vm decrypt web1 --disk 0 && vmcrypt vm decrypt web1
    """
    _crypto(name, "decrypt", disk, quiet=quiet, url=url, token=token,
            token_file=token_file, ca=ca, as_json=as_json)


@vm_app.command("rekey")
def rekey(name: NameArg,
          deep: Annotated[bool, typer.Option("--deep", help="New DEKs and the data "
                                             "re-encrypted (a job), not only a new KEK.")]
          = False,
          home: Annotated[bool, typer.Option("--home", help="VM home only.")] = False,
          disk: Annotated[int | None, typer.Option("--disk", min=0, help="This disk only.")]
          = None,
          quiet: QuietOpt = False, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
          token_file: TokenFileOpt = None, ca: CaOpt = None, as_json: JsonOpt = False) -> None:
    """Re-key a VM: a new KEK (shallow, at once) or new DEKs too (--deep, a job).

    Without --home or --disk every encrypted component is re-keyed.

    Example: vmcrypt vm rekey web1 --deep --disk 0
    """
    if home and disk is not None:
        raise UsageError("give --home or --disk N, not both (neither: every component)")
    component: str | int = "home" if home else "all" if disk is None else disk
    what = {"home": "VM home", "all": "every component"}.get(str(component), f"disk {disk}")
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        vm_id = resolve_id(api, "/vms", name, what="vm")
        answer = api.post(f"/vms/{vm_id}/rekey", {"deep": deep, "component": component})
        if deep:
            answer = _follow(api, answer, quiet=quiet or as_json)
    if as_json:
        print_json(answer)
    elif deep:
        out.print(f"deep re-keyed {what} of {name} (job {answer['id']})", highlight=False,
                  markup=False)
    else:
        key = answer["key_id"] or "a new native KEK (wrapped by the primary key)"
        out.print(f"re-keyed {what} of {name}: {key}", highlight=False, markup=False)


@vm_app.command("add-disk")
def add_disk(
    name: NameArg,
    size: Annotated[str, typer.Option("--size", help="The disk's size (4M, 1G): whole "
                                      "4096-byte sectors.")],
    encrypt: Annotated[
        bool | None, typer.Option("--encrypt/--no-encrypt", help="Default: encrypted iff "
                                  "VM home is.", show_default=False)
    ] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Add a disk, encrypted under VM home's KEK when VM home is encrypted.

    Example: vmcrypt vm add-disk web1 --size 4M
    """
    body: dict[str, Any] = {"size": parse_size(size)}
    if encrypt is not None:
        body["encrypted"] = encrypt
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        vm = api.post(f"/vms/{resolve_id(api, '/vms', name, what='vm')}/disks", body)
    if as_json:
        print_json(vm)
        return
    disk = vm["disks"][-1] if vm.get("disks") else {"index": "?", "encrypted": encrypt}
    state = "encrypted" if disk.get("encrypted") else "clear"
    out.print(f"added disk {disk['index']} ({state}) to {name}", highlight=False,
              markup=False)


@vm_app.command("add-vtpm")
def add_vtpm(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
             token_file: TokenFileOpt = None, ca: CaOpt = None,
             as_json: JsonOpt = False) -> None:
    """Add a vTPM; VM home must be encrypted (its DEK seals the vTPM state).

    Example: vmcrypt vm add-vtpm web1
    """
    _post(name, "vtpm", url=url, token=token, token_file=token_file, ca=ca,
          as_json=as_json, done=f"added a vTPM to {name}")


@vm_app.command("rm-vtpm")
def rm_vtpm(name: NameArg, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
            token_file: TokenFileOpt = None, ca: CaOpt = None,
            as_json: JsonOpt = False) -> None:
    """Remove the vTPM and its sealed state (VM home can then be decrypted).

    Example: vmcrypt vm rm-vtpm web1 && vmcrypt vm decrypt web1
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        vm_id = resolve_id(api, "/vms", name, what="vm")
        had = bool(api.get(f"/vms/{vm_id}").get("vtpm"))
        vm = api.request("DELETE", f"/vms/{vm_id}/vtpm").json()
    if as_json:
        print_json(vm)
    else:
        done = f"removed the vTPM of {name}" if had else f"{name} has no vTPM: nothing to do"
        out.print(done, highlight=False, markup=False)


@vm_app.command("jobs")
def jobs(name: Annotated[str | None, typer.Argument(help="Only this VM's jobs.")] = None,
         url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
         ca: CaOpt = None, as_json: JsonOpt = False) -> None:
    """List jobs, newest first, as last polled (``vm wait`` follows one).

    Example: vmcrypt vm jobs web1
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        params = {} if name is None else {"vm_id": resolve_id(api, "/vms", name, what="vm")}
        rows = api.get("/jobs", params=params)
    emit(as_json, rows, title="jobs", columns=["id", "type", "state", "progress_percent",
                                               "bytes_done", "bytes_total", "error"])


@vm_app.command("wait")
def wait(job_id: Annotated[int, typer.Argument(help="The job's ID.")],
         quiet: QuietOpt = False, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
         token_file: TokenFileOpt = None, ca: CaOpt = None, as_json: JsonOpt = False) -> None:
    """Follow a job with a progress bar until it ends; fails unless it succeeded.

    Example: vmcrypt vm wait 12 --json
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        job = _follow(api, api.get(f"/jobs/{job_id}"), quiet=quiet or as_json)
    if as_json:
        print_json(job)
    else:
        out.print(f"job {job_id} succeeded", highlight=False, markup=False)


@vm_app.command("cancel")
def cancel(job_id: Annotated[int, typer.Argument(help="The job's ID (see vm jobs).")],
           url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
           ca: CaOpt = None, as_json: JsonOpt = False) -> None:
    """Ask a running job to stop at a safe point; the VM's data stays readable either way.

    The host stops between chunks and leaves the disk consistent (a cancelled encrypt
    or decrypt can be started again; a cancelled clone leaves nothing behind).

    Example: vmcrypt vm cancel 12
    """
    with connect(url=url, token=token, token_file=token_file, ca=ca) as api:
        job = api.post(f"/jobs/{job_id}/cancel")
    if as_json:
        print_json(job)
    else:
        out.print(f"job {job_id}: cancel requested (state {job['state']})", highlight=False,
                  markup=False)


@disk_app.command("read")
def disk_read(
    name: NameArg, index: IndexArg,
    length: Annotated[str, typer.Option("--length", "-l", help="Bytes to read (4096, 1M).")],
    offset: Annotated[str, typer.Option("--offset", help="Where to start.")] = "0",
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")
    ] = None,
    quiet: QuietOpt = False,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None,
) -> None:
    """Read a range of a disk's plaintext, decrypted by the VM's host.

    Example: vmcrypt vm disk read web1 0 --offset 1M --length 4096 | hexdump -C
    """
    start, size = parse_size(offset), parse_size(length)
    with (connect(url=url, token=token, token_file=token_file, ca=ca) as api,
          _Sink(output) as sink, progress_bar(f"read {name}", enabled=not quiet
                                              and size > CHUNK) as update):
        path = f"/vms/{resolve_id(api, '/vms', name, what='vm')}/disks/{index}/data"
        done = 0
        while done < size:
            count = min(CHUNK, size - done)
            data = api.request("GET", path, params={"offset": start + done,
                                                    "length": count}).content
            sink.write(data)
            done += len(data)
            if update:
                update(done, size)
            if len(data) < count:
                break


@disk_app.command("write")
def disk_write(
    name: NameArg, index: IndexArg,
    source: Annotated[Path, typer.Argument(help="File whose bytes to write ('-': stdin).")],
    offset: Annotated[str, typer.Option("--offset", help="Where to start.")] = "0",
    quiet: QuietOpt = False,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, token_file: TokenFileOpt = None,
    ca: CaOpt = None, as_json: JsonOpt = False,
) -> None:
    """Write a file's bytes into a disk; the host encrypts them if the disk is encrypted.

    Example: vmcrypt vm disk write web1 0 boot.img --offset 0
    """
    start = parse_size(offset)
    data = _read_source(source)
    written = 0
    with (connect(url=url, token=token, token_file=token_file, ca=ca) as api,
          progress_bar(f"write {name}", enabled=not quiet and len(data) > CHUNK) as update):
        path = f"/vms/{resolve_id(api, '/vms', name, what='vm')}/disks/{index}/data"
        for first in range(0, len(data), CHUNK):
            chunk = data[first:first + CHUNK]
            answer = api.request("PUT", path, params={"offset": start + first},
                                 content=chunk).json()
            written += int(answer.get("written", len(chunk)))
            if update:
                update(written, len(data))
    if as_json:
        print_json({"vm": name, "disk": index, "offset": start, "written": written})
    else:
        out.print(f"wrote {written} bytes to disk {index} of {name} at offset {start}",
                  highlight=False, markup=False)


def _read_source(source: Path) -> bytes:
    if str(source) == "-":
        return sys.stdin.buffer.read()
    try:
        return source.read_bytes()
    except OSError as exc:
        raise UsageError(f"{source}: {exc.strerror or exc}") from None


class _Sink:
    """stdout's binary stream, or a new file, as a context manager."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.file: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        if self.path is None:
            return sys.stdout.buffer
        self.file = self.path.open("xb")
        return self.file

    def __exit__(self, *_exc: object) -> None:
        if self.file is not None:
            self.file.close()
        else:
            sys.stdout.buffer.flush()


from vmcrypt.cli import vm_moves as _vm_moves  # noqa: E402,F401  (vm clone, vm migrate)
