"""The control plane: inventory, key providers, policies, privileges and events.

This package plays the vCenter Server role. Its state lives in one SQL database
(:mod:`vmcrypt.control.db`) that holds key IDs and sealed or wrapped keys only, never
a KEK or DEK in the clear; nothing that matters lives in process memory, so several
replicas can share one PostgreSQL database.
"""
