"""Alembic migrations of the control plane database (run by :func:`..engine.open_database`)."""
