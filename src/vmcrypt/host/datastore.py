"""The on-disk layout of VMs on a datastore folder shared by the hosts of a cluster.

::

    DATASTORE/
      <instance uuid>/
        vm.json           name, instance UUID, disks, per-component encryption facts,
                          the VM home keySafe, and the home blobs (see below)
        .vm.lock          flock target: one writer per VM across every host
        disk-<n>.img      a vmcrypt disk: raw, or XTS ciphertext …
        disk-<n>.img.luks … with its detached LUKS2 header (holding the disk's keySafe)

The VM home's *blobs* — the sensitive part of the config, the NVRAM and the vTPM state
— live inside vm.json, base64-encoded: plaintext for an unencrypted home, AES-256-GCM
sealed under the VM home DEK for an encrypted one (sealing is done by
:mod:`vmcrypt.host.vm`; this module never sees a key). Keeping them in the one file means
a single atomic rename commits every change of the home's encryption state: killed at
any instant, vm.json is either the old or the new config, never a mix.

Two hosts of a cluster reach the same folder (shared storage). Writers take the VM's
exclusive lock (``flock`` on ``.vm.lock``, non-blocking: a busy VM is :class:`VmBusy`,
never a wait); disk I/O takes it shared, so I/O can run beside I/O but never beside an
encrypt, decrypt or re-key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmcrypt.crypto.keysafe import KeySafe
from vmcrypt.disk.files import fsync_dir
from vmcrypt.host.exceptions import ConfigError, NoSuchDisk, VmBusy, VmExists, VmNotFound
from vmcrypt.providers.base import KekRef

__all__ = [
    "BLOB_ROLES",
    "CONFIG_NAME",
    "Datastore",
    "DiskRecord",
    "KeyFacts",
    "VmRecord",
]

CONFIG_NAME = "vm.json"
LOCK_NAME = ".vm.lock"
#: The VM home blobs, each sealed with its role in the associated data.
BLOB_ROLES = ("config", "nvram", "vtpm")
_FORMAT = 1
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class KeyFacts:
    """Which KEK protects a component: provider ID and key ID or wrapped KEK (public)."""

    provider_id: str
    key_id: str | None = None
    wrapped_kek: bytes | None = field(default=None, repr=False)

    @property
    def ref(self) -> KekRef:
        return KekRef(key_id=self.key_id, wrapped_kek=self.wrapped_kek)

    @classmethod
    def of(cls, keysafe: KeySafe) -> KeyFacts:
        return cls(keysafe.provider_id, keysafe.key_id, keysafe.wrapped_kek)

    def to_dict(self) -> dict[str, Any]:
        wrapped = self.wrapped_kek
        return {
            "provider_id": self.provider_id,
            "key_id": self.key_id,
            "wrapped_kek": None if wrapped is None else base64.b64encode(wrapped).decode(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> KeyFacts:
        wrapped = data.get("wrapped_kek")
        return cls(
            provider_id=str(data["provider_id"]),
            key_id=data.get("key_id"),
            wrapped_kek=None if wrapped is None else _unb64(wrapped),
        )


@dataclass(frozen=True)
class DiskRecord:
    """One disk of a VM as vm.json lists it; the header beside the file is the truth."""

    index: int
    size: int
    encryption: KeyFacts | None = None

    @property
    def file_name(self) -> str:
        return f"disk-{self.index}.img"


@dataclass(frozen=True)
class VmRecord:
    """Everything vm.json holds. ``blobs`` are sealed iff ``home_keysafe`` is set."""

    instance_uuid: str
    name: str
    disks: tuple[DiskRecord, ...] = ()
    home_keysafe: KeySafe | None = None
    has_vtpm: bool = False
    blobs: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def home_encrypted(self) -> bool:
        return self.home_keysafe is not None

    def disk(self, index: int) -> DiskRecord:
        for disk in self.disks:
            if disk.index == index:
                return disk
        raise NoSuchDisk(
            f"VM {self.instance_uuid} has no disk {index}; "
            f"its disks are {[d.index for d in self.disks]}"
        )

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "format": _FORMAT,
            "name": self.name,
            "instance_uuid": self.instance_uuid,
            "home": {
                "encrypted": self.home_encrypted,
                "encryption": None
                if self.home_keysafe is None
                else KeyFacts.of(self.home_keysafe).to_dict(),
                "keysafe": None if self.home_keysafe is None else self.home_keysafe.to_dict(),
                "blobs": {k: base64.b64encode(v).decode() for k, v in sorted(self.blobs.items())},
            },
            "vtpm": self.has_vtpm,
            "disks": [
                {
                    "index": d.index,
                    "file": d.file_name,
                    "size": d.size,
                    "encrypted": d.encryption is not None,
                    "encryption": None if d.encryption is None else d.encryption.to_dict(),
                }
                for d in self.disks
            ],
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, where: Path) -> VmRecord:
        try:
            doc = json.loads(raw)
            if doc["format"] != _FORMAT:
                raise ValueError("format")
            home = doc["home"]
            ks = home.get("keysafe")
            return cls(
                instance_uuid=str(doc["instance_uuid"]),
                name=str(doc["name"]),
                home_keysafe=None if ks is None else KeySafe.from_dict(ks),
                has_vtpm=bool(doc["vtpm"]),
                blobs={str(k): _unb64(v) for k, v in home["blobs"].items()},
                disks=tuple(
                    DiskRecord(
                        index=int(d["index"]),
                        size=int(d["size"]),
                        encryption=None
                        if d.get("encryption") is None
                        else KeyFacts.from_dict(d["encryption"]),
                    )
                    for d in doc["disks"]
                ),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                f"{where} is not a vmcrypt VM config (or it was damaged); "
                "restore it from a backup of the datastore"
            ) from None


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("base64")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("base64") from None


class Datastore:
    """A datastore folder: where each VM's folder lives, and how it is read and written."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Datastore({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------
    def vm_dir(self, vm_id: str) -> Path:
        """The VM's folder; ``vm_id`` must be an instance UUID (no path tricks)."""
        if not _UUID.match(vm_id):
            raise VmNotFound(f"{vm_id!r} is not a VM instance UUID (lower-case, dashed)")
        return self.root / vm_id

    def config_path(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / CONFIG_NAME

    def disk_path(self, vm_id: str, index: int) -> Path:
        return self.vm_dir(vm_id) / DiskRecord(index, 0).file_name

    def vm_ids(self) -> list[str]:
        """Instance UUIDs of the VMs on this datastore."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if _UUID.match(p.name) and (p / CONFIG_NAME).exists()
        )

    def exists(self, vm_id: str) -> bool:
        return self.config_path(vm_id).exists()

    # -- vm.json ------------------------------------------------------------------------
    def read(self, vm_id: str) -> VmRecord:
        """Read vm.json; no lock is needed, writers replace it atomically."""
        path = self.config_path(vm_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise VmNotFound(f"no VM {vm_id} on datastore {self.root}") from None
        record = VmRecord.from_json(raw, path)
        if record.instance_uuid != vm_id:
            raise ConfigError(f"{path} names VM {record.instance_uuid}, not {vm_id}")
        return record

    def write(self, record: VmRecord) -> None:
        """Replace vm.json atomically: temp file, fsync, rename, fsync the folder."""
        path = self.config_path(record.instance_uuid)
        tmp = path.with_name(f".{CONFIG_NAME}.{uuid.uuid4().hex}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(record.to_json())
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_dir(path)
        finally:
            tmp.unlink(missing_ok=True)

    # -- folders and locks --------------------------------------------------------------
    def create_dir(self, vm_id: str) -> Path:
        """Make the VM's folder; :class:`VmExists` if it is already there."""
        folder = self.vm_dir(vm_id)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
        except FileExistsError:
            raise VmExists(f"VM {vm_id} already exists on datastore {self.root}") from None
        fsync_dir(folder)
        return folder

    def remove_dir(self, vm_id: str) -> None:
        """Delete the VM's folder and everything in it."""
        folder = self.vm_dir(vm_id)
        shutil.rmtree(folder)
        fsync_dir(folder)

    @contextlib.contextmanager
    def lock(self, vm_id: str, *, shared: bool = False) -> Iterator[None]:
        """Hold the VM's lock (exclusive to change it, shared for disk I/O).

        ``flock`` is per open file, so it also keeps two host objects of one process
        apart — the shape of two hosts on one shared folder.
        """
        folder = self.vm_dir(vm_id)
        if not folder.is_dir():
            raise VmNotFound(f"no VM {vm_id} on datastore {self.root}")
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VmBusy(
                    f"VM {vm_id} is busy: another host or operation is changing it; "
                    "wait for that to finish and retry"
                ) from None
            yield
        finally:
            os.close(fd)
