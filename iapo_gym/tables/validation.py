"""Validation of outcome tables and their manifests: one clear error per defect."""

from __future__ import annotations


class TableError(ValueError):
    """A table, manifest or array file is invalid; the message names the field and the fix."""


def validate_table(table) -> None:  # placeholder until the full checks land
    """Validate an in-memory table (raises :class:`TableError`)."""
