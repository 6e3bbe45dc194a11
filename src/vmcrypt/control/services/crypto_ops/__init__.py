"""Encrypt, decrypt, re-key, add disks and vTPMs: the control plane's half of the seeds' flows.

The control plane checks the order rules against its own records first (encrypt VM
home before any disk, decrypt every disk before VM home, no VM home decrypt while a
vTPM needs its DEK) so a refused operation is a 409 at once and nothing changes. It
then makes sure every host of the cluster holds the KEK (by key ID from the provider —
never stored here) and asks the VM's host to do the work. Data-rewriting work runs as
a host job; the control plane records a job of its own that names it (``Job.host_id``,
``Job.host_job_id``, revision 0004), and each poll copies the host's progress into the
jobs table. When a host job ends, the encryption records are set from what the host
reports (its keySafes are the truth), so a failed or cancelled job leaves the records
matching the data.

Every operation appends its ``crypto.*`` audit event (:func:`crypto_event
<vmcrypt.control.services.audit.crypto_event>`, key IDs only) in the request's
transaction: quick ones once done, jobs once when accepted (``result="started"``) and
once when :func:`poll` sees them end (their final state).

Modules: ``encryption`` (encrypt, decrypt), ``rekey`` (shallow and deep, per
component), ``components`` (add a disk, add or remove a vTPM), ``jobs`` (following
host jobs, busy VMs) and ``_common`` (records, KEKs, the host's view).
"""

from __future__ import annotations

from vmcrypt.control.services.crypto_ops._common import (
    MAX_DISK_SIZE,
    Component,
    RekeyTarget,
)
from vmcrypt.control.services.crypto_ops.components import add_disk, add_vtpm, remove_vtpm
from vmcrypt.control.services.crypto_ops.encryption import decrypt, encrypt
from vmcrypt.control.services.crypto_ops.jobs import (
    JobRef,
    cancel,
    job_ref,
    poll,
    track_host_job,
)
from vmcrypt.control.services.crypto_ops.rekey import deep_rekey, shallow_rekey

__all__ = ["MAX_DISK_SIZE", "Component", "JobRef", "RekeyTarget", "add_disk", "add_vtpm",
           "cancel", "decrypt", "deep_rekey", "encrypt", "job_ref", "poll", "remove_vtpm",
           "shallow_rekey", "track_host_job"]
