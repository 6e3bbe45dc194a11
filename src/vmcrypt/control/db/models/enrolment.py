"""One-time enrolment tokens: how a host earns its certificate from the control plane CA."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from vmcrypt.control.db.models.base import Base, now

__all__ = ["EnrolmentToken"]


class EnrolmentToken(Base):
    """A single-use, expiring enrolment token; only its SHA-256 is stored.

    Bound to a host record (``host_id``: a host already registered in a cluster) or
    to a name for a new standalone host (``host_name``). ``used_at`` is set in the
    transaction that signs the certificate, which is what makes the token single-use.
    """

    __tablename__ = "enrolment_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Hex SHA-256 of the token: 256 random bits need no slow hash (as for API tokens).
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    host_id: Mapped[int | None] = mapped_column(
        ForeignKey("hosts.id", ondelete="CASCADE"), index=True
    )
    host_name: Mapped[str | None] = mapped_column(String(255))
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=now)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    #: SHA-256 of the DER certificate issued with this token, hex.
    certificate_fingerprint: Mapped[str | None] = mapped_column(String(64))
