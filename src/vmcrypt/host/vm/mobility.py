"""Cloning a VM, and moving its folder to another datastore as a bundle.

**Clone.** The clone is a new VM (new instance UUID) with **new keys**: every disk is
read with the source's DEK and written under a fresh DEK, and the VM home blobs are
resealed under a fresh home DEK bound to the clone's UUID. No DEK is ever copied, so
the source's keys open nothing of the clone and the ciphertexts differ. The new DEKs
are wrapped by the KEK the caller names (a pushed standard KEK, or a new native KEK
made on this host); an unencrypted VM clones as plaintext. vm.json is written last and
anything half made is removed on failure or cancel: no half clone is ever visible.

**Bundle.** Migrating to a host that does not share the datastore moves the VM folder
as a tar stream (:func:`open_bundle`) of what is on disk: vm.json (wrapped keys,
sealed blobs) and the disk files (ciphertext and LUKS2 headers). No key is needed or
added to export it, so whoever relays the stream sees only ciphertext. The receiving
host (:class:`BundleReceiver`) writes into a staging folder, checks that every keySafe
opens with a KEK it holds and that every sealed blob authenticates, and only then
renames the folder into place — one atomic step: the VM is there whole or not at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vmcrypt.crypto.keys import generate_aead_key, generate_xts_key
from vmcrypt.crypto.keysafe import open_keysafe
from vmcrypt.disk import container
from vmcrypt.disk.exceptions import ConversionCancelled, ConversionInProgress
from vmcrypt.disk.files import fsync_dir, header_path, journal_path, no_space
from vmcrypt.exceptions import UsageError
from vmcrypt.host.datastore import CONFIG_NAME, Datastore, DiskRecord, KeyFacts, VmRecord
from vmcrypt.host.exceptions import HostError, StateError, VmExists
from vmcrypt.host.keycache import KeyCache
from vmcrypt.host.vm._common import (
    DISK_DEK,
    HOME_DEK,
    KeySpec,
    Progress,
    kek_of,
    new_kek,
    new_keysafe,
    plain_blobs,
    seal_blobs,
    unseal_blobs,
)
from vmcrypt.host.vm.io import open_disk
from vmcrypt.host.vm.lifecycle import VmInfo, read_vm
from vmcrypt.providers.base import KekRef

__all__ = [
    "BLOCK",
    "Bundle",
    "BundleError",
    "BundleReceiver",
    "check_clone",
    "clone_vm",
    "open_bundle",
]

#: Copy unit of a clone: several XTS chunks, still a smooth progress bar.
_COPY = 4 << 20
#: tar's block size (POSIX.1-2001 ustar): headers and padding are multiples of it.
BLOCK = 512
_ZERO_SECTOR = bytes(4096)
_MEMBER = re.compile(r"^(vm\.json|disk-[0-9]{1,4}\.img(\.luks)?)$")
_MAX_CONFIG = 16 << 20


class BundleError(UsageError, HostError):
    """A received bundle is malformed, truncated, or not the VM it claims to be (422)."""


# -- clone ----------------------------------------------------------------------------
def check_clone(ds: Datastore, record: VmRecord, key: KeySpec | None) -> None:
    """Refuse a clone before anything is made: keys must match the source's encryption.

    An encrypted VM needs a key for the clone (its new keys); an unencrypted one clones
    as plaintext and takes none. A disk in the middle of a conversion cannot be cloned.
    """
    vm_id = record.instance_uuid
    if record.home_encrypted and key is None:
        raise UsageError(f"VM {vm_id} is encrypted: its clone needs a key for its new KEK")
    if not record.home_encrypted and key is not None:
        raise UsageError(f"VM {vm_id} is not encrypted: it clones as plaintext, without a key")
    for disk in record.disks:
        path = ds.disk_path(vm_id, disk.index)
        if journal_path(path).exists() or (
            (disk.encryption is None) == container.is_encrypted(path)
        ):
            raise ConversionInProgress(
                f"VM {vm_id}: a conversion of disk {disk.index} was interrupted; "
                "resume it before cloning the VM"
            )


def clone_vm(
    ds: Datastore,
    cache: KeyCache,
    vm_id: str,
    *,
    name: str,
    key: KeySpec | None = None,
    clone_id: str | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> VmInfo:
    """Clone ``vm_id`` on the same datastore with new DEKs under ``key``'s KEK.

    The source is held exclusively for the copy (a point-in-time copy: no I/O to it
    meanwhile). ``progress`` gets bytes copied and the total of every disk; ``cancel``
    stops between two chunks (:class:`ConversionCancelled`) and the partial clone is
    removed, as on any failure.
    """
    new_id = clone_id or str(uuid.uuid4())
    if new_id == vm_id:
        raise UsageError("a clone needs an instance UUID of its own")
    with ds.lock(vm_id):
        record = ds.read(vm_id)
        check_clone(ds, record, key)
        blobs = plain_blobs(cache, record)  # KeyNotOnHost now, before anything is made
        for disk in record.disks:
            if disk.encryption is not None:
                open_disk(ds, cache, vm_id, disk.index).close()
        made = None if key is None else new_kek(cache, key, new_id)
        ds.create_dir(new_id)
        try:
            with ds.lock(new_id):
                disks = _copy_disks(ds, cache, record, new_id, key, made, progress, cancel)
                home_keysafe = None
                if key is not None and made is not None:
                    ref, kek = made
                    dek = generate_aead_key()
                    home_keysafe = new_keysafe(
                        kek=kek, ref=ref, provider_id=key.provider_id, dek=dek,
                        algorithm=HOME_DEK,
                    )
                    blobs = seal_blobs(dek, new_id, blobs)
                ds.write(VmRecord(instance_uuid=new_id, name=name, disks=tuple(disks),
                                  home_keysafe=home_keysafe, has_vtpm=record.has_vtpm,
                                  blobs=blobs))
        except BaseException:
            with contextlib.suppress(OSError):
                ds.remove_dir(new_id)
            cache.forget_vm(new_id)
            raise
    return read_vm(ds, cache, new_id)


def _copy_disks(
    ds: Datastore,
    cache: KeyCache,
    record: VmRecord,
    new_id: str,
    key: KeySpec | None,
    made: tuple[KekRef, bytes] | None,
    progress: Progress | None,
    cancel: threading.Event | None,
) -> list[DiskRecord]:
    """Copy each disk through the host's memory: decrypted with the old DEK, encrypted
    with a new one. All-zero chunks are not written, so thin disks stay thin."""
    total = sum(d.size for d in record.disks)
    done = 0
    out = []
    for disk in record.disks:
        path = ds.disk_path(new_id, disk.index)
        facts = None
        with open_disk(ds, cache, record.instance_uuid, disk.index) as src:
            if src.encrypted:
                assert key is not None and made is not None
                ref, kek = made
                dek = generate_xts_key()
                keysafe = new_keysafe(kek=kek, ref=ref, provider_id=key.provider_id,
                                      dek=dek, algorithm=DISK_DEK)
                dst = container.create_encrypted(path, size=disk.size, dek=dek,
                                                 keysafe=keysafe, label=new_id)
                facts = KeyFacts.of(keysafe)
            else:
                dst = container.create_raw(path, size=disk.size)
            with dst:
                for offset in range(0, disk.size, _COPY):
                    if cancel is not None and cancel.is_set():
                        raise ConversionCancelled(
                            f"clone of VM {record.instance_uuid} cancelled; "
                            "the partial clone was removed"
                        )
                    chunk = src.read(offset, min(_COPY, disk.size - offset))
                    if chunk.count(0) != len(chunk):
                        dst.write(offset, chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                dst.flush()
        out.append(DiskRecord(index=disk.index, size=disk.size, encryption=facts))
    if progress and total == 0:
        progress(0, 0)
    return out


# -- bundle out -----------------------------------------------------------------------
@dataclass
class Bundle:
    """An open export of a VM folder: its lock held until :meth:`close`."""

    vm_id: str
    files: list[tuple[str, Path, int]]
    _stack: contextlib.ExitStack

    @property
    def size(self) -> int:
        """Exact length of the stream (for Content-Length)."""
        return sum(BLOCK + _padded(size) for _n, _p, size in self.files) + 2 * BLOCK

    def chunks(self, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The tar stream: one header per file, its bytes, padding, two zero blocks."""
        try:
            for name, path, size in self.files:
                info = tarfile.TarInfo(name)
                info.size = size
                info.mode = 0o600
                yield info.tobuf(format=tarfile.GNU_FORMAT)
                with path.open("rb") as src:
                    left = size
                    while left:
                        piece = src.read(min(chunk, left))
                        if not piece:
                            raise BundleError(f"{path} shrank while it was being sent")
                        left -= len(piece)
                        yield piece
                if size % BLOCK:
                    yield bytes(BLOCK - size % BLOCK)
            yield bytes(2 * BLOCK)
        finally:
            self.close()

    def close(self) -> None:
        """Release the VM's lock."""
        self._stack.close()


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def open_bundle(ds: Datastore, vm_id: str) -> Bundle:
    """Lock the VM (exclusively: nothing changes it while it is sent) and list its files.

    Only vm.json and the disks' data files and headers are sent; a disk with an
    interrupted conversion is refused (resume it first).
    """
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(ds.lock(vm_id))
        record = ds.read(vm_id)
        files = [(CONFIG_NAME, ds.config_path(vm_id), ds.config_path(vm_id).stat().st_size)]
        for disk in record.disks:
            path = ds.disk_path(vm_id, disk.index)
            if journal_path(path).exists():
                raise ConversionInProgress(
                    f"VM {vm_id}: a conversion of disk {disk.index} was interrupted; "
                    "resume it before moving the VM"
                )
            files.append((path.name, path, path.stat().st_size))
            if container.is_encrypted(path):
                hdr = header_path(path)
                files.append((hdr.name, hdr, hdr.stat().st_size))
    except BaseException:
        stack.close()
        raise
    return Bundle(vm_id, files, stack)


