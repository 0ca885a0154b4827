"""Errors of the place database: always naming the map file and the problem."""

from __future__ import annotations

from ..data.errors import DataError


class MapError(DataError):
    """A map folder is missing, corrupt or inconsistent; the message names the file and the problem."""


class MapCompatibilityError(MapError):
    """A map's embedding space is missing or was built with another model than the one running."""
