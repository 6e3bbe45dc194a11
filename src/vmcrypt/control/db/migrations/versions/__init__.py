"""Revisions, oldest first; each written by hand and reviewed, never generated at start."""