# -- bundle in ------------------------------------------------------------------------
class BundleReceiver:
    """Receive a bundle into a staging folder; :meth:`commit` checks it and moves it in.

    Fed by pieces of any size (``feed``): a push parser over tar blocks, so the
    receiving host never holds a disk in memory. Zero blocks of a data file are not
    written (a stored zero sector reads as zeros), so thin disks stay thin.
    """

    def __init__(self, ds: Datastore, vm_id: str) -> None:
        self.ds = ds
        self.vm_id = vm_id
        if ds.vm_dir(vm_id).exists():
            raise VmExists(f"VM {vm_id} already exists on datastore {ds.root}")
        ds.root.mkdir(parents=True, exist_ok=True)
        self.staging = ds.root / f".incoming-{vm_id}-{uuid.uuid4().hex[:12]}"
        self.staging.mkdir(mode=0o700)
        self._buf = bytearray()
        self._fd: int | None = None
        self._name = ""
        self._left = 0
        self._pad = 0
        self._pos = 0
        self._ended = False
        self._seen: dict[str, int] = {}

    def feed(self, data: bytes) -> None:
        """Consume the next piece of the stream."""
        self._buf += data
        while self._buf and not self._ended:
            if self._fd is not None:
                self._data()
            elif self._pad:
                step = min(self._pad, len(self._buf))
                del self._buf[:step]
                self._pad -= step
            elif len(self._buf) >= BLOCK:
                self._header(bytes(self._buf[:BLOCK]))
                del self._buf[:BLOCK]
            else:
                return
        if self._ended and any(self._buf):
            raise BundleError(f"the bundle of VM {self.vm_id} has data after its end")

    def _header(self, block: bytes) -> None:
        if block.count(0) == BLOCK:  # end of archive (the first of two zero blocks)
            self._ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except (tarfile.HeaderError, UnicodeDecodeError):
            raise BundleError(f"the bundle of VM {self.vm_id} is not a vmcrypt bundle") from None
        if not info.isreg() or not _MEMBER.match(info.name) or info.name in self._seen:
            raise BundleError(
                f"the bundle of VM {self.vm_id} holds an unexpected entry; refusing it"
            )
        if info.name == CONFIG_NAME and info.size > _MAX_CONFIG:
            raise BundleError(f"the vm.json of VM {self.vm_id} is implausibly large")
        self._name, self._left, self._pos = info.name, info.size, 0
        self._seen[info.name] = info.size
        self._fd = os.open(self.staging / info.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                           0o600)
        if info.size == 0:
            self._close_member()

    def _data(self) -> None:
        assert self._fd is not None
        step = min(self._left, len(self._buf))
        piece = bytes(self._buf[:step])
        del self._buf[:step]
        view = memoryview(piece)
        while view:
            # Whole zero sectors are left as holes; anything else is written as is.
            cut = min(len(view), 4096 - self._pos % 4096)
            part = view[:cut]
            if not (cut == 4096 and part == _ZERO_SECTOR):
                try:
                    os.pwrite(self._fd, part, self._pos)
                except OSError as exc:
                    raise no_space(exc, f"{self._name} of VM {self.vm_id}") from None
            self._pos += cut
            view = view[cut:]
        self._left -= step
        if self._left == 0:
            self._close_member()

    def _close_member(self) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._seen[self._name])
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
        self._pad = _padded(self._seen[self._name]) - self._seen[self._name]

    def commit(self, cache: KeyCache) -> VmRecord:
        """Check the received VM opens with this host's keys, then move it into place."""
        if not self._ended or self._fd is not None:
            raise BundleError(f"the bundle of VM {self.vm_id} was cut short; nothing was kept")
        config = self.staging / CONFIG_NAME
        if not config.exists():
            raise BundleError(f"the bundle of VM {self.vm_id} has no vm.json")
        record = VmRecord.from_json(config.read_bytes(), config)
        if record.instance_uuid != self.vm_id:
            raise BundleError(f"the bundle names VM {record.instance_uuid}, not {self.vm_id}")
        wanted = {CONFIG_NAME}
        for disk in record.disks:
            wanted.add(disk.file_name)
            if disk.encryption is not None:
                wanted.add(disk.file_name + ".luks")
        if wanted != set(self._seen) or any(
            self._seen[d.file_name] != d.size for d in record.disks
        ):
            raise BundleError(
                f"the bundle of VM {self.vm_id} does not hold exactly the files its vm.json "
                "names, at their sizes"
            )
        self._check_keys(cache, record)
        target = self.ds.vm_dir(self.vm_id)
        if target.exists():
            raise VmExists(f"VM {self.vm_id} already exists on datastore {self.ds.root}")
        fsync_dir(config)
        os.rename(self.staging, target)
        fsync_dir(target)
        return record

    def _check_keys(self, cache: KeyCache, record: VmRecord) -> None:
        """Every keySafe opens with a KEK this host holds; every sealed blob authenticates.

        KeyNotOnHost when a KEK is missing, one opaque IntegrityError when anything was
        tampered with. Opening also records which KEKs the VM uses in the cache.
        """
        if record.home_keysafe is not None:
            dek = open_keysafe(record.home_keysafe, kek_of(cache, record.home_keysafe,
                                                           self.vm_id))
            unseal_blobs(dek, self.vm_id, record.blobs)
        for disk in record.disks:
            if disk.encryption is None:
                continue
            path = self.staging / disk.file_name
            keysafe = container.read_keysafe(path)
            if keysafe is None:
                raise BundleError(f"disk {disk.index} of VM {self.vm_id} has no vmcrypt keySafe")
            dek = open_keysafe(keysafe, kek_of(cache, keysafe, self.vm_id))
            container.check_dek(container.read_header(path), dek, path)
        if record.home_keysafe is None and any(d.encryption for d in record.disks):
            raise StateError(f"VM {self.vm_id}: an encrypted disk under a clear VM home")

    def abort(self) -> None:
        """Remove the staging folder (after any failure): nothing of the VM stays."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        shutil.rmtree(self.staging, ignore_errors=True)
