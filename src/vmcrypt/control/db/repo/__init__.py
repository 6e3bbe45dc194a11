"""Small repository functions the API calls: one session in, rows out.

Every function takes the caller's :class:`~sqlalchemy.orm.Session` first and keyword
arguments after it. They flush but never commit: the caller (one API request) owns the
transaction. Missing rows raise :class:`~vmcrypt.control.exceptions.NotFound`, clashes
:class:`~vmcrypt.control.exceptions.Conflict`, invalid arguments
:class:`~vmcrypt.exceptions.UsageError`.
"""

from __future__ import annotations

from vmcrypt.control.db.repo.access import (
    IssuedToken,
    Principal,
    authenticate_token,
    create_role,
    create_user,
    has_privilege,
    issue_token,
    privileges_of,
    require_privilege,
    revoke_token,
    sync_builtin_roles,
)
from vmcrypt.control.db.repo.events import append_event, list_events
from vmcrypt.control.db.repo.inventory import (
    add_disk,
    create_cluster,
    create_datastore,
    create_host,
    create_vm,
    enroll_host,
    list_vms,
    set_connection_state,
    set_lock_state,
    set_registration,
)
from vmcrypt.control.db.repo.jobs import (
    create_job,
    finish_job,
    list_jobs,
    report_progress,
    request_cancel,
)
from vmcrypt.control.db.repo.keys import (
    add_kms_server,
    clear_encryption,
    create_key_provider,
    create_storage_policy,
    default_provider,
    encryption_records,
    key_ids_for_host,
    record_encryption,
    remove_kms_server,
    set_default_provider,
)
from vmcrypt.control.db.repo.passwords import (
    generate_password,
    hash_password,
    login,
    set_password,
    verify_password,
)

__all__ = [
    "IssuedToken",
    "Principal",
    "add_disk",
    "add_kms_server",
    "append_event",
    "authenticate_token",
    "clear_encryption",
    "create_cluster",
    "create_datastore",
    "create_host",
    "create_job",
    "create_key_provider",
    "create_role",
    "create_storage_policy",
    "create_user",
    "create_vm",
    "default_provider",
    "encryption_records",
    "enroll_host",
    "finish_job",
    "generate_password",
    "has_privilege",
    "hash_password",
    "issue_token",
    "key_ids_for_host",
    "list_events",
    "list_jobs",
    "list_vms",
    "login",
    "privileges_of",
    "record_encryption",
    "remove_kms_server",
    "report_progress",
    "request_cancel",
    "require_privilege",
    "revoke_token",
    "set_connection_state",
    "set_default_provider",
    "set_lock_state",
    "set_password",
    "set_registration",
    "sync_builtin_roles",
    "verify_password",
]
