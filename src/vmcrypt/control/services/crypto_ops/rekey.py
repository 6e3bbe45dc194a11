"""Re-key VM home, one disk or every encrypted component: shallow (new KEK) or deep.

Shallow answers at once (DEKs re-wrapped, no data rewritten); a native provider's VM
gets its new KEK from its host, made from the primary key, and the control plane keeps
only the wrapped KEK. Deep is a host job (new DEKs, data re-encrypted, KEKs kept).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from vmcrypt.control.db.models import (
    EncryptionRecord,
    Job,
    ProviderKind,
    VirtualMachine,
)
from vmcrypt.control.exceptions import Conflict
from vmcrypt.control.services.audit import crypto_event
from vmcrypt.control.services.crypto_ops._common import (
    RekeyTarget,
    _disk,
    _drop_unused,
    _new_standard_kek,
    _push_existing,
    _ready,
    _records,
    _sync_records,
)
from vmcrypt.control.services.crypto_ops.jobs import (
    _not_busy,
    _started,
    track_host_job,
)
from vmcrypt.control.services.keys import (
    HostConnector,
)

__all__ = ["deep_rekey", "shallow_rekey"]


def shallow_rekey(session: Session, hosts: HostConnector, vm: VirtualMachine,
                  component: RekeyTarget = "all", *, user_name: str | None = None
                  ) -> str | None:
    """New KEK for ``component`` (default: every encrypted one), DEKs re-wrapped; its key ID.

    Answered at once (no data is rewritten). A standard provider's KEK comes from its
    KMS and is pushed to the cluster; the old KEK then leaves the hosts' caches unless
    another component or VM still uses it. A native provider's VM gets its new KEK from
    its host, made from the primary key the control plane pushed; the control plane
    records only the wrapped KEK (the same bytes as the keySafe) and returns None.
    """
    client = _ready(session, hosts, vm)
    home, disks, label, records = _rekey_plan(session, hosts, vm, component)
    provider = records[_lead(label, disks)].provider
    old = {(r.provider.name, r.key_id) for r in records.values() if r.key_id is not None}
    if provider.kind is ProviderKind.STANDARD:
        key_id: str | None = _new_standard_kek(session, hosts, vm, provider)
    elif provider.kind is ProviderKind.NATIVE:
        key_id = None  # the host makes the KEK from the primary key it holds
    else:
        raise Conflict(f"a shallow re-key of a {provider.kind} provider VM is not supported yet")
    client.shallow_rekey(vm.instance_uuid, provider_id=provider.name, key_id=key_id,
                         home=home, disks=disks)
    _sync_records(session, client, vm)
    _drop_unused(session, hosts, vm, {pair for pair in old if pair[1] != key_id})
    crypto_event(session, operation="rekey-shallow", vm=vm, component=label,
                 user_name=user_name, provider=provider.name, key_id=key_id)
    return key_id

def deep_rekey(session: Session, hosts: HostConnector, vm: VirtualMachine,
               component: RekeyTarget = "all", *, user_name: str | None = None) -> Job:
    """Start a deep re-key of ``component`` (default: every encrypted one) as a job.

    New DEKs, the data re-encrypted; each component keeps its KEK.
    """
    client = _ready(session, hosts, vm)
    home, disks, label, records = _rekey_plan(session, hosts, vm, component)
    for record in records.values():
        if record.key_id is not None:
            _push_existing(session, hosts, vm, record.provider, record.key_id)
    host_job = client.deep_rekey(vm.instance_uuid, home=home, disks=disks)
    job = track_host_job(session, vm, "vm.rekey-deep", label, host_job, user_name)
    lead = records[_lead(label, disks)]
    _started(session, job, vm, provider=lead.provider.name, key_id=lead.key_id)
    return job

def _rekey_plan(session: Session, hosts: HostConnector, vm: VirtualMachine,
                component: RekeyTarget
                ) -> tuple[bool, list[int] | None, str, dict[str, EncryptionRecord]]:
    """(home?, disks or None for all, event label, records of the targets), or 409/404."""
    _not_busy(session, hosts, vm)
    records = _records(session, vm)
    if "home" not in records:
        raise Conflict(f"VM {vm.name!r} is not encrypted: there is nothing to re-key")
    if component == "all":
        return True, None, "all", records
    if component == "home":
        return True, [], "home", {"home": records["home"]}
    name = f"disk-{_disk(vm, component)}"
    if name not in records:
        raise Conflict(f"VM {vm.name!r}: disk {component} is not encrypted, so it cannot be "
                       "re-keyed; encrypt it instead")
    return False, [int(component)], name, {name: records[name]}

def _lead(label: str, disks: list[int] | None) -> str:
    """The record whose provider a re-key of ``label`` uses: VM home's, or the disk's."""
    return f"disk-{disks[0]}" if label.startswith("disk-") and disks else "home"
