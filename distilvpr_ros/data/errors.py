"""Errors raised by the data layer: one type, always naming the offending file."""

from __future__ import annotations

from pathlib import Path


class DataError(RuntimeError):
    """Bad or missing input data. The message names the file and says what is wrong."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")
